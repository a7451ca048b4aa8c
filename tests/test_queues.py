"""Queues: enqueue with exact dedupe, disjoint claims, priority order, retries with backoff,
concurrency and rate caps under competing workers. Both modes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import asyncpg
import pytest
from _queue_helpers import make_ready, run_row

from tidebase import Enqueued


def qname() -> str:
    return f"q_{uuid.uuid4().hex[:10]}"


async def test_enqueue_then_work_executes_the_registered_workflow(tide):
    queue = qname()
    calls = []

    @tide.workflow("greet")
    async def greet(run, input):
        hello = await run.step(
            "hello", lambda: calls.append(input["name"]) or f"hi {input['name']}"
        )
        return {"said": hello}

    queued = await tide.enqueue("greet", queue=queue, input={"name": "ada"})
    assert isinstance(queued, Enqueued) and not queued.deduplicated
    assert queued.run["status"] == "queued" and queued.run["queue"] == queue
    await tide.work(queue, until_idle=True, handle_signals=False)
    detail = await tide.get_run(queued.run_id)
    assert detail["run"]["status"] == "completed"
    assert calls == ["ada"]
    assert [s["name"] for s in detail["steps"]] == ["hello"]
    types = [e["type"] for e in detail["events"]]
    assert types[:3] == ["run.created", "run.enqueued", "run.claimed"]
    assert "run.completed" in types


async def test_dedupe_is_exact_under_concurrent_enqueues(tide, make_client):
    queue = qname()
    clients = [tide, *(make_client() for _ in range(3))]
    results = await asyncio.gather(
        *(clients[i % 4].enqueue("wf", queue=queue, dedupe_key="job-1") for i in range(24))
    )
    assert len({r.run_id for r in results}) == 1
    assert sum(not r.deduplicated for r in results) == 1
    other = await tide.enqueue("wf", queue=queue, dedupe_key="job-2")
    assert other.run_id != results[0].run_id


async def test_dedupe_key_is_free_again_once_the_run_finished(tide):
    queue = qname()

    @tide.workflow("once")
    async def once(run, input):
        return 1

    first = await tide.enqueue("once", queue=queue, dedupe_key="k")
    await tide.work(queue, until_idle=True, handle_signals=False)
    second = await tide.enqueue("once", queue=queue, dedupe_key="k")
    assert second.run_id != first.run_id and not second.deduplicated


async def test_concurrent_claimers_receive_disjoint_runs(tide, make_client):
    queue = qname()
    ids = {(await tide.enqueue("wf", queue=queue)).run_id for _ in range(30)}
    stores = [await make_client().store() for _ in range(6)]
    claims = await asyncio.gather(
        *(s.claim([queue], f"owner-{i}", 4, 60_000) for i, s in enumerate(stores * 2))
    )
    claimed = [run["id"] for batch in claims for run in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == ids
    assert all(run["status"] == "running" and run["attempt"] == 1 for b in claims for run in b)


async def test_claims_by_priority_then_time_and_not_before_run_at(tide):
    queue = qname()
    low = await tide.enqueue("wf", queue=queue, priority=0)
    high = await tide.enqueue("wf", queue=queue, priority=5)
    later = await tide.enqueue("wf", queue=queue, priority=9, delay=60)
    future = await tide.enqueue(
        "wf", queue=queue, priority=9, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    store = await tide.store()
    runs = await store.claim([queue], "o", 10, 60_000)
    assert [r["id"] for r in runs] == [high.run_id, low.run_id]
    assert later.run_id not in {r["id"] for r in runs} and future.run["status"] == "queued"


async def test_failed_run_is_requeued_with_backoff_until_max_attempts(tide, pg_url):
    queue = qname()
    tries = []

    @tide.workflow("flaky")
    async def flaky(run, input):
        tries.append(run.attempt)
        raise RuntimeError(f"boom {run.attempt}")

    queued = await tide.enqueue("flaky", queue=queue, max_attempts=2)
    await tide.work(queue, until_idle=True, handle_signals=False)
    row = await run_row(pg_url, queued.run_id)
    assert row["status"] == "queued" and row["attempt"] == 1
    backoff = (row["run_at"] - row["updated_at"]).total_seconds()
    assert 4.5 < backoff < 5.5  # 5 s * 2^(attempt-1)
    await tide.work(queue, until_idle=True, handle_signals=False)
    assert tries == [1]  # not ready yet
    await make_ready(pg_url, queued.run_id)
    await tide.work(queue, until_idle=True, handle_signals=False)
    row = await run_row(pg_url, queued.run_id)
    assert tries == [1, 2]
    assert row["status"] == "failed" and row["failure_class"] == "max_retries"
    assert json.loads(row["error"])["message"] == "boom 2"


async def test_until_idle_does_not_return_while_a_ready_run_is_only_locked_for_a_moment(
    tide, pg_url
):
    """Claims skip rows another transaction holds (SKIP LOCKED). `until_idle` used to take
    that empty claim for idleness and return with a ready run left (seen under load)."""
    queue = qname()
    ran = []

    @tide.workflow("held")
    async def held(run, input):
        ran.append(run.run_id)
        return "ok"

    queued = await tide.enqueue("held", queue=queue)
    conn = await asyncpg.connect(pg_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", queued.run_id)

        async def release_soon():
            await asyncio.sleep(0.08)
            await transaction.rollback()

        releaser = asyncio.create_task(release_soon())
        await tide.work(queue, until_idle=True, handle_signals=False, poll_interval=0.05)
        await releaser
    finally:
        await conn.close()
    assert ran == [queued.run_id]


async def test_a_run_without_a_registered_workflow_fails_clearly(tide):
    queue = qname()
    queued = await tide.enqueue("nobody-registered-this", queue=queue)
    await tide.work(queue, until_idle=True, handle_signals=False)
    run = (await tide.get_run(queued.run_id))["run"]
    assert run["status"] == "failed"
    assert "no workflow registered" in run["error"]["message"]


async def test_concurrency_cap_holds_under_competing_workers(tide, make_client):
    queue = qname()
    await tide.configure_queue(queue, concurrency=2)
    running = 0
    peak = 0

    async def slow(run, input):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.25)
        running -= 1
        return input

    workers = [make_client() for _ in range(3)]
    for w in workers:
        w.workflow("capped")(slow)
    ids = [(await tide.enqueue("capped", queue=queue, input=i)).run_id for i in range(8)]
    await asyncio.gather(
        *(
            w.work(queue, concurrency=3, poll_interval=0.05, until_idle=True, handle_signals=False)
            for w in workers
        )
    )
    # until_idle may stop a worker while others hold the cap: finish what is left
    await workers[0].work(
        queue, concurrency=3, poll_interval=0.05, until_idle=True, handle_signals=False
    )
    assert peak == 2
    statuses = [(await tide.get_run(i))["run"]["status"] for i in ids]
    assert statuses == ["completed"] * 8


async def test_rate_limit_holds_under_competing_workers(tide, make_client):
    queue = qname()
    config = await tide.configure_queue(queue, rate_per_minute=3)
    assert config["ratePerMinute"] == 3 and config["concurrency"] is None

    async def quick(run, input):
        return input

    workers = [make_client() for _ in range(3)]
    for w in workers:
        w.workflow("rated")(quick)
    ids = [(await tide.enqueue("rated", queue=queue, input=i)).run_id for i in range(7)]
    await asyncio.gather(
        *(w.work(queue, concurrency=4, until_idle=True, handle_signals=False) for w in workers)
    )
    statuses = [(await tide.get_run(i))["run"]["status"] for i in ids]
    assert statuses.count("completed") == 3 and statuses.count("queued") == 4
    listed = {q["queue"]: q for q in await tide.queues()}[queue]
    assert listed["counts"] == {"completed": 3, "queued": 4}
    assert listed["config"]["ratePerMinute"] == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"priority": 1.5},
        {"delay": -1},
        {"run_at": dt.datetime(2030, 1, 1)},  # naive
        {"recovery_webhook": "ftp://x"},
        {"queue": ""},
        {"delay": 5, "run_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},  # both
    ],
)
async def test_enqueue_rejects_bad_arguments(tide, kwargs):
    with pytest.raises((ValueError, TypeError)):
        await tide.enqueue("wf", **{"queue": "q", **kwargs})


async def test_resolving_a_parked_queue_run_requeues_it(tide):
    queue = qname()
    writes = []

    @tide.workflow("parks")
    async def parks(run, _):
        def write():
            writes.append(1)
            raise TimeoutError("created or not?")

        return await run.step("write", write, side_effects=["tickets.create"])

    queued = await tide.enqueue("parks", queue=queue, max_attempts=3)
    await tide.work(queue, until_idle=True, handle_signals=False)
    detail = await tide.get_run(queued.run_id)
    assert (detail["run"]["status"], detail["run"]["failure_class"]) == ("failed", "manual_review")
    assert writes == [1]  # parked: not retried blindly although attempts are left

    store = await tide.store()
    await store.resolve_step(queued.run_id, "write", output={"ticket": 7})
    assert (await tide.get_run(queued.run_id))["run"]["status"] == "queued"
    await tide.work(queue, until_idle=True, handle_signals=False)
    detail = await tide.get_run(queued.run_id)
    assert detail["run"]["status"] == "completed"
    assert detail["run"]["result"] == {"ticket": 7}
    assert writes == [1]
