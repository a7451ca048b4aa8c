"""Bad input gets a clear error naming what was wrong, and loses nothing already stored."""

from __future__ import annotations

import asyncio

import pytest
from conftest import new_run_id

from tidebase import (
    AsyncTidebase,
    AttemptEnded,
    ConfigurationError,
    SerializationError,
    TidebaseError,
)
from tidebase.cli import main as cli_main


class Crash(Exception):
    """Stands in for a workflow failing."""


async def test_nul_characters_round_trip_in_outputs_state_and_errors(tide):
    run_id = new_run_id()

    async def pipeline(run, _):
        out = await run.step("nul", lambda: {"text": "a\x00b", "list": ["\x00"]})
        await run.state_set({"x": "c\x00d"})
        return out, await run.state_get()

    assert await tide.run("wf", pipeline, run_id=run_id) == (
        {"text": "a\x00b", "list": ["\x00"]},
        {"x": "c\x00d"},
    )

    async def failing(run, _):
        await run.step("boom", lambda: (_ for _ in ()).throw(ValueError("bad\x00byte")))

    with pytest.raises(ValueError, match="bad\x00byte"):  # the user's own exception
        await tide.run("wf2", failing, run_id=new_run_id())


async def test_lone_surrogates_and_deep_values_name_the_step(tide):
    async def surrogate(run, _):
        await run.step("s1", lambda: {"t": "\ud800"})

    with pytest.raises(SerializationError, match=r"step 's1'.*t.*surrogate"):
        await tide.run("wf", surrogate)

    cyclic: list = []
    cyclic.append(cyclic)

    async def deep(run, _):
        await run.step("s2", lambda: cyclic)

    with pytest.raises(SerializationError, match=r"step 's2'.*cycle"):
        await tide.run("wf", deep)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cost_usd": float("nan")}, "cost_usd"),
        ({"cost_usd": float("inf")}, "cost_usd"),
        ({"quantity": float("nan")}, "quantity"),
        ({"input_tokens": 10**20}, "input_tokens"),
        ({"kind": 5}, "kind"),
        ({"label": "a\x00b"}, "label"),
    ],
)
async def test_usage_record_validation(tide, kwargs, field):
    async def pipeline(run, _):
        await run.usage_record(**kwargs)

    with pytest.raises(ValueError, match=field):
        await tide.run("wf", pipeline)


@pytest.mark.parametrize("lease_ms", [-1, 0, 50, True, "abc", 10**12])
def test_lease_ms_is_validated(pg_url, lease_ms):
    with pytest.raises(ConfigurationError, match="lease_ms"):
        AsyncTidebase(pg_url, lease_ms=lease_ms)


def test_lease_ms_env_is_validated(pg_url, monkeypatch):
    monkeypatch.setenv("TIDEBASE_LEASE_MS", "99999999999999")
    with pytest.raises(ConfigurationError, match="TIDEBASE_LEASE_MS"):
        AsyncTidebase(pg_url)


@pytest.mark.parametrize(
    "name",
    ["", "   ", "a\x00b", "tab\tname", "x" * 201, None, 5],
)
async def test_bad_step_names(tide, name):
    async def pipeline(run, _):
        await run.step(name, lambda: 1)

    with pytest.raises(ValueError, match="step name"):
        await tide.run("wf", pipeline)


async def test_side_effects_must_be_a_list_of_strings(tide):
    async def pipeline(run, _):
        await run.step("s", lambda: 1, side_effects=True)

    with pytest.raises(TypeError, match="step 's': side_effects"):
        await tide.run("wf", pipeline)


@pytest.mark.parametrize("side_effects", [None, ["tickets.create"]])
async def test_a_step_fn_that_is_not_callable_is_refused_before_anything_is_stored(
    tide, side_effects
):
    run_id = new_run_id()
    calls: list[str] = []

    def first():
        calls.append("first")
        return 1

    async def broken(run, _):
        await run.step("first", first)
        await run.step("ticket", 5, side_effects=side_effects)

    with pytest.raises(TypeError, match=r"step 'ticket': fn must be a callable.*got int"):
        await tide.run("wf", broken, run_id=run_id)

    # Nothing was recorded for the refused step: fixed code runs it (no manual review, even
    # with side effects), and the step before it replays.
    async def fixed(run, _):
        return await run.step("first", first), await run.step(
            "ticket", lambda: "T-1", side_effects=side_effects
        )

    assert await tide.run("wf", fixed, run_id=run_id) == (1, "T-1")
    assert calls == ["first"]


async def test_a_coroutine_passed_as_fn_gets_a_hint_and_is_closed(tide, recwarn):
    async def create_ticket():
        return "T-1"

    async def broken(run, _):
        await run.step("ticket", create_ticket(), side_effects=["tickets.create"])

    with pytest.raises(
        TypeError, match=r"got coroutine; pass the function, not its call \(lambda: create_ticket"
    ):
        await tide.run("wf", broken, run_id=new_run_id())
    # Closed, so Python does not also warn that it was never awaited.
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_state_set_none_is_json_null(tide):
    async def pipeline(run, _):
        await run.state_set(None)
        return await run.state_get()

    assert await tide.run("wf", pipeline) is None


async def test_cancelled_task_releases_the_lease(tide):
    run_id = new_run_id()
    entered = asyncio.Event()

    async def pipeline(run, _):
        await run.step("a", lambda: 1)
        entered.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(tide.run("wf", pipeline, run_id=run_id))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def resumed(run, _):
        await run.step("a", lambda: 1 / 0)  # replays
        return "resumed at once"

    assert await tide.run("wf", resumed, run_id=run_id) == "resumed at once"
    attempts = (await tide.get_run(run_id))["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "completed"]


async def test_resolve_is_refused_while_a_worker_holds_the_run(tide):
    run_id = new_run_id()
    entered, release = asyncio.Event(), asyncio.Event()

    async def effect():
        entered.set()
        await release.wait()
        return {"ticket": "real"}

    async def pipeline(run, _):
        return await run.step("a", effect, side_effects=["ticket.create"])

    task = asyncio.create_task(tide.run("wf", pipeline, run_id=run_id))
    await entered.wait()
    store = await tide.store()
    with pytest.raises(TidebaseError, match="being executed by"):
        await store.resolve_step(run_id, "a", output={"ticket": "forced"})
    release.set()
    assert await task == {"ticket": "real"}
    with pytest.raises(TidebaseError, match="no step named 'a' waiting"):
        await store.resolve_step(run_id, "a", retry=True)


@pytest.mark.parametrize("pipelined", [False, True], ids=["checkpoint-each", "pipelined"])
async def test_a_step_called_after_its_attempt_ended_says_so_and_records_nothing(
    make_client, pipelined
):
    tide = make_client(pipeline_checkpoints=pipelined)
    run_id = new_run_id()
    kept: list = []

    async def slow(tag: str):
        await asyncio.sleep(0.3)
        return tag

    async def pipeline(run, _):
        kept.append(run)
        await run.step("first", lambda: 1)
        # Step tasks nobody awaits: still running when the workflow returns. Their results
        # are not checkpointed (with pipelining, the pure one used to return silently).
        kept.append(asyncio.ensure_future(run.step("orphan", lambda: slow("pure"))))
        kept.append(
            asyncio.ensure_future(
                run.step("orphan-write", lambda: slow("w"), side_effects=["mail.send"])
            )
        )
        return "done"

    assert await tide.run("wf", pipeline, run_id=run_id) == "done"
    run, orphan, orphan_write = kept
    with pytest.raises(AttemptEnded, match=r"attempt 1 has already ended.*await every step"):
        await run.step("after", lambda: 2)
    # A kept run reusing a name is told the attempt ended, not that the name is taken.
    with pytest.raises(AttemptEnded, match="so step 'first' was not recorded"):
        await run.step("first", lambda: 2)
    with pytest.raises(AttemptEnded, match=r"so run\.state_set was not recorded"):
        await run.state_set({"late": True})
    with pytest.raises(AttemptEnded, match="so step 'orphan' was not recorded"):
        await orphan
    with pytest.raises(AttemptEnded, match="so step 'orphan-write' was not recorded"):
        await orphan_write
    detail = await tide.get_run(run_id)
    assert detail["run"]["status"] == "completed"
    done = {s["name"]: s["status"] for s in detail["steps"]}
    assert done.get("first") == "completed" and "after" not in done
    assert done.get("orphan") != "completed" and done.get("orphan-write") != "completed"
    assert await (await tide.store()).read_state(run_id) is None


@pytest.mark.parametrize("pipelined", [False, True], ids=["checkpoint-each", "pipelined"])
@pytest.mark.parametrize("workflow_fails", [False, True], ids=["returns", "raises"])
async def test_a_step_task_left_behind_by_a_workflow_that_returns_at_once_records_nothing(
    make_client, pipelined, workflow_fails
):
    """The attempt ends the moment the workflow function returns, before the step task it
    scheduled gets to run: the step must not be checkpointed (nor replayed next attempt)."""
    tide = make_client(pipeline_checkpoints=pipelined)

    async def quick():
        return "v"

    for _ in range(5):
        run_id = new_run_id()
        tasks: list = []

        async def pipeline(run, _, tasks=tasks):
            tasks.append(asyncio.ensure_future(run.step("orphan", lambda: "v")))
            tasks.append(asyncio.ensure_future(run.step("orphan-async", quick)))
            if workflow_fails:
                raise Crash("the workflow fails without awaiting its steps")
            return "done"

        if workflow_fails:
            with pytest.raises(Crash):
                await tide.run("wf", pipeline, run_id=run_id)
        else:
            assert await tide.run("wf", pipeline, run_id=run_id) == "done"
        for task in tasks:
            with pytest.raises(AttemptEnded):
                await task
        steps = {s["name"]: s["status"] for s in (await tide.get_run(run_id))["steps"]}
        assert "completed" not in steps.values(), steps


async def test_a_step_task_whose_function_finished_before_the_workflow_returned_is_recorded(
    tide,
):
    """The other side of the rule: not awaited, but its function returned while the attempt
    was alive (its checkpoint write still on its way): it is recorded and replays."""
    run_id = new_run_id()
    tasks: list = []

    async def pipeline(run, _):
        tasks.append(asyncio.ensure_future(run.step("early", lambda: {"v": 1})))
        await asyncio.sleep(0)  # the task runs its function now
        return "done"

    assert await tide.run("wf", pipeline, run_id=run_id) == "done"
    assert await tasks[0] == {"v": 1}
    steps = {s["name"]: s["status"] for s in (await tide.get_run(run_id))["steps"]}
    assert steps == {"early": "completed"}


async def _park_a_step(tide: AsyncTidebase, workflow: str, step: str) -> str:
    """A run whose step with side effects failed: parked for manual review. Its run id."""
    run_id = new_run_id()

    def effect():
        raise TimeoutError("did it happen?")

    async def pipeline(run, _):
        await run.step(step, effect, side_effects=["tickets.create"])

    with pytest.raises(TimeoutError):
        await tide.run(workflow, pipeline, run_id=run_id)
    return run_id


async def test_runs_list_names_a_parked_run_with_the_word_its_filter_takes(
    tide, tidebase_url, monkeypatch, capsys
):
    run_id = await _park_a_step(tide, "parked-wf", "ticket")
    monkeypatch.setenv("TIDEBASE_URL", tidebase_url)
    code = await asyncio.to_thread(
        cli_main, ["runs", "list", "--status", "manual_review", "--workflow", "parked-wf"]
    )
    assert code == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if run_id in ln]
    assert line.split()[2] == "manual_review"


async def test_runs_show_says_a_step_was_resolved_by_an_operator(
    tide, tidebase_url, monkeypatch, capsys
):
    run_id = await _park_a_step(tide, "resolved-wf", "email")
    monkeypatch.setenv("TIDEBASE_URL", tidebase_url)
    args = ["runs", "resolve", run_id, "email", "--output", '"sent"']
    assert await asyncio.to_thread(cli_main, args) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["runs", "show", run_id]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("email")]
    assert "output given by an operator" in line and "executed" not in line


def test_a_bad_url_is_blamed_on_where_it_came_from(monkeypatch):
    monkeypatch.delenv("TIDEBASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"^url must be a postgresql:// URL"):
        AsyncTidebase("ftp://x")
    monkeypatch.setenv("TIDEBASE_URL", "ftp://y")
    with pytest.raises(ConfigurationError, match=r"^TIDEBASE_URL must be"):
        AsyncTidebase()


def test_worker_target_without_that_attribute_says_so(capsys):
    code = cli_main(["worker", "tidebase:nothere", "--queue", "q"])
    assert code != 0
    assert "'tidebase' has no attribute 'nothere'" in capsys.readouterr().err
