"""Queue telemetry through `tidebase_otel.instrument()`: enqueue/process/cancel spans, the
enqueuing span linked from every attempt of its run, and queue metrics. Both modes."""

from __future__ import annotations

import uuid

from _otel import instrumented
from _queue_helpers import make_ready

from tidebase_otel import _semconv as sc


async def test_enqueue_span_links_to_every_attempt_and_metrics_count(tide, pg_url):
    queue = f"q_{uuid.uuid4().hex[:8]}"

    @tide.workflow("twice")
    async def twice(run, input):
        await run.step("s", lambda: 1)
        if run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with instrumented() as t:
        with t.tracer.start_as_current_span("caller"):
            queued = await tide.enqueue("twice", queue=queue, max_attempts=2)
        await tide.work(queue, until_idle=True, handle_signals=False)
        await make_ready(pg_url, queued.run_id)
        await tide.work(queue, until_idle=True, handle_signals=False)
        dup = await tide.enqueue("other", queue=queue, dedupe_key="d")
        await tide.enqueue("other", queue=queue, dedupe_key="d")
        await tide.cancel(dup.run_id, reason="done", actor="test")

        (enqueue,) = [
            s
            for s in t.named(f"enqueue {queue}")
            if s.attributes[sc.TIDEBASE_RUN_ID] == queued.run_id
        ]
        processes = [
            s
            for s in t.named(f"process {queue}")
            if s.attributes[sc.TIDEBASE_RUN_ID] == queued.run_id
        ]
        assert [p.attributes[sc.TIDEBASE_QUEUE_OUTCOME] for p in processes] == [
            "requeued",
            "completed",
        ]
        for attempt, process in enumerate(processes, start=1):
            (link,) = process.links
            assert link.context.span_id == enqueue.context.span_id
            assert link.context.trace_id == enqueue.context.trace_id
            (run_span,) = [s for s in t.run_spans() if t.parent(s) is process]
            assert run_span.attributes[sc.TIDEBASE_RUN_ATTEMPT] == attempt
        detail = await tide.get_run(queued.run_id)
        trace_hex = f"{enqueue.context.trace_id:032x}"
        assert detail["run"]["enqueued_trace_id"] == trace_hex

        assert t.metric_sum(sc.METRIC_QUEUE_CLAIMS, **{sc.TIDEBASE_QUEUE_NAME: queue}) == 2
        assert t.metric_sum(sc.METRIC_QUEUE_RETRIES, **{sc.TIDEBASE_QUEUE_NAME: queue}) == 1
        assert t.metric_count(sc.METRIC_QUEUE_WAIT, **{sc.TIDEBASE_QUEUE_NAME: queue}) == 2
        # Waits are seconds: the buckets are second-scale, not the SDK's millisecond default.
        (wait,) = [
            p
            for p in t.metric_points(sc.METRIC_QUEUE_WAIT)
            if p.attributes[sc.TIDEBASE_QUEUE_NAME] == queue
        ]
        assert tuple(wait.explicit_bounds) == sc.QUEUE_WAIT_BUCKETS
        assert t.metric_sum(sc.METRIC_QUEUE_ENQUEUED, **{sc.TIDEBASE_QUEUE_NAME: queue}) == 2
        assert (
            t.metric_sum(sc.METRIC_CANCELLATIONS, **{sc.TIDEBASE_CANCEL_OUTCOME: "cancelled"}) >= 1
        )
        (cancel,) = [
            s for s in t.named(sc.SPAN_CANCEL) if s.attributes[sc.TIDEBASE_RUN_ID] == dup.run_id
        ]
        assert cancel.attributes[sc.TIDEBASE_CANCEL_REASON] == "done"
