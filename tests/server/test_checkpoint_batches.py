"""`POST /runs/:id/steps/checkpoints` (the pipelined checkpoints extension): a batch is fenced
by the run lease and written whole or not at all; the SDK splits a batch the server finds too
large."""

from __future__ import annotations

import asyncpg
import httpx
from conftest import new_run_id

from tidebase.aio import AsyncTidebase
from tidebase.server.background import BackgroundServer

from .wire_client import begin_run, create_run


def _item(name: str, input_hash: str = "h", output: object = None) -> dict:
    return {"name": name, "inputHash": input_hash, "output": output}


async def _step_names(db: asyncpg.Connection, run_id: str) -> list[str]:
    rows = await db.fetch("SELECT name FROM steps WHERE run_id = $1 ORDER BY name", run_id)
    return [r["name"] for r in rows]


async def test_a_batch_is_written_whole_in_order_with_gap_free_events(api: httpx.AsyncClient, db):
    run = await create_run(api, "batches")
    await begin_run(api, run["id"], "w1")
    items = [_item(f"s{i:02d}", output={"i": i}) for i in range(30)]
    response = await api.post(
        f"/runs/{run['id']}/steps/checkpoints", json={"leaseOwner": "w1", "checkpoints": items}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"written": 30}
    assert await _step_names(db, run["id"]) == [f"s{i:02d}" for i in range(30)]
    seqs = [
        r["seq"]
        for r in await db.fetch("SELECT seq FROM events WHERE run_id = $1 ORDER BY seq", run["id"])
    ]
    assert seqs == list(range(1, len(seqs) + 1))
    # the same batch again (a retried request) changes nothing
    again = await api.post(
        f"/runs/{run['id']}/steps/checkpoints", json={"leaseOwner": "w1", "checkpoints": items}
    )
    assert again.status_code == 200
    assert await _step_names(db, run["id"]) == [f"s{i:02d}" for i in range(30)]


async def test_one_refused_item_stores_none_of_the_batch(api: httpx.AsyncClient, db):
    run = await create_run(api, "batches")
    await begin_run(api, run["id"], "w1")
    first = await api.post(
        f"/runs/{run['id']}/steps/checkpoints",
        json={"leaseOwner": "w1", "checkpoints": [_item("done", "h1")]},
    )
    assert first.status_code == 200
    # item 2 names a completed step with another input: an input mismatch in the database
    batch = [_item("new-a"), _item("done", "h2"), _item("new-b")]
    response = await api.post(
        f"/runs/{run['id']}/steps/checkpoints", json={"leaseOwner": "w1", "checkpoints": batch}
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "input_mismatch"
    assert response.json()["step"] == "done"  # named, though the batch had three
    assert await _step_names(db, run["id"]) == ["done"]


async def test_a_batch_is_fenced_by_the_run_lease(api: httpx.AsyncClient, db):
    run = await create_run(api, "batches")
    await begin_run(api, run["id"], "w1")
    response = await api.post(
        f"/runs/{run['id']}/steps/checkpoints",
        json={"leaseOwner": "intruder", "checkpoints": [_item("a"), _item("b")]},
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "lease_lost"
    assert await _step_names(db, run["id"]) == []


async def test_the_sdk_splits_a_batch_larger_than_the_body_limit(server: BackgroundServer, db):
    # the `server` fixture refuses bodies over 256 KiB; 24 outputs of 30 KB are ~720 KB
    tide = AsyncTidebase(server.url, pipeline_checkpoints=True)
    run_id = new_run_id()

    async def pipeline(run, _):
        for i in range(24):
            await run.step(f"big{i:02d}", lambda i=i: f"{i}:" + "x" * 30_000)
        return "ok"

    try:
        assert await tide.run("big-batches", pipeline, run_id=run_id) == "ok"
    finally:
        await tide.close()
    assert await _step_names(db, run_id) == [f"big{i:02d}" for i in range(24)]
