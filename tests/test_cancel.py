"""Cancellation (one-way, seen mid-step by heartbeat) and deadline cancellation. Both modes."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from _queue_helpers import eventually, reconciler
from conftest import new_run_id

from tidebase import RunAlreadyCompleted, RunCancelled
from tidebase.cli import main as cli_main


async def test_cancel_during_a_step_stops_the_workflow_promptly(make_client):
    worker = make_client(lease_ms=1500)
    operator = make_client()
    run_id = new_run_id()
    started = asyncio.Event()
    seen: list[str] = []

    async def pipeline(run, _):
        await run.step("first", lambda: 1)

        async def long_step():
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled in step")
                raise
            seen.append("step finished")  # must not happen

        await run.step("long", long_step)
        seen.append("after step")
        return "done"

    task = asyncio.create_task(worker.run("cancellable", pipeline, run_id=run_id))
    await started.wait()
    t0 = time.monotonic()
    run = await operator.cancel(run_id, reason="user asked", actor="ops")
    assert run["status"] == "cancelled" and run["cancelReason"] == "user asked"
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - t0 < 3  # within a heartbeat (lease/3) or so
    assert seen == ["cancelled in step"]
    detail = await operator.get_run(run_id)
    assert detail["run"]["status"] == "cancelled"
    assert detail["run"]["cancel_actor"] == "ops"
    assert "long" not in {s["name"] for s in detail["steps"] if s["status"] == "completed"}
    # one-way: a new invocation is refused
    with pytest.raises(RunCancelled):
        await worker.run("cancellable", pipeline, run_id=run_id)


async def test_complete_or_fail_after_cancel_never_resurrects_the_run(make_client):
    client = make_client()
    store = await client.store()
    for finish in ("complete", "fail"):
        run_id = new_run_id()
        begun = await store.begin_run(run_id, "wf", None, "owner-1", 60_000, create=True, span=None)
        assert begun.outcome == "begun"
        await client.cancel(run_id, reason="stop")
        with pytest.raises(RunCancelled):
            if finish == "complete":
                await store.complete_run(run_id, "owner-1", {"late": True})
            else:
                await store.fail_run(run_id, "owner-1", {"message": "late"}, None)
        run = (await client.get_run(run_id))["run"]
        assert run["status"] == "cancelled" and run["result"] is None


async def test_cancel_is_idempotent_and_refused_for_completed_runs(tide):
    run_id = new_run_id()
    await tide.run("wf", lambda run, _: 1, run_id=run_id)
    with pytest.raises(RunAlreadyCompleted):
        await tide.cancel(run_id)
    queued = await tide.enqueue("wf", queue=f"q_{uuid.uuid4().hex[:8]}")
    first = await tide.cancel(queued.run_id, reason="a")
    second = await tide.cancel(queued.run_id, reason="b")
    assert first["cancelledAt"] == second["cancelledAt"] and second["cancelReason"] == "a"


async def test_deadline_cancels_queued_and_running_runs(tide, pg_url, make_client):
    queue = f"q_{uuid.uuid4().hex[:8]}"
    waiting = await tide.enqueue("wf", queue=queue, delay=60, deadline=0.2)
    worker = make_client(lease_ms=1500)
    started = asyncio.Event()

    @worker.workflow("slow-deadline")
    async def slow(run, _):
        async def forever():
            started.set()
            await asyncio.sleep(30)

        await run.step("forever", forever)

    running = await tide.enqueue("slow-deadline", queue=queue, deadline=1.0)
    work = asyncio.create_task(worker.work(queue, reconcile=False, handle_signals=False))
    await started.wait()
    await asyncio.sleep(1.1)
    async with reconciler(pg_url) as rec:

        async def both_cancelled():  # this tick, or another replica's (the test server's)
            await rec.tick()
            runs = [(await tide.get_run(i))["run"] for i in (waiting.run_id, running.run_id)]
            return all(r["status"] == "cancelled" for r in runs)

        await eventually(both_cancelled, timeout=10, interval=0.1)
    for run_id in (waiting.run_id, running.run_id):
        run = (await tide.get_run(run_id))["run"]
        assert run["status"] == "cancelled" and run["cancel_reason"] == "deadline"
    await asyncio.sleep(1.0)  # the worker's heartbeat sees the cancel and stops the run
    worker.stop_work()
    await asyncio.wait_for(work, 10)


async def test_cli_runs_cancel(tide, monkeypatch, capsys, tidebase_url):
    run_id = new_run_id()
    queued = await tide.enqueue("wf", queue="cli-q")
    run_id = queued.run_id
    monkeypatch.setenv("TIDEBASE_URL", tidebase_url)
    code = await asyncio.to_thread(cli_main, ["runs", "cancel", run_id, "--reason", "cli test"])
    assert code == 0
    assert "cancelled" in capsys.readouterr().out
    assert (await tide.get_run(run_id))["run"]["cancel_reason"] == "cli test"
