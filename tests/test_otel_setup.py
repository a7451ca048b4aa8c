"""Turning tidebase_otel on: `opentelemetry-instrument` (the entry point), `TidebaseInstrumentor`,
`configure()` with OTLP over HTTP or gRPC, and never replacing a provider the user set.

Anything that sets global providers runs in a subprocess (OpenTelemetry's globals are set once
per process), exporting to a real local OTLP/HTTP receiver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _otel import OtlpReceiver, Telemetry
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)

import tidebase_otel
from tidebase.hooks import global_observers
from tidebase_otel import _semconv as sc
from tidebase_otel.sdk import metric_exporter, span_exporter

BIN = Path(sys.executable).parent

APP = """
import asyncio, sys, uuid
import tidebase_otel
from opentelemetry import metrics, trace
from tidebase.aio import AsyncTidebase

MODE = sys.argv[2]
if MODE == "configure":
    print("configured", tidebase_otel.configure(service_name="demo-app"))
elif MODE == "user-provider":
    from opentelemetry.sdk.trace import TracerProvider
    mine = TracerProvider()
    trace.set_tracer_provider(mine)
    done = tidebase_otel.configure(service_name="demo-app")
    assert done.tracer_provider is mine and not done.traces_configured, done
    assert done.metrics_configured
    print("kept the user's provider")
    sys.exit(0)
print("instrumented", tidebase_otel.is_instrumented())

async def main():
    tide = AsyncTidebase(sys.argv[1])
    async def pipeline(run, _):
        await run.usage_record(provider="openai", model="m", input_tokens=3, output_tokens=4)
        return await run.step("s", lambda: 1)
    await tide.run("app-wf", pipeline, run_id=f"run_{uuid.uuid4().hex}")
    await tide.close()

asyncio.run(main())
trace.get_tracer_provider().shutdown()
metrics.get_meter_provider().shutdown()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OPENAI_AGENTS_DISABLE_TRACING="1",
        **extra,
    )
    return env


def _run(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    done = subprocess.run(
        args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_opentelemetry_instrument_turns_it_on(pg_url: str, receiver: OtlpReceiver, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = _run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(app), pg_url, "configure"],
        _env(receiver),
        tmp_path,
    )
    assert "instrumented True" in out
    spans = {s.name: s for s in receiver.spans()}
    assert {"run app-wf", "step s"} <= set(spans)
    assert spans["step s"].parent_span_id == spans["run app-wf"].span_id
    assert spans["run app-wf"].service_name == "demo-app"
    assert receiver.metric_total(sc.METRIC_TIDEBASE_TOKENS) == 7
    assert receiver.metric_total(sc.METRIC_TIDEBASE_STEPS) == 1
    assert all(p.endswith(("/v1/traces", "/v1/metrics")) for p in receiver.paths)


def test_opentelemetry_instrument_can_disable_it(pg_url: str, receiver: OtlpReceiver, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = _env(receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="tidebase")
    out = _run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(app), pg_url, "configure"],
        env,
        tmp_path,
    )
    assert "instrumented False" in out
    assert not [s for s in receiver.spans() if s.name.startswith(("run ", "step "))]


def test_configure_never_replaces_a_provider_the_user_set(pg_url: str, receiver, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = _run([sys.executable, str(app), pg_url, "user-provider"], _env(receiver), tmp_path)
    assert "kept the user's provider" in out


def test_configure_respects_sdk_disabled_and_exporter_none(receiver, tmp_path):
    script = textwrap.dedent(
        """
        import tidebase_otel
        from opentelemetry import trace
        done = tidebase_otel.configure()
        print(done.traces_configured, done.metrics_configured)
        """
    )
    out = _run([sys.executable, "-c", script], _env(receiver, OTEL_SDK_DISABLED="true"), tmp_path)
    assert out.split() == ["False", "False"]
    env = _env(receiver, OTEL_TRACES_EXPORTER="none")
    out = _run([sys.executable, "-c", script], env, tmp_path)
    assert out.split() == ["False", "True"]


def test_exporter_protocol_follows_the_environment(monkeypatch: pytest.MonkeyPatch):
    for name in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)
    exporter = span_exporter("http://collector:4318")  # the specification's default: HTTP
    assert isinstance(exporter, HttpSpanExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    assert isinstance(metric_exporter(), HttpMetricExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert isinstance(span_exporter("http://collector:4317"), GrpcSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")  # per signal wins
    assert isinstance(span_exporter(), HttpSpanExporter)


async def test_instrumentor_shares_state_with_instrument(tide):
    from tidebase_otel import TidebaseInstrumentor

    telemetry = Telemetry()
    instrumentor = TidebaseInstrumentor()
    assert instrumentor is TidebaseInstrumentor()  # a singleton, as BaseInstrumentor makes it
    assert instrumentor.instrumentation_dependencies() == ("tidebase >= 0.1",)
    try:
        instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
        assert tidebase_otel.is_instrumented() and instrumentor.is_instrumented_by_opentelemetry
        tidebase_otel.instrument()  # already on: a warning, nothing changes
        assert len(global_observers()) == 2  # the run observer and the queue observer

        async def pipeline(run, _):
            return await run.step("s", lambda: 1)

        await tide.run("wf", pipeline)
        assert [s.name for s in telemetry.spans()] == ["step s", "run wf"]
        tidebase_otel.uninstrument()
        assert not instrumentor.is_instrumented_by_opentelemetry
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
        assert tidebase_otel.is_instrumented()
    finally:
        instrumentor.uninstrument()
        telemetry.shutdown()
    assert global_observers() == ()
