"""Durable runs through the public API against real Postgres: replay, resume, the contract."""

from __future__ import annotations

import asyncio

import pytest
from conftest import new_run_id

from tidebase import (
    DuplicateStep,
    InputMismatch,
    RunInputMismatch,
    SerializationError,
    StepFailedPermanently,
    StepNeedsReview,
    TidebaseError,
    WorkflowMismatch,
)


class Crash(Exception):
    """Stands in for a process dying between steps."""


async def test_completed_steps_replay_after_a_crash(tide):
    run_id = new_run_id()
    calls: list[str] = []

    async def pipeline(run, input):
        a = await run.step("a", lambda: calls.append("a") or {"n": input["n"]}, input=input)
        if input.get("crash") and run.attempt == 1:
            raise Crash("died after a")
        b = await run.step("b", lambda: calls.append("b") or a["n"] + 1)
        return {"a": a, "b": b}

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id, input={"n": 1, "crash": True})
    result = await tide.run("wf", pipeline, run_id=run_id, input={"n": 1, "crash": True})
    assert result == {"a": {"n": 1}, "b": 2}
    assert calls == ["a", "b"]

    # A completed run returns its stored result without calling the function.
    async def never(run, input):
        raise AssertionError("must not run")

    assert await tide.run("wf", never, run_id=run_id) == result
    detail = await tide.get_run(run_id)
    assert detail["run"]["status"] == "completed"
    assert detail["run"]["attempt"] == 2
    assert [a["status"] for a in detail["attempts"]] == ["failed", "completed"]
    seqs = [e["seq"] for e in detail["events"]]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_replay_costs_no_round_trips(tide):
    run_id = new_run_id()

    async def pipeline(run, _):
        return [await run.step(f"s{i}", lambda i=i: i) for i in range(20)]

    with pytest.raises(Crash):

        async def crashing(run, input):
            await pipeline(run, input)
            raise Crash()

        await tide.run("wf", crashing, run_id=run_id)

    store = await tide.store()
    original = store.complete_step
    writes = 0

    async def counting(*args, **kwargs):
        nonlocal writes
        writes += 1
        return await original(*args, **kwargs)

    store.complete_step = counting
    try:
        assert await tide.run("wf", pipeline, run_id=run_id) == list(range(20))
    finally:
        store.complete_step = original
    assert writes == 0


async def test_changed_input_is_rejected_naming_both_hashes(tide):
    run_id = new_run_id()
    prompt = {"version": 1}

    async def pipeline(run, input):
        await run.step("research", lambda: "findings", input={"prompt": prompt["version"]})
        if run.attempt == 1:
            raise Crash()

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id, input={"topic": "a"})
    prompt["version"] = 2  # e.g. the code changed between the crash and the resume
    with pytest.raises(InputMismatch) as info:
        await tide.run("wf", pipeline, run_id=run_id, input={"topic": "a"})
    message = str(info.value)
    assert "'research'" in message
    assert info.value.expected_hash in message and info.value.actual_hash in message
    assert info.value.expected_hash != info.value.actual_hash
    # nothing stored was lost
    detail = await tide.get_run(run_id)
    assert [s["status"] for s in detail["steps"]] == ["completed"]


async def test_reused_step_name_in_one_attempt_is_an_error(tide):
    async def pipeline(run, _):
        await run.step("same", lambda: 1)
        await run.step("same", lambda: 2)

    with pytest.raises(DuplicateStep, match="'same'"):
        await tide.run("wf", pipeline)


async def test_unserializable_output_fails_at_record_time_naming_step_and_type(tide):
    run_id = new_run_id()

    async def pipeline(run, _):
        await run.step("ok", lambda: 1)
        await run.step("bad", lambda: {"when": object()})

    with pytest.raises(SerializationError) as info:
        await tide.run("wf", pipeline, run_id=run_id)
    assert "step 'bad'" in str(info.value) and "object" in str(info.value)
    detail = await tide.get_run(run_id)
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["ok"]["status"] == "completed"
    assert steps["bad"]["status"] == "failed"


async def test_unserializable_input_is_rejected_before_running(tide):
    ran = []

    async def pipeline(run, _):
        await run.step("s", lambda: ran.append(1), input={"x": object()})

    with pytest.raises(SerializationError, match="input of step 's'"):
        await tide.run("wf", pipeline)
    assert ran == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"side_effects": "ticket.create"}, TypeError),
        ({"side_effects": [1]}, TypeError),
        ({"idempotency_key": 5}, TypeError),
        ({"retries": -1}, ValueError),
        ({"replay": "sometimes"}, ValueError),
    ],
)
async def test_bad_step_options_name_the_step(tide, kwargs, error):
    async def pipeline(run, _):
        await run.step("bad-options", lambda: 1, **kwargs)

    with pytest.raises(error, match="bad-options"):
        await tide.run("wf", pipeline)


async def test_bad_names(tide):
    async def pipeline(run, _):
        await run.step("", lambda: 1)

    with pytest.raises(ValueError, match="step name"):
        await tide.run("wf", pipeline)
    with pytest.raises(ValueError, match="workflow name"):
        await tide.run("", pipeline)


async def test_run_id_of_another_workflow_is_refused(tide):
    run_id = new_run_id()
    await tide.run("one", lambda run, _: 1, run_id=run_id)
    with pytest.raises(WorkflowMismatch, match="'one'"):
        await tide.run("two", lambda run, _: 2, run_id=run_id)


async def test_retries_with_backoff_then_success(tide):
    tries = []

    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("transient")
        return "ok"

    async def pipeline(run, _):
        return await run.step("flaky", flaky, retries=3, retry_delay=0.01)

    run_id = new_run_id()
    assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
    assert len(tries) == 3
    detail = await tide.get_run(run_id)
    step = detail["steps"][0]
    assert step["status"] == "completed"
    failed_events = [e for e in detail["events"] if e["type"] == "step.failed"]
    assert [e["payload"]["status"] for e in failed_events] == ["failed_retryable"] * 2


async def test_safe_failure_reexecutes_on_reinvocation(tide):
    run_id = new_run_id()
    tries = []

    def sometimes():
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("first time fails")
        return "second"

    async def pipeline(run, _):
        return await run.step("s", sometimes)

    with pytest.raises(RuntimeError):
        await tide.run("wf", pipeline, run_id=run_id)
    detail = await tide.get_run(run_id)
    assert detail["steps"][0]["status"] == "failed"
    assert detail["steps"][0]["resume_decision"] == "safe_replay"
    assert await tide.run("wf", pipeline, run_id=run_id) == "second"


async def test_external_write_without_key_parks_in_manual_review(tide):
    run_id = new_run_id()
    calls = []

    def create_ticket():
        calls.append(1)
        raise TimeoutError("did the ticket get created?")

    async def pipeline(run, _):
        return await run.step("ticket", create_ticket, side_effects=["ticket.create"])

    with pytest.raises(TimeoutError) as info:
        await tide.run("wf", pipeline, run_id=run_id)
    assert "tidebase runs resolve" in "".join(info.value.__notes__)
    detail = await tide.get_run(run_id)
    assert detail["steps"][0]["status"] == "manual_review"
    assert detail["run"]["status"] == "failed"

    # Re-invocation does not run it again...
    with pytest.raises(StepNeedsReview) as parked:
        await tide.run("wf", pipeline, run_id=run_id)
    assert f"tidebase runs resolve {run_id} ticket --retry" in str(parked.value)
    assert calls == [1]
    assert (await tide.get_run(run_id))["run"]["failure_class"] == "manual_review"

    # ...until an operator records what happened.
    store = await tide.store()
    await store.resolve_step(run_id, "ticket", output={"ticket": "T-1"})
    assert await tide.run("wf", pipeline, run_id=run_id) == {"ticket": "T-1"}
    assert calls == [1]


async def test_a_workflow_wrapping_a_parked_steps_error_still_parks_the_run(tide):
    """`raise PipelineError(...) from e` around a parked step: the run is listed as waiting
    for review (and a queue would not requeue it), not as an ordinary failure."""
    run_id = new_run_id()

    class PipelineError(Exception):
        pass

    def create_ticket():
        raise TimeoutError("did the ticket get created?")

    async def pipeline(run, _):
        try:
            return await run.step("ticket", create_ticket, side_effects=["ticket.create"])
        except TimeoutError as exc:
            raise PipelineError("ticket step failed") from exc

    async def refused(run, _):
        try:
            return await run.step("ticket", create_ticket, side_effects=["ticket.create"])
        except StepNeedsReview:
            raise PipelineError("still waiting for review") from None

    async def in_a_task_group(run, _):
        async with asyncio.TaskGroup() as group:
            group.create_task(run.step("other", lambda: 1))
            group.create_task(run.step("ticket", create_ticket, side_effects=["ticket.create"]))

    with pytest.raises(PipelineError):
        await tide.run("wf", pipeline, run_id=run_id)
    assert (await tide.get_run(run_id))["run"]["failure_class"] == "manual_review"
    with pytest.raises(PipelineError):
        await tide.run("wf", refused, run_id=run_id)
    assert (await tide.get_run(run_id))["run"]["failure_class"] == "manual_review"

    # The step's error kept and an unrelated one raised, or the step raising a TidebaseError.
    class ToolRefused(TidebaseError):
        pass

    async def unchained(run, _):
        results = await asyncio.gather(
            run.step("ticket", create_ticket, side_effects=["ticket.create"]),
            return_exceptions=True,
        )
        raise RuntimeError(f"pipeline failed: {results[0]!r}")

    def refuse():
        raise ToolRefused("the ticket system refused")

    async def tidebase_error(run, _):
        await run.step("ticket", refuse, side_effects=["ticket.create"])

    for workflow, error in ((unchained, RuntimeError), (tidebase_error, ToolRefused)):
        other = new_run_id()
        for _ in range(2):  # parked, then refused (StepNeedsReview, unless gathered)
            with pytest.raises((error, StepNeedsReview)):
                await tide.run("wf", workflow, run_id=other)
            assert (await tide.get_run(other))["run"]["failure_class"] == "manual_review"

    # A TaskGroup raises an ExceptionGroup holding the step's error.
    grouped = new_run_id()
    for _ in range(2):  # parked, then refused
        with pytest.raises(ExceptionGroup):
            await tide.run("wf", in_a_task_group, run_id=grouped)
        assert (await tide.get_run(grouped))["run"]["failure_class"] == "manual_review"


async def test_resolve_retry_allows_another_execution(tide):
    run_id = new_run_id()
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no")
        return "yes"

    async def pipeline(run, _):
        return await run.step("s", step, replay="manual")

    with pytest.raises(RuntimeError):
        await tide.run("wf", pipeline, run_id=run_id)
    with pytest.raises(StepNeedsReview):
        await tide.run("wf", pipeline, run_id=run_id)
    await (await tide.store()).resolve_step(run_id, "s", retry=True)
    assert await tide.run("wf", pipeline, run_id=run_id) == "yes"


async def test_replay_never_fails_hard_and_is_not_reexecuted(tide):
    run_id = new_run_id()
    calls = []

    async def pipeline(run, _):
        return await run.step("s", lambda: calls.append(1) or 1 / 0, replay="never")

    with pytest.raises(ZeroDivisionError):
        await tide.run("wf", pipeline, run_id=run_id)
    with pytest.raises(StepFailedPermanently):
        await tide.run("wf", pipeline, run_id=run_id)
    assert calls == [1]


async def test_concurrent_steps_with_gather(tide):
    run_id = new_run_id()
    calls = []

    async def work(i):
        calls.append(i)
        await asyncio.sleep(0.01)
        return i * i

    async def pipeline(run, input):
        results = await asyncio.gather(
            *(run.step(f"sq-{i}", lambda i=i: work(i), input=i) for i in range(10))
        )
        if input["crash"] and run.attempt == 1:
            raise Crash()
        return results

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id, input={"crash": True})
    assert await tide.run("wf", pipeline, run_id=run_id) == [i * i for i in range(10)]
    assert sorted(calls) == list(range(10))
    detail = await tide.get_run(run_id)
    seqs = [e["seq"] for e in detail["events"]]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_nested_steps_inner_side_effect_replays_when_outer_reexecutes(tide):
    run_id = new_run_id()
    tickets = []
    outer_runs = []

    async def pipeline(run, _):
        async def agent_run():
            outer_runs.append(1)
            ticket = await run.step(
                "create_ticket",
                lambda: tickets.append("T") or {"id": f"T-{len(tickets)}"},
                side_effects=["ticket.create"],
                idempotency_key="ticket-1",
            )
            if len(outer_runs) == 1:
                raise Crash("process died inside the agent run")
            return {"answer": "done", "ticket": ticket}

        return await run.step("agent", agent_run)

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id)
    result = await tide.run("wf", pipeline, run_id=run_id)
    assert result == {"answer": "done", "ticket": {"id": "T-1"}}
    assert tickets == ["T"]
    assert len(outer_runs) == 2
    steps = {s["name"]: s for s in (await tide.get_run(run_id))["steps"]}
    assert steps["create_ticket"]["parent_name"] == "agent"


async def test_state_set_patch_get_and_history(tide):
    run_id = new_run_id()

    async def pipeline(run, _):
        await run.state_set({"phase": "research", "n": 1})
        await run.state_patch({"phase": "draft"})
        with pytest.raises(TypeError):
            await run.state_patch(["not", "a", "dict"])
        return await run.state_get()

    assert await tide.run("wf", pipeline, run_id=run_id) == {"phase": "draft", "n": 1}
    detail = await tide.get_run(run_id)
    assert detail["state"]["version"] == 2


async def test_usage_is_never_counted_twice(tide):
    run_id = new_run_id()

    async def pipeline(run, input):
        async def research():
            await run.usage_record(
                provider="openai",
                model="gpt-4.1-mini",
                input_tokens=100,
                output_tokens=20,
                cost_usd=0.001,
            )
            return "findings"

        await run.step("research", research)
        # outside a step: deterministic key per record, so re-running the function dedupes it
        await run.usage_record(kind="search", quantity=1, unit="query", cost_usd=0.005)
        if run.attempt == 1:
            raise Crash()
        return "ok"

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id)
    assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
    usage = (await tide.get_run(run_id))["usage"]
    assert len(usage) == 2
    assert sum(u["total_tokens"] or 0 for u in usage) == 120
    assert float(sum(u["cost_usd"] for u in usage)) == pytest.approx(0.006)


async def test_usage_record_rejects_bad_values(tide):
    async def pipeline(run, _):
        with pytest.raises(ValueError, match="input_tokens"):
            await run.usage_record(input_tokens=-1)
        with pytest.raises(ValueError, match="cost_usd"):
            await run.usage_record(cost_usd="cheap")
        # Integers beyond any float: a ValueError naming the field (not an OverflowError),
        # and a message that does not print thousands of digits.
        with pytest.raises(ValueError, match=r"quantity .* got an integer of about 401 digits"):
            await run.usage_record(quantity=10**400)
        with pytest.raises(ValueError, match=r"input_tokens .* about 5001 digits"):
            await run.usage_record(input_tokens=10**5000)
        for bad in (float("nan"), float("inf"), -(10**400)):
            with pytest.raises(ValueError, match="cost_usd"):
                await run.usage_record(cost_usd=bad)
        return "ok"

    run_id = new_run_id()
    assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
    assert (await tide.get_run(run_id))["usage"] == []


async def test_an_observer_prices_records_given_without_a_cost(make_client):
    """`AttemptTracker.usage_cost` prices a record before it is written (tidebase_otel's price
    table uses it); a broken pricer leaves the record unpriced and the run unharmed."""
    from tidebase.hooks import AttemptTracker, RunObserver

    class Pricer(RunObserver):
        def __init__(self, price):
            self.price = price

        def attempt(self, info):
            price = self.price

            class Tracker(AttemptTracker):
                def usage_cost(self, usage):
                    return price(usage)

            return Tracker()

    def boom(usage):
        raise RuntimeError("price service down")

    async def pipeline(run, _):
        await run.usage_record(model="m", input_tokens=1000, output_tokens=10)
        await run.usage_record(model="m", input_tokens=1, cost_usd=0.25)  # given: kept
        return "ok"

    for price, expected in (
        (lambda u: u.input_tokens * 1e-6, [0.001, 0.25]),
        (boom, [None, 0.25]),
        (lambda u: "cheap", [None, 0.25]),
        (lambda u: float("nan"), [None, 0.25]),
    ):
        tide = make_client(observers=[Pricer(price)])
        run_id = new_run_id()
        assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
        usage = (await tide.get_run(run_id))["usage"]
        costs = [None if u["cost_usd"] is None else float(u["cost_usd"]) for u in usage]
        assert costs == pytest.approx(expected)


async def test_resuming_with_another_run_input_is_refused(tide):
    run_id = new_run_id()

    async def pipeline(run, input):
        await run.step("s", lambda: input["v"])
        if run.attempt == 1:
            raise Crash()
        return input["v"]

    with pytest.raises(Crash):
        await tide.run("wf", pipeline, run_id=run_id, input={"v": 1})
    with pytest.raises(RunInputMismatch, match=run_id):
        await tide.run("wf", pipeline, run_id=run_id, input={"v": 2})
    assert await tide.run("wf", pipeline, run_id=run_id) == 1  # None: the stored input

    # Completed: the same input (or none) returns the stored result; another input is refused
    # rather than answered with the result of the first.
    assert await tide.run("wf", pipeline, run_id=run_id, input={"v": 1}) == 1
    assert await tide.run("wf", pipeline, run_id=run_id) == 1
    with pytest.raises(RunInputMismatch, match=run_id):
        await tide.run("wf", pipeline, run_id=run_id, input={"v": 3})


async def test_a_completed_run_compares_its_input_as_postgres_does(tide):
    """Postgres stores 1e16 as 10000000000000000 and -0.0 as 0: the same input must still
    return the stored result, with the rule the store applies to unfinished runs (numbers by
    value, booleans apart from numbers)."""
    run_id = new_run_id()
    floats = {"big": 1e16, "huge": 1.5e300, "neg_zero": -0.0, "wide": 123456789012345678.0}
    first = {**floats, "one": 1, "flag": True, "list": [0.1, 2]}

    async def pipeline(run, input):
        return "done"

    assert await tide.run("wf", pipeline, run_id=run_id, input=first) == "done"
    assert await tide.run("wf", pipeline, run_id=run_id, input=dict(first)) == "done"
    assert await tide.run("wf", pipeline, run_id=run_id, input={**first, "one": 1.0}) == "done"
    for changed in ({"flag": 1}, {"one": True}, {"big": 1e16 + 2}, {"list": [0.1, 2, 3]}):
        with pytest.raises(RunInputMismatch, match=run_id):
            await tide.run("wf", pipeline, run_id=run_id, input={**first, **changed})
