"""Run and step spans through the public API, real Postgres and the real OTel SDK.

Every step outcome (executed, replayed, failed, retried, manual_review, cancelled, interrupted)
gets its span with tidebase.* attributes; the span that executed a step is stored with its
checkpoint and a replay links to it; an attempt's run span links to the previous attempt's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import pytest
from _otel import Telemetry, instrumented
from conftest import new_run_id
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode

from tidebase import RunCancelled, StepFailedPermanently, StepNeedsReview
from tidebase.hooks import global_observers
from tidebase_otel import _semconv as sc


class Crash(Exception):
    """Stands in for a process dying between steps."""


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    with instrumented() as telemetry:
        yield telemetry
    assert global_observers() == ()


def _attrs(span) -> dict:
    return dict(span.attributes or {})


def _hex(span) -> tuple[str, str]:
    ctx = span.context
    return otel_trace.format_trace_id(ctx.trace_id), otel_trace.format_span_id(ctx.span_id)


async def test_run_and_step_spans_tree_attributes_and_stored_span_refs(
    tide, otel: Telemetry, pg_url: str
):
    run_id = new_run_id()
    tracer = otel.tracer

    async def fetch() -> dict:
        with tracer.start_as_current_span("user work"):  # a user span inside the step
            await asyncio.sleep(0)
        return {"pages": 3}

    async def pipeline(run, input):
        pages = await run.step("fetch", fetch, input={"url": input["url"]})

        async def publish() -> str:
            # a nested step inside a running step
            await run.step("audit", lambda: "ok")
            return "T-1"

        ticket = await run.step(
            "publish",
            publish,
            input=pages,
            side_effects=["tickets.create"],
            idempotency_key=f"{run.run_id}:publish",
        )
        return {"pages": pages, "ticket": ticket}

    result = await tide.run("crawl", pipeline, run_id=run_id, input={"url": "https://x"})
    assert result == {"pages": {"pages": 3}, "ticket": "T-1"}

    run_span = otel.one("run crawl")
    fetch_span = otel.one("step fetch")
    publish_span = otel.one("step publish")
    audit_span = otel.one("step audit")
    user_span = otel.one("user work")

    # the tree: run -> steps; user span under its step; nested step under its parent step
    assert run_span.parent is None
    assert fetch_span.parent.span_id == run_span.context.span_id
    assert otel.parent(publish_span).name == "run crawl"
    assert otel.parent(audit_span).name == "step publish"
    assert otel.parent(user_span).name == "step fetch"
    assert {s.context.trace_id for s in otel.spans()} == {run_span.context.trace_id}

    a = _attrs(run_span)
    assert a[sc.TIDEBASE_RUN_ID] == run_id
    assert a[sc.TIDEBASE_WORKFLOW] == "crawl"
    assert a[sc.TIDEBASE_RUN_ATTEMPT] == 1
    assert a[sc.TIDEBASE_RUN_STATUS] == "completed"
    assert run_span.status.status_code == StatusCode.UNSET
    assert run_span.links == ()

    a = _attrs(fetch_span)
    assert a[sc.TIDEBASE_RUN_ID] == run_id
    assert a[sc.TIDEBASE_RUN_ATTEMPT] == 1
    assert a[sc.TIDEBASE_WORKFLOW] == "crawl"
    assert a[sc.TIDEBASE_STEP_NAME] == "fetch"
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert a[sc.TIDEBASE_STEP_REPLAYED] is False
    assert a[sc.TIDEBASE_STEP_TRIES] == 1
    assert len(a[sc.TIDEBASE_STEP_INPUT_HASH]) == 64
    assert sc.TIDEBASE_STEP_SIDE_EFFECTS not in a
    assert sc.TIDEBASE_STEP_IDEMPOTENCY_KEY not in a
    a = _attrs(publish_span)
    assert a[sc.TIDEBASE_STEP_SIDE_EFFECTS] == ("tickets.create",)
    assert a[sc.TIDEBASE_STEP_IDEMPOTENCY_KEY] == f"{run_id}:publish"
    assert _attrs(audit_span)[sc.TIDEBASE_STEP_PARENT] == "publish"

    # the span context of each execution is stored with its checkpoint and attempt
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT name, trace_id, span_id FROM steps WHERE run_id = $1", run_id
        )
        attempt = await conn.fetchrow(
            "SELECT trace_id, span_id FROM run_attempts WHERE run_id = $1", run_id
        )
    finally:
        await conn.close()
    stored = {r["name"]: (r["trace_id"], r["span_id"]) for r in rows}
    assert stored == {
        "fetch": _hex(fetch_span),
        "publish": _hex(publish_span),
        "audit": _hex(audit_span),
    }
    assert (attempt["trace_id"], attempt["span_id"]) == _hex(run_span)

    # steps and runs are counted by outcome / status, by workflow only
    assert otel.metric_sum(sc.METRIC_TIDEBASE_STEPS, **{sc.TIDEBASE_STEP_OUTCOME: "completed"}) == 3
    assert otel.metric_sum(sc.METRIC_TIDEBASE_RUNS, **{sc.TIDEBASE_RUN_STATUS: "completed"}) == 1
    assert otel.metric_count(sc.METRIC_TIDEBASE_STEP_DURATION) == 3
    for name in (sc.METRIC_TIDEBASE_STEPS, sc.METRIC_TIDEBASE_STEP_DURATION):
        for point in otel.metric_points(name):
            assert set(point.attributes) == {sc.TIDEBASE_WORKFLOW, sc.TIDEBASE_STEP_OUTCOME}


async def test_step_spans_end_at_the_real_time_and_reach_the_processor_at_the_next_wait(
    tide, otel: Telemetry
):
    """A pure step's span end is deferred to the run's next wait (off the step's critical
    path) but keeps its real end time; a side-effecting step's span ends at once; everything
    is ended before `tide.run` returns."""
    seen: dict[str, list[str]] = {}

    async def pipeline(run, _):
        await run.step("pure", lambda: 1)
        after_pure = time.time_ns()
        seen["right after the pure step"] = [s.name for s in otel.spans()]
        await asyncio.sleep(0)  # the run waits: the backlog is done
        seen["after the next wait"] = [s.name for s in otel.spans()]
        await run.step("effect", lambda: 2, side_effects=["x.write"])
        seen["right after the effect step"] = [s.name for s in otel.spans()]
        await run.step("last", lambda: 3)
        return after_pure

    after_pure = await tide.run("deferred", pipeline, run_id=new_run_id())
    assert seen["right after the pure step"] == []
    assert seen["after the next wait"] == ["step pure"]
    assert seen["right after the effect step"] == ["step pure", "step effect"]
    names = [s.name for s in otel.spans()]
    assert sorted(names) == ["run deferred", "step effect", "step last", "step pure"]

    pure, effect = otel.one("step pure"), otel.one("step effect")
    assert pure.end_time <= after_pure < effect.start_time  # the real end, not the flush time
    for span in (pure, effect, otel.one("step last")):
        assert _attrs(span)[sc.TIDEBASE_STEP_OUTCOME] == "completed"
        assert _attrs(span)[sc.TIDEBASE_STEP_TRIES] == 1
        assert span.status.status_code == StatusCode.UNSET
    assert otel.metric_sum(sc.METRIC_TIDEBASE_STEPS, **{sc.TIDEBASE_STEP_OUTCOME: "completed"}) == 3


async def test_replay_links_to_the_executing_span_and_attempts_link(tide, otel: Telemetry):
    run_id = new_run_id()
    calls: list[str] = []

    async def pipeline(run, input):
        a = await run.step("a", lambda: calls.append("a") or 1)
        if run.attempt == 1:
            raise Crash("died after a")
        b = await run.step("b", lambda: calls.append("b") or 2)
        return a + b

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id)
    first_run = otel.one("run wf")
    first_a = otel.one("step a")
    assert first_run.status.status_code == StatusCode.ERROR
    assert _attrs(first_run)[sc.TIDEBASE_RUN_STATUS] == "failed"
    assert _attrs(first_run)[sc.ERROR_TYPE].endswith("Crash")
    assert [e.name for e in first_run.events] == ["exception"]
    otel.exporter.clear()

    assert await tide.run("wf", pipeline, run_id=run_id) == 3
    assert calls == ["a", "b"]
    second_run = otel.one("run wf")
    replayed = otel.one("step a")
    executed = otel.one("step b")

    # each attempt is its own trace; the replay is a child of the new run span...
    assert second_run.context.trace_id != first_run.context.trace_id
    assert replayed.parent.span_id == second_run.context.span_id
    assert replayed.context.trace_id == second_run.context.trace_id
    a = _attrs(replayed)
    assert a[sc.TIDEBASE_STEP_REPLAYED] is True
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "replayed"
    assert a[sc.TIDEBASE_RUN_ATTEMPT] == 2
    assert replayed.status.status_code == StatusCode.UNSET
    # ...linked to the span of the first attempt that executed it
    (link,) = replayed.links
    assert link.context.trace_id == first_a.context.trace_id
    assert link.context.span_id == first_a.context.span_id
    assert link.attributes[sc.TIDEBASE_LINK_TYPE] == "executed_by"
    assert _attrs(executed)[sc.TIDEBASE_STEP_REPLAYED] is False

    # the second attempt's run span links to the first attempt's
    assert _attrs(second_run)[sc.TIDEBASE_RUN_ATTEMPT] == 2
    (link,) = second_run.links
    assert (link.context.trace_id, link.context.span_id) == (
        first_run.context.trace_id,
        first_run.context.span_id,
    )
    assert link.attributes[sc.TIDEBASE_LINK_TYPE] == "previous_attempt"
    assert otel.metric_sum(sc.METRIC_TIDEBASE_STEPS, **{sc.TIDEBASE_STEP_OUTCOME: "replayed"}) == 1

    # a completed run invoked again: one more run span, no step spans, status already_completed
    otel.exporter.clear()
    assert await tide.run("wf", pipeline, run_id=run_id) == 3
    (again,) = otel.spans()
    assert _attrs(again)[sc.TIDEBASE_RUN_STATUS] == "already_completed"
    assert again.status.status_code == StatusCode.UNSET


async def test_unsampled_attempt_exports_nothing_counts_everything_and_resumes(tide, pg_url: str):
    """Sampling, as the README recommends for many trivial steps: an unsampled attempt's steps
    get non-recording spans and store no span refs, its metrics still count every step, and a
    sampled resume replays them with no link to follow (and links no previous attempt)."""
    run_id = new_run_id()

    async def pipeline(run, input):
        a = await run.step("a", lambda: 1)
        side = await run.step("side", lambda: 2, side_effects=["tickets.create"])
        if run.attempt == 1:
            raise Crash("died after side")
        b = await run.step("b", lambda: 3)
        return a + side + b

    with instrumented(sampler=ParentBased(ALWAYS_OFF)) as unsampled:
        with pytest.raises(Crash):
            await tide.run("wf", pipeline, run_id=run_id)
        assert unsampled.spans() == []
        completed = {sc.TIDEBASE_STEP_OUTCOME: "completed"}
        assert unsampled.metric_sum(sc.METRIC_TIDEBASE_STEPS, **completed) == 2
        assert unsampled.metric_count(sc.METRIC_TIDEBASE_STEP_DURATION, **completed) == 2
        failed = {sc.TIDEBASE_RUN_STATUS: "failed"}
        assert unsampled.metric_sum(sc.METRIC_TIDEBASE_RUNS, **failed) == 1
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT trace_id, span_id FROM steps WHERE run_id = $1", run_id)
        attempt = await conn.fetchrow(
            "SELECT trace_id, span_id FROM run_attempts WHERE run_id = $1", run_id
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(None, None), (None, None)]
    assert tuple(attempt) == (None, None)

    with instrumented() as sampled:
        assert await tide.run("wf", pipeline, run_id=run_id) == 6
        run_span = sampled.one("run wf")
        assert run_span.links == ()
        for name in ("a", "side"):
            replayed = sampled.one(f"step {name}")
            assert _attrs(replayed)[sc.TIDEBASE_STEP_OUTCOME] == "replayed"
            assert replayed.links == ()
            assert replayed.parent.span_id == run_span.context.span_id
        assert _attrs(sampled.one("step b"))[sc.TIDEBASE_STEP_OUTCOME] == "completed"


async def test_failed_step_has_error_status_exception_and_resume_decision(tide, otel: Telemetry):
    run_id = new_run_id()

    async def pipeline(run, _):
        return await run.step("divide", lambda: 1 / 0)

    with pytest.raises(ZeroDivisionError):
        await tide.run("wf", pipeline, run_id=run_id)
    step = otel.one("step divide")
    a = _attrs(step)
    assert step.status.status_code == StatusCode.ERROR
    assert "ZeroDivisionError" in step.status.description
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "failed"
    assert a[sc.TIDEBASE_STEP_RESUME_DECISION] == "safe_replay"
    assert a[sc.ERROR_TYPE] == "ZeroDivisionError"
    (event,) = step.events  # recorded once, with the try that raised
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ZeroDivisionError"
    assert event.attributes[sc.TIDEBASE_STEP_TRY] == 1
    assert event.attributes[sc.TIDEBASE_STEP_WILL_RETRY] is False
    assert event.attributes["exception.escaped"] == "True"  # it left the step
    run_span = otel.one("run wf")
    assert run_span.status.status_code == StatusCode.ERROR
    (run_event,) = run_span.events
    assert run_event.attributes["exception.escaped"] == "True"  # and tide.run


async def test_retried_step_is_one_span_with_an_event_per_failed_try(tide, otel: Telemetry):
    run_id = new_run_id()
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"try {len(tries)} failed")
        return "ok"

    async def pipeline(run, _):
        return await run.step("flaky", flaky, retries=2, retry_delay=0.001)

    assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
    step = otel.one("step flaky")
    a = _attrs(step)
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert a[sc.TIDEBASE_STEP_TRIES] == 3
    assert a[sc.TIDEBASE_STEP_MAX_RETRIES] == 2
    assert step.status.status_code == StatusCode.UNSET
    assert [(e.attributes[sc.TIDEBASE_STEP_TRY], e.attributes[sc.TIDEBASE_STEP_WILL_RETRY])
            for e in step.events] == [(1, True), (2, True)]  # fmt: skip
    # Retried tries' errors were handled by the step: they did not escape it.
    assert [e.attributes["exception.escaped"] for e in step.events] == ["False", "False"]
    steps = sc.METRIC_TIDEBASE_STEPS
    assert otel.metric_sum(steps, **{sc.TIDEBASE_STEP_OUTCOME: "retried"}) == 2
    assert otel.metric_sum(steps, **{sc.TIDEBASE_STEP_OUTCOME: "completed"}) == 1


async def test_manual_review_step_and_parked_step_on_reinvocation(tide, otel: Telemetry):
    run_id = new_run_id()

    def create_ticket():
        raise TimeoutError("did the ticket get created?")

    async def pipeline(run, _):
        return await run.step("ticket", create_ticket, side_effects=["ticket.create"])

    with pytest.raises(TimeoutError):
        await tide.run("wf", pipeline, run_id=run_id)
    step = otel.one("step ticket")
    a = _attrs(step)
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "manual_review"
    assert a[sc.TIDEBASE_STEP_RESUME_DECISION] == "manual_review"
    assert a[sc.ERROR_TYPE] == "TimeoutError"
    assert step.status.status_code == StatusCode.ERROR
    otel.exporter.clear()

    # re-invoked: the step is parked and does not run; its span says so
    with pytest.raises(StepNeedsReview):
        await tide.run("wf", pipeline, run_id=run_id)
    run_span = otel.one("run wf")
    parked = otel.one("step ticket")
    assert parked.parent.span_id == run_span.context.span_id
    a = _attrs(parked)
    assert a[sc.TIDEBASE_STEP_OUTCOME] == "manual_review"
    assert a[sc.TIDEBASE_STEP_TRIES] == 0
    assert a[sc.TIDEBASE_STEP_RESUME_DECISION] == "manual_review"
    assert a[sc.ERROR_TYPE] == "tidebase.errors.StepNeedsReview"
    # The same step attributes as a step that runs (the refusal knows the step's options).
    assert a[sc.TIDEBASE_STEP_SIDE_EFFECTS] == ("ticket.create",)
    assert a[sc.TIDEBASE_STEP_INPUT_HASH] == _attrs(step)[sc.TIDEBASE_STEP_INPUT_HASH]
    assert a[sc.TIDEBASE_RUN_ATTEMPT] == 2
    assert run_span.status.status_code == StatusCode.ERROR
    outcome = sc.TIDEBASE_STEP_OUTCOME
    assert otel.metric_sum(sc.METRIC_TIDEBASE_STEPS, **{outcome: "manual_review"}) == 2


async def test_a_step_enclosing_a_parked_step_is_refused_and_the_parked_step_gets_a_span(
    tide, otel: Telemetry
):
    run_id = new_run_id()

    def create_ticket():
        raise TimeoutError("did the ticket get created?")

    async def outer(run):
        return await run.step("ticket", create_ticket, side_effects=["ticket.create"])

    async def pipeline(run, _):
        return await run.step("triage", lambda: outer(run))

    with pytest.raises(TimeoutError):
        await tide.run("wf", pipeline, run_id=run_id)
    otel.exporter.clear()
    with pytest.raises(StepNeedsReview):
        await tide.run("wf", pipeline, run_id=run_id)
    run_span = otel.one("run wf")
    # The step the workflow called is refused, with its own attributes and no duration...
    triage = otel.one("step triage")
    assert triage.parent.span_id == run_span.context.span_id
    assert triage.start_time == triage.end_time
    assert _attrs(triage)[sc.TIDEBASE_STEP_OUTCOME] == "manual_review"
    assert _attrs(triage)[sc.TIDEBASE_STEP_TRIES] == 0
    assert "step 'triage' encloses it" in triage.status.description
    # ...and the parked step it encloses gets one too, with its recorded options.
    parked = otel.one("step ticket")
    assert parked.parent.span_id == run_span.context.span_id
    assert _attrs(parked)[sc.TIDEBASE_STEP_OUTCOME] == "manual_review"
    assert _attrs(parked)[sc.TIDEBASE_STEP_SIDE_EFFECTS] == ("ticket.create",)
    assert _attrs(parked)[sc.TIDEBASE_STEP_PARENT] == "triage"
    assert sc.TIDEBASE_STEP_INPUT_HASH in _attrs(parked)


async def test_step_failed_for_good_is_refused_with_its_options_on_the_span(tide, otel: Telemetry):
    run_id = new_run_id()

    async def pipeline(run, _):
        return await run.step("once", lambda: 1 / 0, replay="never")

    with pytest.raises(ZeroDivisionError):
        await tide.run("wf", pipeline, run_id=run_id)
    otel.exporter.clear()
    with pytest.raises(StepFailedPermanently):
        await tide.run("wf", pipeline, run_id=run_id)
    span = otel.one("step once")
    assert span.start_time == span.end_time  # nothing ran
    refused = _attrs(span)
    assert refused[sc.TIDEBASE_STEP_OUTCOME] == "failed"
    assert refused[sc.TIDEBASE_STEP_REPLAY_MODE] == "never"
    assert refused[sc.TIDEBASE_STEP_RESUME_DECISION] == "fail_hard"
    assert refused[sc.TIDEBASE_STEP_TRIES] == 0
    assert refused[sc.ERROR_TYPE] == "tidebase.errors.StepFailedPermanently"
    assert len(otel.named("step once")) == 1  # the hook and the attempt's end: one span


async def test_cancelled_run_ends_the_running_step_span(tide, otel: Telemetry, pg_url: str):
    run_id = new_run_id()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> int:
        started.set()
        await release.wait()
        return 1

    async def pipeline(run, _):
        return await run.step("slow", slow)

    task = asyncio.create_task(tide.run("wf", pipeline, run_id=run_id))
    await started.wait()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "UPDATE runs SET status = 'cancelled', cancel_reason = 'operator' WHERE id = $1",
            run_id,
        )
    finally:
        await conn.close()
    release.set()
    with pytest.raises(RunCancelled):
        await task
    step = otel.one("step slow")
    assert _attrs(step)[sc.TIDEBASE_STEP_OUTCOME] == "cancelled"
    assert _attrs(step)[sc.ERROR_TYPE] == "tidebase.errors.RunCancelled"
    assert step.status.status_code == StatusCode.ERROR
    assert _attrs(otel.one("run wf"))[sc.TIDEBASE_RUN_STATUS] == "cancelled"


async def test_interrupted_attempt_ends_open_step_spans(tide, otel: Telemetry):
    run_id = new_run_id()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def pipeline(run, _):
        return await run.step("forever", forever)

    task = asyncio.create_task(tide.run("wf", pipeline, run_id=run_id))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    step = otel.one("step forever")
    assert _attrs(step)[sc.TIDEBASE_STEP_OUTCOME] == "interrupted"
    assert step.status.status_code == StatusCode.ERROR
    assert _attrs(otel.one("run wf"))[sc.TIDEBASE_RUN_STATUS] == "interrupted"


async def test_run_span_nests_under_the_callers_span(tide, otel: Telemetry):
    async def pipeline(run, _):
        return await run.step("s", lambda: 1)

    with otel.tracer.start_as_current_span("queue job") as job:
        await tide.run("wf", pipeline, run_id=new_run_id())
    assert otel.one("run wf").parent.span_id == job.get_span_context().span_id


async def test_concurrent_runs_never_cross_parent(tide, otel: Telemetry):
    async def pipeline(run, input):
        total = 0
        for i in range(3):

            async def work(i: int = i) -> int:
                await asyncio.sleep(0.001 * (input["n"] % 3))
                return i

            total += await run.step(f"s{i}", work)
        return total

    run_ids = [new_run_id() for _ in range(8)]
    results = await asyncio.gather(
        *(tide.run("wf", pipeline, run_id=rid, input={"n": n}) for n, rid in enumerate(run_ids))
    )
    assert results == [3] * 8
    runs = {_attrs(s)[sc.TIDEBASE_RUN_ID]: s for s in otel.run_spans()}
    assert set(runs) == set(run_ids)
    assert len({s.context.trace_id for s in runs.values()}) == 8
    steps = otel.step_spans()
    assert len(steps) == 24
    for step in steps:
        own_run = runs[_attrs(step)[sc.TIDEBASE_RUN_ID]]
        assert step.parent.span_id == own_run.context.span_id
        assert step.context.trace_id == own_run.context.trace_id


async def test_uninstrument_stops_spans(tide):
    with instrumented() as telemetry:
        pass
    assert global_observers() == ()

    async def pipeline(run, _):
        return await run.step("s", lambda: 1)

    await tide.run("wf", pipeline, run_id=new_run_id())
    assert telemetry.spans() == []
