"""Queue, cancellation and recovery telemetry: `QueueObserver`, a tidebase `RunObserver`.

Spans:
* ``enqueue {queue}`` (PRODUCER): one per `tide.enqueue`; its span context is stored with the
  run.
* ``process {queue}`` (CONSUMER): one per run attempt a worker executes; it links to the
  enqueuing span (so the enqueuer reaches every attempt of its run, and each attempt its
  enqueuer) and is the parent of that attempt's ``run {workflow}`` span.
* ``cancel run`` (INTERNAL): one per `tide.cancel`.
* ``recovery {workflow}`` (CLIENT): one per recovery-webhook delivery try (recorded after the
  fact with its real duration).

Metrics (attributes: queue, workflow, outcome, reason; never run ids):
``tidebase.queue.wait_time`` (histogram, s), ``tidebase.queue.claims``,
``tidebase.queue.retries``, ``tidebase.queue.enqueued``, ``tidebase.run.cancellations``,
``tidebase.recovery.deliveries``.

Names live in ``_semconv.py`` with every other string tidebase_otel emits. Nothing here raises
into tidebase: the hook layer guards every call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tidebase import __version__ as _tidebase_version
from tidebase.hooks import (
    CancelInfo,
    ClaimInfo,
    ClaimTracker,
    EnqueueInfo,
    EnqueueTracker,
    RecoveryInfo,
    RunObserver,
)

from . import _semconv as sc
from .metrics import _histogram
from .observer import error_type, span_context, span_ref

__all__ = ["QueueObserver", "install", "uninstall"]

_SCOPE = "tidebase_otel.queue"
_OK_OUTCOMES = frozenset({"completed", "requeued", "released"})


class QueueObserver(RunObserver):
    """Spans and metrics for enqueues, claims, retries, cancellations and recoveries."""

    def __init__(
        self,
        tracer_provider: otel_trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = otel_trace.get_tracer(
            _SCOPE, _tidebase_version, tracer_provider=tracer_provider
        )
        meter = otel_metrics.get_meter(_SCOPE, _tidebase_version, meter_provider=meter_provider)
        self.wait_time = _histogram(
            meter,
            sc.METRIC_QUEUE_WAIT,
            sc.UNIT_SECONDS,
            "Time a run waited on its queue once ready",
            sc.QUEUE_WAIT_BUCKETS,
        )
        self.claims = meter.create_counter(
            sc.METRIC_QUEUE_CLAIMS, unit=sc.UNIT_RUN, description="Queued runs claimed by workers"
        )
        self.retries = meter.create_counter(
            sc.METRIC_QUEUE_RETRIES,
            unit=sc.UNIT_RUN,
            description="Failed attempts requeued for retry",
        )
        self.enqueued = meter.create_counter(
            sc.METRIC_QUEUE_ENQUEUED,
            unit=sc.UNIT_RUN,
            description="Runs enqueued (deduplicated apart)",
        )
        self.cancellations = meter.create_counter(
            sc.METRIC_CANCELLATIONS, unit=sc.UNIT_RUN, description="Run cancellations requested"
        )
        self.recoveries = meter.create_counter(
            sc.METRIC_RECOVERIES,
            unit=sc.UNIT_DELIVERY,
            description="Recovery webhook delivery tries",
        )

    def enqueue(self, info: EnqueueInfo) -> EnqueueTracker:
        return _EnqueueSpan(self, info)

    def claimed(self, info: ClaimInfo) -> ClaimTracker:
        attrs = {sc.TIDEBASE_QUEUE_NAME: info.queue, sc.TIDEBASE_WORKFLOW: info.workflow}
        self.claims.add(1, attrs)
        self.wait_time.record(info.wait_s, attrs)
        return _ProcessSpan(self, info)

    def cancelled(self, info: CancelInfo) -> None:
        self.cancellations.add(1, {sc.TIDEBASE_CANCEL_OUTCOME: info.outcome})
        attrs: dict[str, Any] = {
            sc.TIDEBASE_RUN_ID: info.run_id,
            sc.TIDEBASE_CANCEL_OUTCOME: info.outcome,
        }
        if info.reason is not None:
            attrs[sc.TIDEBASE_CANCEL_REASON] = info.reason
        if info.actor is not None:
            attrs[sc.TIDEBASE_CANCEL_ACTOR] = info.actor
        self._tracer.start_span(sc.SPAN_CANCEL, kind=SpanKind.INTERNAL, attributes=attrs).end()

    def recovery(self, info: RecoveryInfo) -> None:
        outcome = "delivered" if info.delivered else ("retry" if info.will_retry else "failed")
        self.recoveries.add(
            1,
            {
                sc.TIDEBASE_WORKFLOW: info.workflow,
                sc.TIDEBASE_RECOVERY_REASON: info.reason,
                sc.TIDEBASE_RECOVERY_OUTCOME: outcome,
            },
        )
        end = time.time_ns()
        attrs: dict[str, Any] = {
            sc.TIDEBASE_RUN_ID: info.run_id,
            sc.TIDEBASE_RUN_ATTEMPT: info.attempt,
            sc.TIDEBASE_WORKFLOW: info.workflow,
            sc.TIDEBASE_RECOVERY_REASON: info.reason,
            sc.TIDEBASE_RECOVERY_TRY: info.try_number,
            sc.TIDEBASE_RECOVERY_OUTCOME: outcome,
        }
        if info.http_status is not None:
            attrs[sc.HTTP_RESPONSE_STATUS_CODE] = info.http_status
        span = self._tracer.start_span(
            sc.SPAN_RECOVERY.format(workflow=info.workflow[:100]),
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=end - int(info.duration_s * 1e9),
        )
        if not info.delivered:
            span.set_status(Status(StatusCode.ERROR, (info.error or "failed")[:256]))
        span.end(end_time=end)


class _EnqueueSpan(EnqueueTracker):
    def __init__(self, observer: QueueObserver, info: EnqueueInfo) -> None:
        self._obs = observer
        self._info = info
        attrs: dict[str, Any] = {
            sc.TIDEBASE_QUEUE_NAME: info.queue,
            sc.TIDEBASE_WORKFLOW: info.workflow,
            sc.TIDEBASE_QUEUE_PRIORITY: info.priority,
            sc.TIDEBASE_QUEUE_MAX_ATTEMPTS: info.max_attempts,
        }
        if info.dedupe_key is not None:
            attrs[sc.TIDEBASE_QUEUE_DEDUPE_KEY] = info.dedupe_key
        self._span = observer._tracer.start_span(
            sc.SPAN_ENQUEUE.format(queue=info.queue[:100]), kind=SpanKind.PRODUCER, attributes=attrs
        )
        self.span_ref = span_ref(self._span)

    def finished(
        self,
        *,
        run_id: str | None = None,
        deduplicated: bool = False,
        error: BaseException | None = None,
    ) -> None:
        if run_id is not None:
            self._span.set_attribute(sc.TIDEBASE_RUN_ID, run_id)
        self._span.set_attribute(sc.TIDEBASE_QUEUE_DEDUPLICATED, deduplicated)
        if error is not None:
            self._span.set_attribute(sc.ERROR_TYPE, error_type(error))
            self._span.set_status(Status(StatusCode.ERROR, str(error)[:256]))
        elif not deduplicated:
            self._obs.enqueued.add(
                1,
                {
                    sc.TIDEBASE_QUEUE_NAME: self._info.queue,
                    sc.TIDEBASE_WORKFLOW: self._info.workflow,
                },
            )
        self._span.end()


class _ProcessSpan(ClaimTracker):
    def __init__(self, observer: QueueObserver, info: ClaimInfo) -> None:
        self._obs = observer
        self._info = info
        enqueued = span_context(info.enqueued_by)
        links = [Link(enqueued, {sc.TIDEBASE_LINK_TYPE: sc.LINK_ENQUEUED_BY})] if enqueued else []
        self._span = observer._tracer.start_span(
            sc.SPAN_PROCESS.format(queue=info.queue[:100]),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                sc.TIDEBASE_QUEUE_NAME: info.queue,
                sc.TIDEBASE_WORKFLOW: info.workflow,
                sc.TIDEBASE_RUN_ID: info.run_id,
                sc.TIDEBASE_RUN_ATTEMPT: info.attempt,
                sc.TIDEBASE_QUEUE_MAX_ATTEMPTS: info.max_attempts,
                sc.TIDEBASE_QUEUE_WAIT_S: info.wait_s,
            },
        )

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with otel_trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def finished(self, outcome: str, *, error: BaseException | None = None) -> None:
        self._span.set_attribute(sc.TIDEBASE_QUEUE_OUTCOME, outcome)
        if outcome == "requeued":
            self._obs.retries.add(
                1,
                {
                    sc.TIDEBASE_QUEUE_NAME: self._info.queue,
                    sc.TIDEBASE_WORKFLOW: self._info.workflow,
                },
            )
        if outcome not in _OK_OUTCOMES:
            if error is not None:
                self._span.set_attribute(sc.ERROR_TYPE, error_type(error))
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()


_installed: QueueObserver | None = None


def install(
    tracer_provider: otel_trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
) -> QueueObserver:
    """Registers a QueueObserver for every client (called by `tidebase_otel.instrument`)."""
    from tidebase.hooks import add_observer

    global _installed
    uninstall()
    _installed = QueueObserver(tracer_provider, meter_provider)
    add_observer(_installed)
    return _installed


def uninstall() -> None:
    """Removes the QueueObserver registered by `install`."""
    from tidebase.hooks import remove_observer

    global _installed
    if _installed is not None:
        remove_observer(_installed)
        _installed = None
