"""Run leases: exclusive, fenced, and safe against real process death (kill -9 and SIGSTOP)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import new_run_id

from tidebase import LeaseLost, RunLeased, StepNeedsReview

WORKER = Path(__file__).with_name("_worker.py")


def start_worker(pg_url: str, run_id: str, log: Path, mode: str, **env: str):
    return subprocess.Popen(
        [sys.executable, str(WORKER), pg_url, run_id, str(log), mode],
        env={**os.environ, "TIDEBASE_LEASE_MS": "1500", **env},
    )


def lines(log: Path) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []


async def wait_for(log: Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while line not in lines(log):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not logged; log: {lines(log)}")
        await asyncio.sleep(0.05)


async def test_second_worker_is_refused_naming_the_holder(tide, make_client):
    run_id = new_run_id()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder(run, _):
        entered.set()
        await release.wait()
        return "first"

    task = asyncio.create_task(tide.run("wf", holder, run_id=run_id))
    await entered.wait()
    other = make_client()
    with pytest.raises(RunLeased) as info:
        await other.run("wf", holder, run_id=run_id)
    assert info.value.owner and info.value.owner in str(info.value)
    assert str(info.value.expires_at) in str(info.value)
    release.set()
    assert await task == "first"


async def test_two_workers_racing_one_run_execute_each_step_once(pg_url, make_client):
    run_id = new_run_id()
    executions: Counter[str] = Counter()
    rng = random.Random(7)

    async def pipeline(run, _):
        for i in range(12):
            await run.step(f"s{i}", lambda i=i: executions.update([f"s{i}"]) or i)
            await asyncio.sleep(0)
            if rng.random() < 0.25:
                raise RuntimeError("simulated crash between steps")
        return "done"

    async def worker(client):
        while True:
            try:
                return await client.run("race", pipeline, run_id=run_id)
            except (RunLeased, RuntimeError):
                await asyncio.sleep(0.005)

    results = await asyncio.gather(*(worker(make_client()) for _ in range(4)))
    assert results == ["done"] * 4
    assert executions == Counter({f"s{i}": 1 for i in range(12)})


async def test_kill_9_mid_step_resumes_without_reexecuting_completed_steps(
    pg_url, make_client, tmp_path
):
    run_id = new_run_id()
    log = tmp_path / "log"
    worker = start_worker(pg_url, run_id, log, "pure")
    await wait_for(log, "slow-started")
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    # The dead worker's lease is still live: a new worker is refused until it expires.
    resumer = start_worker(pg_url, run_id, log, "pure", SLOW_SECONDS="0")
    assert resumer.wait(timeout=60) in (0, 1)
    if "done" not in lines(log):
        await asyncio.sleep(1.6)
        resumer = start_worker(pg_url, run_id, log, "pure", SLOW_SECONDS="0")
        assert resumer.wait(timeout=60) == 0
    counts = Counter(lines(log))
    assert counts["executed one"] == 1, lines(log)
    assert counts["executed slow"] == 2  # pure step: re-executed, it never completed
    assert counts["executed two"] == 1
    detail = await make_client().get_run(run_id)
    assert detail["run"]["status"] == "completed"
    assert [a["status"] for a in detail["attempts"]][0] == "abandoned"


async def test_kill_9_during_external_write_parks_in_manual_review(pg_url, make_client, tmp_path):
    run_id = new_run_id()
    log = tmp_path / "log"
    worker = start_worker(pg_url, run_id, log, "effect")
    await wait_for(log, "slow-started")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    await asyncio.sleep(1.6)  # lease expiry
    resumer = start_worker(pg_url, run_id, log, "effect", SLOW_SECONDS="0")
    assert resumer.wait(timeout=60) == 4
    counts = Counter(lines(log))
    assert counts["executed slow"] == 1  # never run blindly again
    assert counts["needs-review"] == 1
    detail = await make_client().get_run(run_id)
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["slow"]["status"] == "manual_review"
    assert "died" in steps["slow"]["error"]["message"]
    with pytest.raises(StepNeedsReview):

        async def pipeline(run, _):
            await run.step("one", lambda: None)
            await run.step("slow", lambda: None, side_effects=["ticket.create"])

        await make_client().run("crash-test", pipeline, run_id=run_id)


async def test_zombie_after_lease_expiry_is_fenced_and_writes_nothing(
    pg_url, make_client, tmp_path
):
    run_id = new_run_id()
    log = tmp_path / "log"
    zombie = start_worker(pg_url, run_id, log, "pure", SLOW_SECONDS="3")
    await wait_for(log, "slow-started")
    zombie.send_signal(signal.SIGSTOP)  # a long GC pause / frozen VM
    try:
        await asyncio.sleep(1.8)  # its lease expires; a new worker takes over
        taker = make_client(lease_ms=1500)

        async def pipeline(run, _):
            await run.step("one", lambda: {"one": 1})
            await run.step("slow", lambda: {"slow": "taker"})
            return await run.step("two", lambda: 2)

        assert await taker.run("crash-test", pipeline, run_id=run_id) == 2
        before = await taker.get_run(run_id)
    finally:
        zombie.send_signal(signal.SIGCONT)
    assert zombie.wait(timeout=30) == 3  # LeaseLost
    after = await make_client().get_run(run_id)
    assert after["events"] == before["events"]
    assert after["steps"] == before["steps"]
    steps = {s["name"]: s for s in after["steps"]}
    assert steps["slow"]["output"] == {"slow": "taker"}
    assert "executed two" not in lines(log)


async def test_lease_lost_error_type(tide, make_client, pg_url):
    """A worker whose lease was taken gets LeaseLost on its next write."""
    run_id = new_run_id()
    go_on = asyncio.Event()
    slow = make_client(lease_ms=1000)

    async def pipeline(run, _):
        await run.step("first", lambda: 1)
        await go_on.wait()
        await run.step("second", lambda: 2)

    task = asyncio.create_task(slow.run("wf", pipeline, run_id=run_id))
    await asyncio.sleep(0.2)
    # Force expiry (as if heartbeats stopped), then take the run over.
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    await conn.execute(
        "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1", run_id
    )
    await conn.close()

    async def takeover(run, _):
        await run.step("first", lambda: 1)
        return "taken"

    assert await tide.run("wf", takeover, run_id=run_id) == "taken"
    go_on.set()
    with pytest.raises(LeaseLost):
        await task


async def test_lease_is_renewed_while_a_long_step_runs(make_client):
    """A step longer than the lease keeps the run: the heartbeat renews it in the background."""
    run_id = new_run_id()
    holder = make_client(lease_ms=1000)
    entered = asyncio.Event()

    async def long_step():
        entered.set()
        await asyncio.sleep(2.5)
        return "done"

    async def pipeline(run, _):
        return await run.step("long", long_step)

    task = asyncio.create_task(holder.run("wf", pipeline, run_id=run_id))
    await entered.wait()
    await asyncio.sleep(1.8)  # well past one lease length
    with pytest.raises(RunLeased):
        await make_client().run("wf", pipeline, run_id=run_id)
    assert await task == "done"


async def test_concurrent_usage_records_with_one_key_are_written_once(tide):
    run_id = new_run_id()

    async def pipeline(run, _):
        results = await asyncio.gather(
            *(run.usage_record(key="invoice-7", input_tokens=10, cost_usd=0.5) for _ in range(20))
        )
        return sum(results)

    assert await tide.run("wf", pipeline, run_id=run_id) == 1
    usage = (await tide.get_run(run_id))["usage"]
    assert len(usage) == 1
