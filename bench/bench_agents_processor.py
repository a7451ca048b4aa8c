"""Micro-benchmark: what OTelAgentsProcessor costs per Agents span, against an empty processor.

Drives ``on_trace_start`` / ``on_span_start`` / ``on_span_end`` / ``on_trace_end`` directly with
real Agents SDK span objects shaped like one agent turn (task -> agent -> turn -> response ->
function), into an OpenTelemetry SDK TracerProvider whose BatchSpanProcessor feeds a no-op
exporter. The response span ends from inside an ``agents`` ``Model`` method, as in a real run, so
the model-name lookup (sensitive data off) is exercised. The baseline is a processor whose
callbacks do nothing, measured in the same run and interleaved with ours; the number that
matters is the difference. A second reference, one bare OTel span per Agents span, shows how much
of that difference is the OpenTelemetry SDK itself (span creation, sampling, id generation,
batch queue), and our processor with a no-op tracer shows the cost of its own logic. Not a
timed test: it prints numbers.

    python bench/bench_agents_processor.py [--traces 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import agents
from agents.models.interface import Model
from agents.tracing import (
    TracingProcessor,
    agent_span,
    function_span,
    response_span,
    task_span,
    turn_span,
)
from agents.usage import Usage, model_usage_to_span_usage
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from tidebase_otel.agents import OTelAgentsProcessor

SPANS_PER_TRACE = 5


class NoopExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class EmptyProcessor(TracingProcessor):
    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


class NaiveOtelProcessor(EmptyProcessor):
    """Reference: one bare OTel span per Agents span (dict by id, fixed attributes, no mapping
    logic, no parenting, no lock). Shows what the OpenTelemetry SDK itself costs here."""

    ATTRS: ClassVar[dict[str, Any]] = {"a": "b", "c": "d", "e": "f", "g": 1, "h": "i", "j": "k"}

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer(__name__)
        self.open: dict[str, Any] = {}

    def on_span_start(self, span: Any) -> None:
        self.open[span.span_id] = self.tracer.start_span("span", attributes=self.ATTRS)

    def on_span_end(self, span: Any) -> None:
        self.open.pop(span.span_id).end()


class BenchModel(Model):
    """Stands in for a model implementation: the response span ends inside its method."""

    model = "gpt-4.1-mini"

    def end_span(self, processor: TracingProcessor, span: Any) -> None:
        span.finish()
        processor.on_span_end(span)

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


USAGE = model_usage_to_span_usage(Usage(requests=1, input_tokens=120, output_tokens=30))


def one_trace(processor: TracingProcessor, model: BenchModel) -> None:
    trace = agents.trace("bench workflow")  # not started: drives no processor by itself
    processor.on_trace_start(trace)
    task = task_span("bench workflow", parent=trace)
    task.start()
    processor.on_span_start(task)
    agent = agent_span("bench-agent", parent=task)
    agent.start()
    processor.on_span_start(agent)
    turn = turn_span(1, "bench-agent", parent=agent)
    turn.start()
    processor.on_span_start(turn)
    response = response_span(parent=turn)
    response.start()
    processor.on_span_start(response)
    response.span_data.usage = USAGE
    model.end_span(processor, response)
    function = function_span("lookup", parent=turn)
    function.start()
    processor.on_span_start(function)
    function.finish()
    processor.on_span_end(function)
    agent.span_data.tools = ["lookup"]
    for span in (turn, agent, task):
        span.finish()
        processor.on_span_end(span)
    processor.on_trace_end(trace)


def measure(processor: TracingProcessor, traces: int) -> float:
    """Microseconds per Agents span."""
    model = BenchModel()
    start = time.perf_counter()
    for _ in range(traces):
        one_trace(processor, model)
    elapsed = time.perf_counter() - start
    return elapsed / (traces * SPANS_PER_TRACE) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    agents.set_trace_processors([])  # the spans' own processor does nothing; we drive ours
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=65536))
    candidates: dict[str, TracingProcessor] = {
        "empty processor (baseline)": EmptyProcessor(),
        "bare OTel span per Agents span": NaiveOtelProcessor(provider),
        "OTelAgentsProcessor": OTelAgentsProcessor(tracer_provider=provider),
        # Its own logic (mapping, parenting, bookkeeping) without the SDK's span work.
        "OTelAgentsProcessor, no-op tracer": OTelAgentsProcessor(
            tracer_provider=NoOpTracerProvider()
        ),
        "OTelAgentsProcessor, content on": OTelAgentsProcessor(
            tracer_provider=provider, capture_content=True
        ),
    }
    for processor in candidates.values():  # warm up
        measure(processor, 200)
    results: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, processor in candidates.items():
            results[name].append(measure(processor, args.traces))
    provider.shutdown()

    base = statistics.median(results["empty processor (baseline)"])
    print(
        f"{args.traces} traces x {SPANS_PER_TRACE} Agents spans, {args.rounds} rounds "
        "(median us per Agents span; SDK span objects are created in every variant)"
    )
    for name, values in results.items():
        med = statistics.median(values)
        extra = "" if med == base else f"  -> +{med - base:.2f} us/span, x{med / base:.1f}"
        print(f"  {name:34s} {med:8.2f} us/span{extra}")


if __name__ == "__main__":
    main()
