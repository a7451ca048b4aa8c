"""`tidebase serve` as a process: migrations at start-up, refusal while migrations are pending,
graceful shutdown with open event streams, configuration errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest

from tidebase import migrate
from tidebase.server import MigrationsPending
from tidebase.server.database import open_store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(database_url: str | None, port: int, **env: str) -> subprocess.Popen[str]:
    """`tidebase serve` on `port`; with no `database_url`, on the embedded Postgres."""
    environment = dict(os.environ, **env)
    for name in ("TIDEBASE_API_KEY", "TIDEBASE_URL", "TIDEBASE_DATABASE_URL", "DATABASE_URL"):
        environment.pop(name, None)
    if database_url is not None:
        environment["TIDEBASE_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [sys.executable, "-m", "tidebase.server", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _wait_healthy(url: str, proc: subprocess.Popen[str]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise AssertionError("server did not come up")


async def test_open_store_refuses_pending_migrations(fresh_db_url: str) -> None:
    with pytest.raises(MigrationsPending) as caught:
        await open_store(fresh_db_url, auto_migrate=False)
    names = [f"{m.version}_{m.name}.sql" for m in migrate.load_migrations()]
    assert caught.value.names == names
    assert "003_http_api.sql" in str(caught.value)
    store = await open_store(fresh_db_url, auto_migrate=True)
    await store.close()
    store = await open_store(fresh_db_url, auto_migrate=False)  # now current
    await store.close()


async def test_process_refuses_to_start_with_pending_migrations(fresh_db_url: str) -> None:
    proc = _spawn(fresh_db_url, _free_port(), TIDEBASE_AUTO_MIGRATE="0")
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 2
    assert "pending migrations" in stderr and "001_durable_runs.sql" in stderr
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('runs')") is None  # nothing applied
    finally:
        await conn.close()


async def test_bad_configuration_is_reported(fresh_db_url: str) -> None:
    proc = _spawn(fresh_db_url, _free_port(), TIDEBASE_LEASE_MS="soon")
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 2 and "TIDEBASE_LEASE_MS" in stderr


async def test_migrates_serves_and_shuts_down_gracefully(fresh_db_url: str) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(fresh_db_url, port)
    try:
        await _wait_healthy(url, proc)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            run = (await client.post("/runs/wf", json={})).json()["run"]
            async with client.stream("GET", f"/runs/{run['id']}/events") as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("id: 1")
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                with pytest.raises((StopAsyncIteration, httpx.HTTPError)):  # the stream ends
                    async with asyncio.timeout(10):
                        while True:
                            await anext(lines)
            code = await asyncio.to_thread(proc.wait, 15)
            # uvicorn re-raises the signal once shut down; we make that an ordinary exit (so
            # exit hooks run), with the status a shell gives a process ended by SIGTERM.
            assert code == 128 + signal.SIGTERM and time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, stderr = proc.communicate()
    assert f"serving http://127.0.0.1:{port}" in stderr


async def test_sigterm_stops_the_embedded_postgres_it_started(tmp_path) -> None:
    """With no database configured, `tidebase serve` starts an embedded Postgres; a SIGTERM
    (what a service manager or `docker stop` sends) must stop it too: it used to be left
    running, because the signal killed the process before its exit hooks ran."""
    data_dir = tmp_path / "pgdata"
    port = _free_port()
    proc = _spawn(None, port, TIDEBASE_DATA_DIR=str(data_dir))
    try:
        await _wait_healthy(f"http://127.0.0.1:{port}", proc)
        postmaster = data_dir / "postmaster.pid"
        assert postmaster.exists()
        pg_pid = int(postmaster.read_text().splitlines()[0])
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not postmaster.exists(), proc.communicate()[1]
    assert _gone_or_zombie(pg_pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_while_the_embedded_postgres_starts_still_stops_it(tmp_path, sig) -> None:
    """Interrupted while Postgres was starting, `tidebase serve` left it running: the signal
    now takes effect once start-up is done, when Postgres can be stopped."""
    data_dir = tmp_path / "pgdata"
    proc = _spawn(None, _free_port(), TIDEBASE_DATA_DIR=str(data_dir))
    postmaster = data_dir / "postmaster.pid"
    try:
        async with asyncio.timeout(60):
            while not postmaster.exists():  # Postgres is starting: signal now
                assert proc.poll() is None, proc.communicate()[1]
                await asyncio.sleep(0.01)
        proc.send_signal(sig)
        assert await asyncio.to_thread(proc.wait, 60) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.communicate()[1]
    assert not postmaster.exists(), stderr
    assert "Traceback" not in stderr, stderr


def _gone_or_zombie(pid: int) -> bool:
    """A stopped postmaster may linger as a zombie until whatever adopted it reaps it."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"
