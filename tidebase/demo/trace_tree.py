"""The demo's telemetry: capture each attempt's spans and metrics, then print them as trees.

Each demo process (the worker that is killed, and the `tidebase demo` process that resumes the
run) instruments tidebase with tidebase_otel into its own OpenTelemetry SDK providers:

* spans go through a `SimpleSpanProcessor`, so each span is handed over the moment it ends:
  to memory in the demo process, to a JSON-lines file in the worker (the parent reads it after
  the worker died). Spans still open when the worker is SIGKILLed (its run span, the draft
  step, the writer's agent run) are never exported: a real crash loses them too, and the tree
  shows where they were;
* metrics go to an in-memory reader; the worker writes a snapshot of them to a JSON file right
  before it kills itself (a real crash would lose what was not yet exported);
* with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, both processes also export over OTLP (batch span
  processor, periodic metric reader), so the same traces and metrics show up in Jaeger,
  Grafana, or any OTLP backend.

Needs the OpenTelemetry SDK (the ``tidebase[otel]`` extra); the demo runs without it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import tidebase_otel
from tidebase_otel import _semconv as sc
from tidebase_otel.sdk import metric_exporter, span_exporter

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_FLUSH_TIMEOUT_MS = 3000
# Unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise: a demo pointed at a collector that is not
# there should not sit out the exporters' 10 s default (twice: spans, then metrics).
_EXPORT_TIMEOUT_S = 2.0


class _ExportTally(SpanExporter):
    """Passes spans on to `exporter`, remembering whether every export succeeded (so the demo
    says whether the spans reached the collector, not only that it tried)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self.exported = 0
        self.failed = 0
        self.metric_failures = 0

    def metrics(self, exporter: Any) -> Any:
        """`exporter` (an OTLP metric exporter), its failed exports counted here too."""
        export = exporter.export

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = export(*args, **kwargs)
            if result != MetricExportResult.SUCCESS:
                self.metric_failures += 1
            return result

        exporter.export = counted
        return exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._exporter.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


# ---------------------------------------------------------------------- spans as plain data
@dataclass
class SpanRecord:
    """An exported span, reduced to what the tree needs; JSON-serializable."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    links: list[dict[str, Any]] = field(default_factory=list)
    process: str = ""

    @classmethod
    def of(cls, span: ReadableSpan, process: str) -> SpanRecord:
        ctx = span.context
        return cls(
            name=span.name,
            trace_id=otel_trace.format_trace_id(ctx.trace_id),
            span_id=otel_trace.format_span_id(ctx.span_id),
            parent_id=otel_trace.format_span_id(span.parent.span_id) if span.parent else None,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            attributes={
                k: list(v) if isinstance(v, tuple) else v
                for k, v in (span.attributes or {}).items()
            },
            error=span.status.status_code == StatusCode.ERROR,
            links=[
                {
                    "trace_id": otel_trace.format_trace_id(link.context.trace_id),
                    "span_id": otel_trace.format_span_id(link.context.span_id),
                    "type": (link.attributes or {}).get(sc.TIDEBASE_LINK_TYPE),
                }
                for link in span.links
            ],
            process=process,
        )


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported span to a file as one JSON line, flushed at once."""

    def __init__(self, path: Path, process: str) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._process = process

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(asdict(SpanRecord.of(span, self._process))) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def read_spans(path: Path) -> list[SpanRecord]:
    if not path.exists():
        return []
    return [SpanRecord(**json.loads(line)) for line in path.read_text().splitlines() if line]


# ---------------------------------------------------------------------- metrics as plain data
MetricTotals = dict[str, dict[str, float]]
"""metric name -> "attr=value,..." -> value (counter total, or histogram sum)."""


def _key(attributes: Mapping[str, Any], keep: Iterable[str]) -> str:
    return ",".join(f"{k}={attributes[k]}" for k in keep if k in attributes)


_KEEP = {
    sc.METRIC_TIDEBASE_TOKENS: (sc.GEN_AI_TOKEN_TYPE,),
    sc.METRIC_TIDEBASE_COST: (),
    sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE: (sc.GEN_AI_TOKEN_TYPE,),
    sc.METRIC_TIDEBASE_STEPS: (sc.TIDEBASE_STEP_OUTCOME,),
    sc.METRIC_TIDEBASE_RUNS: (sc.TIDEBASE_RUN_STATUS,),
    sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED: (),
    sc.METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED: (sc.GEN_AI_TOKEN_TYPE,),
}


def metric_totals(reader: InMemoryMetricReader) -> MetricTotals:
    totals: MetricTotals = defaultdict(lambda: defaultdict(float))
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                keep = _KEEP.get(metric.name)
                if keep is None:
                    continue
                for point in metric.data.data_points:
                    value = point.sum if hasattr(point, "bucket_counts") else point.value
                    totals[metric.name][_key(point.attributes, keep)] += value
                    if hasattr(point, "bucket_counts"):
                        totals[metric.name + ".count"][_key(point.attributes, keep)] += point.count
    return {name: dict(values) for name, values in totals.items()}


def add_totals(*parts: MetricTotals) -> MetricTotals:
    out: MetricTotals = defaultdict(lambda: defaultdict(float))
    for part in parts:
        for name, values in part.items():
            for key, value in values.items():
                out[name][key] += value
    return {name: dict(values) for name, values in out.items()}


# ---------------------------------------------------------------------- one process's telemetry
class DemoTelemetry:
    """tidebase_otel instrumented into this process's own SDK providers (never the globals)."""

    def __init__(self, process: str, span_file: Path | None = None) -> None:
        self.process = process
        self.otlp_endpoint = os.environ.get(OTLP_ENDPOINT_ENV) or None
        resource = Resource.create({"service.name": "tidebase-demo"})
        self.tracer_provider = TracerProvider(resource=resource)
        self._memory = InMemorySpanExporter()
        exporter: SpanExporter = (
            JsonLinesSpanExporter(span_file, process) if span_file is not None else self._memory
        )
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.metrics = InMemoryMetricReader()
        readers: list[MetricReader] = [self.metrics]
        self._otlp: _ExportTally | None = None
        if self.otlp_endpoint:
            timeout = None if os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") else _EXPORT_TIMEOUT_S
            self._otlp = _ExportTally(span_exporter(timeout=timeout))
            self.tracer_provider.add_span_processor(BatchSpanProcessor(self._otlp))
            readers.append(
                PeriodicExportingMetricReader(self._otlp.metrics(metric_exporter(timeout=timeout)))
            )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        tidebase_otel.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def otlp_note(self) -> str | None:
        """What became of this process's OTLP export, for the report (None: not exporting)."""
        if self._otlp is None:
            return None
        if self._otlp.failed or self._otlp.metric_failures:
            return (
                f"  (OTLP export to {self.otlp_endpoint} failed: {self._otlp.failed} spans, "
                f"{self._otlp.metric_failures} metric batches; is a collector listening there?)"
            )
        return f"  (also exported over OTLP to {self.otlp_endpoint})"

    def spans(self) -> list[SpanRecord]:
        return [SpanRecord.of(s, self.process) for s in self._memory.get_finished_spans()]

    def totals(self) -> MetricTotals:
        return metric_totals(self.metrics)

    def flush(self, metrics_file: Path | None = None) -> None:
        """Exports what is pending (and writes the metric totals to ``metrics_file``)."""
        if metrics_file is not None:
            metrics_file.write_text(json.dumps(self.totals()))
        self.tracer_provider.force_flush(_FLUSH_TIMEOUT_MS)
        self.meter_provider.force_flush(_FLUSH_TIMEOUT_MS)

    def close(self) -> None:
        tidebase_otel.uninstrument()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def read_totals(path: Path) -> MetricTotals:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------------- the tree
def _ms(span: SpanRecord) -> str:
    return f"{(span.end_ns - span.start_ns) / 1e6:.0f} ms"


def _short_id(value: str) -> str:
    return value[:8] + "…"


class _Describer:
    """Labels spans, resolving links to spans of any attempt the demo saw."""

    def __init__(
        self,
        every_span: Sequence[SpanRecord],
        attempt_of_trace: Mapping[str, int],
        lost_labels: Mapping[str, str],
    ):
        self._by_id = {s.span_id: s for s in every_span}
        self._attempt_of_trace = attempt_of_trace
        self._lost_labels = lost_labels

    def link(self, link: Mapping[str, Any]) -> str:
        target = self._by_id.get(link["span_id"])
        attempt = self._attempt_of_trace.get(link["trace_id"])
        where = f"attempt {attempt}, " if attempt else ""
        if target is not None:
            what = target.name
        else:
            known = self._lost_labels.get(link["span_id"])
            what = f"{known}, never exported" if known else "a span that was never exported"
        return f"{what} ({where}trace {_short_id(link['trace_id'])})"

    def label(self, span: SpanRecord) -> str:
        a = span.attributes
        parts = [span.name]
        if sc.TIDEBASE_STEP_NAME in a:
            outcome = a.get(sc.TIDEBASE_STEP_OUTCOME, "?")
            if a.get(sc.TIDEBASE_STEP_REPLAYED):
                parts.append("↺ replayed from its checkpoint")
            else:
                parts.append(f"{'✔' if outcome == 'completed' else '✘'} {outcome} {_ms(span)}")
            if a.get(sc.TIDEBASE_STEP_SIDE_EFFECTS):
                parts.append(f"[side effects: {', '.join(a[sc.TIDEBASE_STEP_SIDE_EFFECTS])}]")
            tokens = (a.get(sc.TIDEBASE_REPLAY_INPUT_TOKENS_AVOIDED) or 0) + (
                a.get(sc.TIDEBASE_REPLAY_OUTPUT_TOKENS_AVOIDED) or 0
            )
            if tokens:
                parts.append(f"({tokens} tokens not spent again)")
        elif sc.TIDEBASE_RUN_STATUS in a:
            parts.append(
                f"attempt {a.get(sc.TIDEBASE_RUN_ATTEMPT, '?')}, {a[sc.TIDEBASE_RUN_STATUS]}"
            )
        elif a.get(sc.GEN_AI_OPERATION_NAME) == sc.OP_CHAT and sc.GEN_AI_USAGE_INPUT_TOKENS in a:
            parts.append(
                f"{a[sc.GEN_AI_USAGE_INPUT_TOKENS]} in / {a.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS, 0)} "
                "out tokens"
            )
        elif a.get(sc.TIDEBASE_AGENTS_HANDOFF_TO):
            pass
        if span.error and sc.TIDEBASE_STEP_NAME not in a:
            parts.append(f"✘ {a.get(sc.ERROR_TYPE, 'error')}")
        return "  ".join(parts)

    def link_lines(self, span: SpanRecord) -> list[str]:
        lines = []
        for link in span.links:
            kind = {
                sc.LINK_EXECUTED_BY: "executed by",
                sc.LINK_PREVIOUS_ATTEMPT: "previous attempt",
            }.get(link.get("type"), "link")
            lines.append(f"↪ {kind}: {self.link(link)}")
        return lines


def render_attempt(
    spans: Sequence[SpanRecord],
    describer: _Describer,
    lost_labels: Mapping[str, str] | None = None,
) -> list[str]:
    """The span tree of one attempt; spans whose parent was never exported hang under a
    placeholder (``lost_labels`` names the ones we know, e.g. the attempt's run span)."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRecord]] = defaultdict(list)
    lost: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        if span.parent_id is None:
            children[None].append(span)
        elif span.parent_id in ids:
            children[span.parent_id].append(span)
        else:
            lost[span.parent_id].append(span)
    lines: list[str] = []

    def walk(span: SpanRecord, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(f"{prefix}{branch}{describer.label(span)}")
        inner = prefix + ("" if top else ("   " if last else "│  "))
        kids = sorted(children.get(span.span_id, []), key=lambda s: s.start_ns)
        for line in describer.link_lines(span):
            lines.append(f"{inner}{'│  ' if kids else '   '}{line}")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in sorted(children[None], key=lambda s: s.start_ns):
        walk(root, "  ", True, True)
    labels = lost_labels or {}
    for parent_id, kids in sorted(lost.items(), key=lambda kv: min(s.start_ns for s in kv[1])):
        label = labels.get(parent_id) or f"span {_short_id(parent_id)}"
        lines.append(f"  ⋯ {label} (never exported: still open when the process died)")
        kids.sort(key=lambda s: s.start_ns)
        for i, kid in enumerate(kids):
            walk(kid, "    ", i == len(kids) - 1, False)
    return lines


def render_report(
    attempts: Sequence[Mapping[str, Any]],
    spans: Sequence[SpanRecord],
    totals: MetricTotals,
    ledger: Sequence[Mapping[str, Any]],
    workflow: str,
    otlp_note: str | None,
) -> list[str]:
    """Every attempt's tree, then the metric totals next to the usage ledger's."""
    attempt_of_trace = {a["trace_id"]: a["attempt"] for a in attempts if a.get("trace_id")}
    run_spans = {a["span_id"]: f"run {workflow}" for a in attempts if a.get("span_id")}
    describer = _Describer(spans, attempt_of_trace, run_spans)
    lines = [
        "",
        "== traces (OpenTelemetry spans, as exported; a killed process exports only the spans "
        "that had ended)",
    ]
    for attempt in attempts:
        trace_id = attempt.get("trace_id")
        own = [s for s in spans if s.trace_id == trace_id]
        where = own[0].process if own else "?"
        lines.append(
            f"attempt {attempt['attempt']} ({attempt['status']}, {where}, "
            f"trace {_short_id(trace_id) if trace_id else '-'})"
        )
        lines.extend(render_attempt(own, describer, run_spans) or ["  (no spans exported)"])
    lines.extend(render_metrics(totals, ledger))
    if otlp_note:
        lines.append(otlp_note)
    return lines


def render_metrics(totals: MetricTotals, ledger: Sequence[Mapping[str, Any]]) -> list[str]:
    def value(name: str, key: str = "") -> float:
        return totals.get(name, {}).get(key, 0.0)

    def by_attr(name: str) -> str:
        values = totals.get(name, {})
        return ", ".join(f"{k.split('=', 1)[-1]} {v:g}" for k, v in sorted(values.items())) or "-"

    tokens_in = value(sc.METRIC_TIDEBASE_TOKENS, f"{sc.GEN_AI_TOKEN_TYPE}=input")
    tokens_out = value(sc.METRIC_TIDEBASE_TOKENS, f"{sc.GEN_AI_TOKEN_TYPE}=output")
    cost = value(sc.METRIC_TIDEBASE_COST)
    ledger_in = sum(int(u.get("input_tokens") or 0) for u in ledger)
    ledger_out = sum(int(u.get("output_tokens") or 0) for u in ledger)
    ledger_cost = sum(float(u.get("cost_usd") or 0) for u in ledger)
    same = (tokens_in, tokens_out) == (ledger_in, ledger_out) and abs(cost - ledger_cost) < 1e-9
    avoided_tokens = sum(totals.get(sc.METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED, {}).values())
    histogram_count = sum(totals.get(sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE + ".count", {}).values())
    return [
        "",
        "== metrics (OpenTelemetry, summed over both processes)",
        f"  {sc.METRIC_TIDEBASE_TOKENS:<30} input {tokens_in:g}, output {tokens_out:g}",
        f"  {sc.METRIC_TIDEBASE_COST:<30} ${cost:.6f}",
        f"  {'usage ledger (Postgres)':<30} input {ledger_in}, output {ledger_out}, "
        f"${ledger_cost:.6f}  " + ("✔ the metrics add up to the ledger" if same else "✘ differ"),
        f"  {sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE:<30} {histogram_count:g} points "
        f"({by_attr(sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE)})",
        f"  {sc.METRIC_TIDEBASE_STEPS:<30} {by_attr(sc.METRIC_TIDEBASE_STEPS)}",
        f"  {sc.METRIC_TIDEBASE_RUNS:<30} {by_attr(sc.METRIC_TIDEBASE_RUNS)}"
        "  (the killed attempt never ended; 'leased': invocations refused while the dead "
        "worker's lease was live)",
        f"  {sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED:<30} "
        f"${value(sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED):.6f} "
        f"({avoided_tokens:g} tokens not spent again)",
    ]
