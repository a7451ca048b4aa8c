"""Queue worker processes (`tidebase worker`): kill -9 mid-step then reconciler requeue and
resume elsewhere; SIGTERM graceful shutdown (finish within the grace period, else release)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

from _queue_helpers import eventually, make_ready, reconciler, run_row

from tidebase.aio import AsyncTidebase

TESTS = Path(__file__).parent


def start_worker(pg_url: str, queue: str, log: Path, *args: str, **env: str):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidebase.cli",
            "worker",
            "_queue_app:tide",
            "--queue",
            queue,
            *args,
        ],
        cwd=TESTS,
        env={
            **os.environ,
            "TIDEBASE_URL": pg_url,
            "TIDEBASE_LEASE_MS": "1500",
            "TIDEBASE_RECONCILE_MS": "0",
            "QUEUE_LOG": str(log),
            **env,
        },
    )


def lines(log: Path) -> list[str]:
    return [x.rsplit(" ", 1)[0] for x in log.read_text().splitlines()] if log.exists() else []


async def enqueue(pg_url: str, queue: str, mode: str) -> str:
    async with AsyncTidebase(pg_url) as tide:
        return (
            await tide.enqueue("queue-crash", queue=queue, input={"mode": mode}, max_attempts=3)
        ).run_id


async def kill_mid_step_and_resume(pg_url: str, tmp_path: Path, mode: str) -> tuple[str, Path]:
    queue, log = f"q_{uuid.uuid4().hex[:8]}", tmp_path / "log"
    run_id = await enqueue(pg_url, queue, mode)
    first = start_worker(pg_url, queue, log)
    try:
        await eventually(lambda: "slow-started" in lines(log), timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait()
        async with reconciler(pg_url) as rec:
            assert run_id not in (await rec.tick()).get("requeued", [])  # lease still live
            await asyncio.sleep(1.6)

            async def requeued():  # by this tick, or by another replica's (the test server)
                await rec.tick()
                return (await run_row(pg_url, run_id))["status"] == "queued"

            await eventually(requeued, timeout=10, interval=0.2)
        row = await run_row(pg_url, run_id)
        assert row["status"] == "queued" and row["attempt"] == 1
        await make_ready(pg_url, run_id)  # skip the 5 s backoff
        second = start_worker(pg_url, queue, log, SLOW_SECONDS="0")
        try:

            async def settled():
                return (await run_row(pg_url, run_id))["status"] in ("completed", "failed")

            await eventually(settled, timeout=30)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    return run_id, log


async def test_kill_9_mid_step_requeued_by_reconciler_and_resumed_by_another_worker(
    pg_url, tmp_path
):
    run_id, log = await kill_mid_step_and_resume(pg_url, tmp_path, "pure")
    counts = Counter(lines(log))
    assert counts["executed one"] == 1  # completed steps never re-execute
    assert counts["executed slow"] == 2  # pure and never completed: executed again
    assert counts["executed two"] == 1
    row = await run_row(pg_url, run_id)
    assert row["status"] == "completed" and row["attempt"] == 2


async def test_kill_9_during_external_write_parks_in_manual_review(pg_url, tmp_path):
    run_id, log = await kill_mid_step_and_resume(pg_url, tmp_path, "effect")
    counts = Counter(lines(log))
    assert counts["executed one"] == 1
    assert counts["executed slow"] == 1  # never run blindly again
    assert counts["executed two"] == 0
    row = await run_row(pg_url, run_id)
    assert row["status"] == "failed" and row["failure_class"] == "manual_review"
    async with AsyncTidebase(pg_url) as tide:
        steps = {s["name"]: s["status"] for s in (await tide.get_run(run_id))["steps"]}
    assert steps["slow"] == "manual_review"


async def test_sigterm_finishes_current_work_within_the_grace_period(pg_url, tmp_path):
    queue, log = f"q_{uuid.uuid4().hex[:8]}", tmp_path / "log"
    run_id = await enqueue(pg_url, queue, "pure")
    worker = start_worker(pg_url, queue, log, "--grace-period", "20", SLOW_SECONDS="1")
    await eventually(lambda: "slow-started" in lines(log), timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert "slow-finished" in lines(log)
    assert (await run_row(pg_url, run_id))["status"] == "completed"


async def test_sigterm_past_the_grace_period_releases_the_run_to_another_worker_at_once(
    pg_url, tmp_path
):
    queue, log = f"q_{uuid.uuid4().hex[:8]}", tmp_path / "log"
    run_id = await enqueue(pg_url, queue, "pure")
    worker = start_worker(pg_url, queue, log, "--grace-period", "0.3", SLOW_SECONDS="30")
    await eventually(lambda: "slow-started" in lines(log), timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    row = await run_row(pg_url, run_id)
    assert row["status"] == "queued" and row["lease_owner"] is None  # released, ready now
    other = start_worker(pg_url, queue, log, SLOW_SECONDS="0")
    try:

        async def completed():
            return (await run_row(pg_url, run_id))["status"] == "completed"

        await eventually(completed, timeout=10)  # no lease expiry, no backoff to wait for
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=30)
    counts = Counter(lines(log))
    assert counts["executed one"] == 1 and counts["executed slow"] == 2
