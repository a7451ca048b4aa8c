"""Telemetry never hurts a run: a dead collector, a full export queue and span processors that
raise leave runs finishing at their normal speed, with no telemetry error reaching user code."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import agents
import pytest
from _otel import instrumented
from agents import Agent, Runner, function_tool
from conftest import new_run_id
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import tidebase_otel
from tidebase import hooks
from tidebase.demo.offline_model import OfflineModel, ToolCall
from tidebase_otel import _semconv as sc

STEPS = 30


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def workload(tide) -> float:
    """A run of STEPS pure steps and one agent step; returns its duration in seconds."""

    async def pipeline(run, _):
        total = 0
        for i in range(STEPS):
            total += await run.step(f"s{i}", lambda i=i: i)
        agent = Agent(name="calc", model=OfflineModel([ToolCall("add", {"a": 1, "b": 2}), "3"]),
                      tools=[add])  # fmt: skip
        result = await run.step("agent", lambda: Runner.run(agent, "1+2"))
        await run.usage_record(provider="openai", model="m", input_tokens=1, output_tokens=1)
        return total, result.final_output

    start = time.perf_counter()
    assert await tide.run("wf", pipeline, run_id=new_run_id()) == (sum(range(STEPS)), "3")
    return time.perf_counter() - start


@pytest.fixture
def agents_clean() -> Iterator[None]:
    agents.set_trace_processors([])
    yield
    tidebase_otel.uninstrument()
    agents.set_trace_processors([])


async def baseline(tide) -> float:
    await workload(tide)  # warm up (connections, prepared statements)
    return min([await workload(tide) for _ in range(2)])


def assert_normal_speed(elapsed: float, base: float) -> None:
    # Generous on purpose (shared CI machines); what must never happen is waiting on the
    # exporter: a retry loop or a blocked queue costs seconds, not milliseconds.
    assert elapsed < base * 3 + 0.5, (elapsed, base)


async def test_collector_down(tide, agents_clean):
    base = await baseline(tide)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=2),
            schedule_delay_millis=10,
        )
    )
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=2),
                export_interval_millis=20,
            )
        ]
    )
    tidebase_otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        elapsed = min([await workload(tide) for _ in range(2)])
    finally:
        tidebase_otel.uninstrument()
        threading.Thread(target=tracer_provider.shutdown, daemon=True).start()
        threading.Thread(target=meter_provider.shutdown, daemon=True).start()
    assert_normal_speed(elapsed, base)


class StuckExporter(SpanExporter):
    """An exporter that takes a long time per batch: the queue fills up and spans are dropped."""

    def __init__(self) -> None:
        self.exported = 0
        self.release = threading.Event()

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.release.wait(5)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


async def test_export_queue_full(tide, agents_clean):
    base = await baseline(tide)
    exporter = StuckExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=4, max_export_batch_size=1)
    )
    tidebase_otel.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider())
    try:
        elapsed = min([await workload(tide) for _ in range(2)])
    finally:
        tidebase_otel.uninstrument()
        exporter.release.set()
        tracer_provider.shutdown()
    assert_normal_speed(elapsed, base)
    assert exporter.exported < 2 * (STEPS + 2)  # most spans were dropped, none waited


class Exploding(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("span processor on_start exploded")

    def on_end(self, span: Any) -> None:
        raise RuntimeError("span processor on_end exploded")


class ExplodingAgentsProcessor(agents.TracingProcessor):
    def on_trace_start(self, trace: Any) -> None:
        raise RuntimeError("boom")

    def on_trace_end(self, trace: Any) -> None:
        raise RuntimeError("boom")

    def on_span_start(self, span: Any) -> None:
        raise RuntimeError("boom")

    def on_span_end(self, span: Any) -> None:
        raise RuntimeError("boom")

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


async def test_processors_raising_never_reach_user_code(tide, agents_clean):
    base = await baseline(tide)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(Exploding())
    agents.set_trace_processors([ExplodingAgentsProcessor()])
    tidebase_otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(),
        record_agents_usage=True,
        prices={"m": (1, 1)},
    )
    try:
        elapsed = min([await workload(tide) for _ in range(2)])
    finally:
        tidebase_otel.uninstrument()
        tracer_provider.shutdown()
    assert_normal_speed(elapsed, base)


async def test_a_raising_span_processor_costs_no_metric_point(tide):
    """Spans end through the processors; the step and run counters must not depend on them."""
    with instrumented() as telemetry:
        telemetry.tracer_provider.add_span_processor(Exploding())

        async def pipeline(run, _):
            await run.step("pure", lambda: 1)
            await run.step("effect", lambda: 2, side_effects=["x.write"], idempotency_key="k")
            await run.step("broken", lambda: 1 / 0)

        with pytest.raises(ZeroDivisionError):
            await tide.run("exploding", pipeline, run_id=new_run_id())
        steps = sc.METRIC_TIDEBASE_STEPS
        assert telemetry.metric_sum(steps, **{sc.TIDEBASE_STEP_OUTCOME: "completed"}) == 2
        assert telemetry.metric_sum(steps, **{sc.TIDEBASE_STEP_OUTCOME: "failed"}) == 1
        runs = sc.METRIC_TIDEBASE_RUNS
        assert telemetry.metric_sum(runs, **{sc.TIDEBASE_RUN_STATUS: "failed"}) == 1


async def test_a_broken_span_processor_logs_one_traceback_not_one_per_step(
    tide, caplog, monkeypatch
):
    """The first failure of each kind is logged with its traceback, repeats are only counted:
    a processor that fails on every span must not bury the application's own logs."""
    failure_log = hooks._FailureLog(logging.getLogger("tidebase.hooks"), interval_s=60.0)
    monkeypatch.setattr(hooks, "_failures", failure_log)  # forget earlier tests' failures
    with instrumented() as telemetry:
        telemetry.tracer_provider.add_span_processor(Exploding())

        async def pipeline(run, _):
            for i in range(20):
                await run.step(f"s{i}", lambda: 1)
            return "done"

        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert await tide.run("noisy", pipeline, run_id=new_run_id()) == "done"
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        kinds = {r.getMessage().split(" failed")[0] for r in failures}
        # 60 step spans and 3 run spans failed to end: one record per kind of failure.
        assert failures and len(failures) == len(kinds) <= 3, [r.getMessage() for r in failures]
        assert all(r.exc_info for r in failures)

        # After the interval, one line per kind says how many were left out.
        caplog.clear()
        failure_log._interval_s = 0.0
        with caplog.at_level(logging.WARNING):
            assert await tide.run("noisy", pipeline, run_id=new_run_id()) == "done"
        assert any("more times" in r.getMessage() for r in caplog.records)

        # Repeats after the last summary are reported when the log is flushed (at exit).
        failure_log._interval_s = 60.0
        assert await tide.run("noisy", pipeline, run_id=new_run_id()) == "done"
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            failure_log.flush()
            failure_log.flush()  # nothing new: no second line
        lines = [r.getMessage() for r in caplog.records]
        assert lines and all("since it was last reported" in line for line in lines)
        assert len(lines) == len({line.split(" failed")[0] for line in lines})


class ExplodingOnEnd(SpanProcessor):
    def on_end(self, span: Any) -> None:
        raise RuntimeError("span processor on_end exploded")


async def test_a_processor_failing_while_a_step_fails_is_not_blamed_on_the_step(
    tide, caplog, monkeypatch
):
    """The processor's error is raised while tidebase reports the step's ZeroDivisionError,
    not because of it: its traceback must not read "during handling of ZeroDivisionError"."""
    failure_log = hooks._FailureLog(logging.getLogger("tidebase.hooks"), interval_s=60.0)
    monkeypatch.setattr(hooks, "_failures", failure_log)
    with instrumented() as telemetry:
        telemetry.tracer_provider.add_span_processor(ExplodingOnEnd())

        async def pipeline(run, _):
            await run.step("divide", lambda: 1 / 0)

        with caplog.at_level(logging.WARNING), pytest.raises(ZeroDivisionError):
            await tide.run("wf", pipeline, run_id=new_run_id())
    (record,) = [r for r in caplog.records if "step.finished" in r.getMessage()]
    text = logging.Formatter().formatException(record.exc_info)
    assert "on_end exploded" in text and "ZeroDivisionError" not in text
