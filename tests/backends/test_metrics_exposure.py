"""Metrics for Prometheus without a collector (`tidebase_otel.prometheus`): a worker's own
endpoint, ``OTEL_METRICS_EXPORTER=prometheus`` through ``configure()``, and the ASGI app that
``tidebase serve`` mounts at /metrics.

Anything that sets a global MeterProvider runs in a subprocess (OpenTelemetry's globals are set
once per process). Real Prometheus scrapes all three in test_prometheus_scrape.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest
from _otel import OtlpReceiver
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from tidebase_otel.prometheus import MetricsApp, metrics_app

from ._backends import free_port

WORKFLOW = """
import asyncio, sys, urllib.request
from tidebase.aio import AsyncTidebase

async def run_once(url):
    tide = AsyncTidebase(url)
    async def wf(run, _):
        await run.usage_record(
            provider="openai", model="m", input_tokens=3, output_tokens=4, cost_usd=0.5
        )
        return await run.step("s", lambda: 1)
    try:
        await tide.run("exposure-check", wf)
    finally:
        await tide.close()

def scrape(url):
    return urllib.request.urlopen(url, timeout=10).read().decode()
"""


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", WORKFLOW + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _samples(exposition: str) -> dict[str, dict[frozenset, float]]:
    """name -> {labels (without the otel_scope_* ones): value}."""
    out: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope_")
            )
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def _exposition(output: str) -> str:
    return output.split("=== exposition\n", 1)[1].split("=== end\n", 1)[0]


def _check_the_workflow_metrics(exposition: str) -> None:
    samples = _samples(exposition)
    workflow = ("tidebase_workflow", "exposure-check")
    tokens = samples["tidebase_usage_tokens_total"]
    by_type = {dict(labels)["gen_ai_token_type"]: v for labels, v in tokens.items()}
    assert by_type == {"input": 3, "output": 4}
    assert all(workflow in labels for labels in tokens)
    assert list(samples["tidebase_usage_cost_USD_total"].values()) == [0.5]
    steps = {
        dict(k)["tidebase_step_outcome"]: v for k, v in samples["tidebase_steps_total"].items()
    }
    assert steps == {"completed": 1}
    runs = {dict(k)["tidebase_run_status"]: v for k, v in samples["tidebase_runs_total"].items()}
    assert runs == {"completed": 1}
    assert "tidebase_step_duration_seconds_bucket" in samples
    assert "gen_ai_client_token_usage_bucket" in samples
    (target,) = samples["target_info"]
    assert ("service_name", "exposure-worker") in target
    assert "process_cpu_seconds_total" in samples  # the process collectors come along


def test_start_metrics_server_serves_the_workers_metrics(pg_url: str):
    output = _python(
        """
        import tidebase_otel
        from opentelemetry import metrics
        from tidebase_otel.prometheus import meter_provider, start_metrics_server

        server = start_metrics_server(0, service_name="exposure-worker")
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert start_metrics_server(server.port) is server       # one server per address
        assert metrics.get_meter_provider() is meter_provider() is server.meter_provider
        tidebase_otel.instrument()
        asyncio.run(run_once(sys.argv[1]))
        print("=== exposition\\n" + scrape(server.url) + "=== end")
        server.close()
        try:
            scrape(server.url)
        except OSError:
            print("closed")
        """,
        pg_url,
    )
    _check_the_workflow_metrics(_exposition(output))
    assert "closed" in output


def test_configure_exports_over_otlp_and_serves_prometheus_from_the_environment(pg_url: str):
    receiver = OtlpReceiver()
    port = free_port()
    try:
        output = _python(
            """
            import tidebase_otel
            done = tidebase_otel.configure(service_name="exposure-worker")
            assert done.metrics_configured and not done.traces_configured
            tidebase_otel.instrument()
            asyncio.run(run_once(sys.argv[1]))
            print("=== exposition\\n" + scrape(sys.argv[2]) + "=== end")
            done.meter_provider.force_flush()
            """,
            pg_url,
            f"http://127.0.0.1:{port}/metrics",
            env={
                "OTEL_METRICS_EXPORTER": "otlp,prometheus",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            },
        )
        _check_the_workflow_metrics(_exposition(output))
        # the same points went over OTLP too
        assert receiver.metric_total("tidebase.usage.tokens", **{"gen_ai.token.type": "input"}) == 3
        assert receiver.metric_total("tidebase.usage.cost") == 0.5
    finally:
        receiver.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("bad", ["taken", "not-a-port"])
def test_configure_logs_a_port_it_cannot_serve_and_goes_on(pg_url: str, taken_port: int, bad):
    port = str(taken_port) if bad == "taken" else bad
    output = _python(
        """
        import tidebase_otel
        done = tidebase_otel.configure()
        assert done.metrics_configured
        tidebase_otel.instrument()
        asyncio.run(run_once(sys.argv[1]))
        print("the run went on")
        """,
        pg_url,
        env={
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_PORT": port,
            "OTEL_TRACES_EXPORTER": "none",
        },
    )
    assert "cannot serve Prometheus metrics" in output
    assert "the run went on" in output


def test_a_meter_provider_the_user_set_is_never_replaced(pg_url: str):
    output = _python(
        """
        import tidebase_otel
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from tidebase_otel.prometheus import meter_provider, start_metrics_server

        mine = MeterProvider()
        metrics.set_meter_provider(mine)
        server = start_metrics_server(0, service_name="exposure-worker")
        assert metrics.get_meter_provider() is mine
        assert server.meter_provider is meter_provider() and server.meter_provider is not mine
        tidebase_otel.instrument(meter_provider=server.meter_provider)
        asyncio.run(run_once(sys.argv[1]))
        print("=== exposition\\n" + scrape(server.url) + "=== end")
        """,
        pg_url,
    )
    _check_the_workflow_metrics(_exposition(output))


def test_an_exporter_without_the_registry_argument_serves_the_global_registry(pg_url: str):
    """opentelemetry-exporter-prometheus releases before `registry=` register globally."""
    output = _python(
        """
        import opentelemetry.exporter.prometheus as exporter
        import prometheus_client
        import tidebase_otel
        from tidebase_otel import prometheus

        class OldReader(exporter.PrometheusMetricReader):
            def __init__(self, disable_target_info=False, prefix=""):
                super().__init__(disable_target_info, prefix)

        exporter.PrometheusMetricReader = OldReader
        assert prometheus.registry() is prometheus_client.REGISTRY
        server = prometheus.start_metrics_server(0, service_name="exposure-worker")
        tidebase_otel.instrument()
        asyncio.run(run_once(sys.argv[1]))
        print("=== exposition\\n" + scrape(server.url) + "=== end")
        """,
        pg_url,
    )
    _check_the_workflow_metrics(_exposition(output))


def test_metrics_app_without_the_otel_extra_says_what_to_install():
    output = _python(
        """
        import builtins
        real_import = builtins.__import__

        def without_exporter(name, *args, **kwargs):
            if name.startswith(("prometheus_client", "opentelemetry.exporter.prometheus")):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        builtins.__import__ = without_exporter
        from tidebase_otel.prometheus import metrics_app
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(metrics_app()({"type": "http", "method": "GET", "headers": []}, None, send))
        print(sent[0]["status"], sent[1]["body"].decode())
        """
    )
    assert "501 Prometheus metrics need opentelemetry-exporter-prometheus" in output
    assert "tidebase[otel]" in output


# ------------------------------------------------------------------------------ the ASGI app
@pytest.fixture
def private_metrics() -> Iterator[tuple[CollectorRegistry, MeterProvider]]:
    """A registry fed by its own reader and provider (never the process's globals)."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    counter = provider.get_meter("tests").create_counter("tidebase.usage.cost", unit="USD")
    counter.add(1.25, {"tidebase.workflow": "w"})
    yield registry, provider
    provider.shutdown()


async def test_metrics_app_mounted_on_a_starlette_route(private_metrics):
    registry, _ = private_metrics
    app = Starlette(routes=[Route("/metrics", metrics_app(registry), methods=["GET"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidebase") as client:
        plain = await client.get("/metrics")
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "tidebase_usage_cost_USD_total{" in plain.text
        assert _samples(plain.text)["tidebase_usage_cost_USD_total"]

        # what Prometheus asks for: OpenMetrics, gzipped
        scraped = await client.get(
            "/metrics",
            headers={
                "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                "Accept-Encoding": "gzip",
            },
        )
        assert scraped.headers["content-type"].startswith("application/openmetrics-text")
        assert scraped.headers["content-encoding"] == "gzip"
        assert int(scraped.headers["content-length"]) < len(scraped.text)
        assert scraped.text.rstrip().endswith("# EOF")
        assert "# UNIT tidebase_usage_cost_USD USD" in scraped.text

        head = await client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        assert (await client.post("/metrics")).status_code == 405


async def test_metrics_app_refuses_other_methods_and_scope_types(private_metrics):
    registry, _ = private_metrics
    app = MetricsApp(registry)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "DELETE", "headers": []}, None, send)
    assert sent[0]["status"] == 405
    assert (b"allow", b"GET, HEAD") in sent[0]["headers"]
    with pytest.raises(RuntimeError, match="HTTP only"):
        await app({"type": "websocket", "headers": []}, None, send)


async def test_the_mount_lines_on_the_tidebase_server_app(pg_url: str, private_metrics):
    """The route as `tidebase serve` mounts it: behind the server's API-key middleware."""
    from tidebase.server import ServerConfig, create_app

    registry, _ = private_metrics
    app = create_app(ServerConfig(database_url=pg_url, api_key="secret"))
    assert any(getattr(r, "path", None) == "/metrics" for r in app.router.routes)  # mounted
    # serve this test's private registry instead of the process-wide one
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/metrics"]
    app.router.routes.append(Route("/metrics", metrics_app(registry), methods=["GET"]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tidebase") as client:
        assert (await client.get("/metrics")).status_code == 401
        scraped = await client.get("/metrics", headers={"Authorization": "Bearer secret"})
        assert scraped.status_code == 200
        assert "tidebase_usage_cost_USD_total" in scraped.text
