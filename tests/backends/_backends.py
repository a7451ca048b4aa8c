"""Real observability backends for the `backends` test suite: find or install, start, stop.

* Prometheus and promtool from Debian's ``prometheus`` package. Found on PATH (or
  ``TIDEBASE_PROMETHEUS_BIN`` / ``TIDEBASE_PROMTOOL_BIN``); when missing and this process runs
  as root with apt-get, ``apt-get install -y prometheus`` is tried.
* Arize Phoenix, an OTLP trace store with a read API, in its own virtualenv
  (``TIDEBASE_PHOENIX_VENV``, default ``~/.cache/tidebase/phoenix-venv``); when missing,
  ``pip install arize-phoenix`` into it is tried (about 85 s and 850 MB).

A backend that cannot be installed skips its tests with the reason, unless
``TIDEBASE_BACKENDS_REQUIRED=1`` (CI), which fails them instead. ``TIDEBASE_BACKENDS_INSTALL=0``
turns the installing off. Every backend runs in its own process group on 127.0.0.1 and free
ports, and is stopped (SIGTERM, then SIGKILL for the whole group) when its test ends, and at
interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

_TRUE = ("1", "true", "yes", "on")
_running: set[BackendProcess] = set()


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None or raw.strip() == "" else raw.strip().lower() in _TRUE


def unavailable(reason: str) -> None:
    """Skips the test, or fails it when the backends are required (CI)."""
    if _flag("TIDEBASE_BACKENDS_REQUIRED", False):
        pytest.fail(f"backend required but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------ processes
class BackendProcess:
    """A server process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str]):
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _running.add(self)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        try:
            return _tail(self.log.read_text(errors="replace"), 30)
        except OSError:
            return ""

    def wait_ready(self, url: str, timeout: float) -> None:
        """Polls `url` until it answers 200; raises with the log if the process dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not ready at {url} after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout`; always reaps the process."""
        _running.discard(self)
        try:
            if self.alive():
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(10)
            # Children that outlived the leader (none expected) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        finally:
            self._log_file.close()


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_running):
        with contextlib.suppress(Exception):
            process.stop(timeout=5)


# ------------------------------------------------------------------------------ Prometheus
@dataclass(frozen=True)
class PrometheusTools:
    prometheus: str
    promtool: str


def _apt_install(package: str) -> str | None:
    """Installs a Debian package; returns None on success, else why it failed."""
    if not _flag("TIDEBASE_BACKENDS_INSTALL", True):
        return "installing is turned off (TIDEBASE_BACKENDS_INSTALL=0)"
    if not shutil.which("apt-get"):
        return "apt-get is not available"
    if os.geteuid() != 0:
        return f"not root: run `sudo apt-get install -y {package}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:  # perhaps the package lists were never fetched
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    return None if done.returncode == 0 else _tail(done.stdout + done.stderr)


def prometheus_tools() -> PrometheusTools:
    """Debian's prometheus and promtool, installed if needed (else skip/fail)."""

    def find() -> tuple[str | None, str | None]:
        return (
            os.environ.get("TIDEBASE_PROMETHEUS_BIN") or shutil.which("prometheus"),
            os.environ.get("TIDEBASE_PROMTOOL_BIN") or shutil.which("promtool"),
        )

    prometheus, promtool = find()
    if not (prometheus and promtool):
        why = _apt_install("prometheus")
        prometheus, promtool = find()
        if not (prometheus and promtool):
            unavailable(f"Prometheus is not installed and could not be installed: {why}")
    assert prometheus and promtool
    return PrometheusTools(prometheus, promtool)


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping `targets` every second."""

    def __init__(
        self,
        tools: PrometheusTools,
        workdir: Path,
        targets: Iterable[str],
        rule_files: Iterable[Path] = (),
        job: str = "tidebase-workers",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = BackendProcess(
            "prometheus",
            [
                tools.prometheus,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            workdir / "prometheus.log",
            dict(os.environ),
        )
        try:
            self.process.wait_ready(f"{self.url}/-/ready", timeout=60)
        except BaseException:
            self.process.stop()
            raise

    def stop(self) -> None:
        self.process.stop()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/{path}; returns `data`, raises AssertionError on an API error."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body.get('error') or body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when the result is empty)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def values_by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


# ------------------------------------------------------------------------------ Phoenix
def phoenix_venv() -> Path:
    default = Path.home() / ".cache" / "tidebase" / "phoenix-venv"
    return Path(os.environ.get("TIDEBASE_PHOENIX_VENV") or default)


def phoenix_bin() -> Path:
    """The `phoenix` executable of the Phoenix virtualenv, installed if needed."""
    venv = phoenix_venv()
    executable = venv / "bin" / "phoenix"
    if executable.exists():
        return executable
    if not _flag("TIDEBASE_BACKENDS_INSTALL", True):
        unavailable(f"Arize Phoenix is not installed in {venv} (TIDEBASE_BACKENDS_INSTALL=0)")
    log: list[str] = []
    for step in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "arize-phoenix"],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            break
    if not executable.exists():
        unavailable(
            f"Arize Phoenix is not installed in {venv} and `pip install arize-phoenix` "
            f"failed:\n{_tail(''.join(log))}"
        )
    return executable


class Phoenix:
    """Arize Phoenix on 127.0.0.1: OTLP/HTTP at `url` + /v1/traces, REST API under /v1."""

    def __init__(self, executable: Path, workdir: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port()  # Phoenix binds its OTLP/gRPC port on all interfaces
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))},
            "PHOENIX_WORKING_DIR": str(workdir / "data"),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        self.process = BackendProcess(
            "phoenix", [str(executable), "serve"], workdir / "phoenix.log", env
        )
        try:
            self.process.wait_ready(f"{self.url}/healthz", timeout=180)
        except BaseException:
            self.process.stop()
            raise

    def stop(self) -> None:
        self.process.stop()

    def spans(self, project: str, **filters: str) -> list[dict[str, Any]]:
        """Every span of `project` matching `filters` (``trace_id=``, ``attribute=``)."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **filters}
            if cursor:
                params["cursor"] = cursor
            response = httpx.get(
                f"{self.url}/v1/projects/{project}/spans", params=params, timeout=30
            )
            if response.status_code == 404:  # the project does not exist (yet)
                return out
            response.raise_for_status()
            body = response.json()
            out.extend(body["data"])
            cursor = body.get("next_cursor")
            if not cursor:
                return out
