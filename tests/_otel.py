"""Test support for tidebase_otel: a real OTel SDK in memory and a real local OTLP/HTTP receiver.

`Telemetry` is a TracerProvider with an in-memory exporter (SimpleSpanProcessor) plus a
MeterProvider with an in-memory reader, and helpers to walk the span tree and sum metric points.
`OtlpReceiver` is a small HTTP server on 127.0.0.1 that accepts OTLP/HTTP protobuf exports and
decodes them with opentelemetry-proto. `instrumented(...)` instruments tidebase_otel with a
`Telemetry` and always uninstruments (and clears the Agents SDK's processors) afterwards.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import agents
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

import tidebase_otel
from tidebase_otel import _semconv as sc


class Telemetry:
    """Real SDK providers whose output stays in memory."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(sampler=sampler)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    # ------------------------------------------------------------------ spans
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans()])
        return found[0]

    def by_id(self) -> dict[int, ReadableSpan]:
        return {s.context.span_id: s for s in self.spans()}

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id().get(span.parent.span_id) if span.parent else None

    def ancestors(self, span: ReadableSpan) -> list[ReadableSpan]:
        index = self.by_id()
        out = []
        current = span
        while current.parent is not None and current.parent.span_id in index:
            current = index[current.parent.span_id]
            out.append(current)
        return out

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        sid = span.context.span_id
        kids = [s for s in self.spans() if s.parent is not None and s.parent.span_id == sid]
        return sorted(kids, key=lambda s: s.start_time)

    def step_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if sc.TIDEBASE_STEP_NAME in (s.attributes or {})]

    def run_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("run ")]

    # ------------------------------------------------------------------ metrics
    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def metric_sum(self, name: str, **attrs: Any) -> float:
        """Sum of a counter, or of a histogram's recorded values, over matching points."""
        total = 0.0
        for point in self.metric_points(name):
            if all(point.attributes.get(k) == v for k, v in attrs.items()):
                total += point.sum if hasattr(point, "bucket_counts") else point.value
        return total

    def metric_count(self, name: str, **attrs: Any) -> int:
        """Number of values a histogram recorded over matching points."""
        return sum(
            p.count
            for p in self.metric_points(name)
            if all(p.attributes.get(k) == v for k, v in attrs.items())
        )


@contextlib.contextmanager
def instrumented(sampler: Sampler | None = None, **kwargs: Any) -> Iterator[Telemetry]:
    """tidebase_otel instrumented into a fresh `Telemetry`; undone afterwards, always."""
    agents.set_trace_processors([])  # never the default OpenAI exporter in tests
    telemetry = Telemetry(sampler)
    tidebase_otel.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        **kwargs,
    )
    try:
        yield telemetry
    finally:
        tidebase_otel.uninstrument()
        agents.set_trace_processors([])
        telemetry.shutdown()


# ---------------------------------------------------------------------- OTLP/HTTP receiver
@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int
    service_name: str | None


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


@dataclass
class OtlpReceiver:
    """OTLP/HTTP (protobuf) receiver on 127.0.0.1; keeps every decoded request."""

    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver._receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _receive(self, path: str, body: bytes) -> None:
        with self._lock:
            self.paths.append(path)
            if path.endswith("/v1/traces"):
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                self.traces.append(request)
            elif path.endswith("/v1/metrics"):
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                self.metrics.append(request)

    def spans(self) -> list[ReceivedSpan]:
        out = []
        with self._lock:
            requests = list(self.traces)
        for request in requests:
            for rs in request.resource_spans:
                service = _attrs(rs.resource.attributes).get("service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex() or None,
                                attributes=_attrs(span.attributes),
                                links=[
                                    (lk.trace_id.hex(), lk.span_id.hex(), _attrs(lk.attributes))
                                    for lk in span.links
                                ],
                                status_code=span.status.code,
                                service_name=service,
                            )
                        )
        return out

    def metric_sums(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], float]:
        """Latest cumulative value (sum for histograms) per metric and attribute set."""
        latest: dict[tuple[str, frozenset[tuple[str, Any]]], tuple[int, float]] = {}
        with self._lock:
            requests = list(self.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points
                        for p in points:
                            key = (metric.name, frozenset(_attrs(p.attributes).items()))
                            value = p.sum if kind == "histogram" else p.as_double or p.as_int
                            seen = latest.get(key)
                            if seen is None or p.time_unix_nano >= seen[0]:
                                latest[key] = (p.time_unix_nano, value)
        return {k: v for k, (_, v) in latest.items()}

    def metric_total(self, name: str, **attrs: Any) -> float:
        sums: dict[str, float] = defaultdict(float)
        for (metric, attr_set), value in self.metric_sums().items():
            found = dict(attr_set)
            if metric == name and all(found.get(k) == v for k, v in attrs.items()):
                sums[metric] += value
        return sums[name]
