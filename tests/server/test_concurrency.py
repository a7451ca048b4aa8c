"""Concurrency probes for every lease, uniqueness and ordering promise of the HTTP API, with the
requests spread over two server replicas (two pools) sharing one database."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tidebase.server.background import BackgroundServer

from .wire_client import begin_run, create_run, detail

N = 12


@pytest.fixture
async def clients(
    api: httpx.AsyncClient, replica: BackgroundServer
) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as other:
        yield [api, other]


async def test_racing_step_begins_execute_exactly_once(clients) -> None:
    run = await create_run(clients[0])
    await begin_run(clients[0], run["id"])
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(
                f"/runs/{run['id']}/steps/begin",
                json={"name": "contested", "inputHash": "h", "leaseOwner": f"w{i}"},
            )
            for i in range(N)
        )
    )
    actions = Counter(r.json()["action"] for r in responses)
    assert actions == {"execute": 1, "locked": N - 1}
    events = (await detail(clients[0], run["id"]))["events"]
    assert [e["type"] for e in events].count("step.started") == 1


async def test_racing_sdk_checkpoints_write_one_row(clients) -> None:
    """The fast path: the same checkpoint sent twice at once (a retried request) is one row."""
    begun = await clients[0].post(
        "/runs/run-cp-" + str(id(clients)) + "/begin",
        json={"workflowName": "w", "create": True, "leaseOwner": "o"},
    )
    run_id = begun.json()["run"]["id"]
    body = {"leaseOwner": "o", "name": "s", "inputHash": "h", "output": {"v": 1}}
    responses = await asyncio.gather(
        *(clients[i % 2].post(f"/runs/{run_id}/steps/checkpoint", json=body) for i in range(N))
    )
    actions = Counter(r.json()["action"] for r in responses)
    assert actions == {"completed": 1, "return": N - 1}
    assert len((await detail(clients[0], run_id))["steps"]) == 1


async def test_concurrent_event_writers_get_gap_free_seqs(clients, db: asyncpg.Connection) -> None:
    run = await create_run(clients[0])
    writes = []
    for i in range(40):
        client = clients[i % 2]
        if i % 3 == 0:
            writes.append(client.put(f"/runs/{run['id']}/state", json={"value": {"i": i}}))
        elif i % 3 == 1:
            writes.append(client.post(f"/runs/{run['id']}/usage", json={"quantity": i}))
        else:
            writes.append(
                client.post(f"/runs/{run['id']}/snapshots", json={"label": f"l{i}", "state": i})
            )
    responses = await asyncio.gather(*writes)
    assert all(r.status_code == 200 for r in responses)
    seqs = [
        r["seq"]
        for r in await db.fetch("SELECT seq FROM events WHERE run_id = $1 ORDER BY seq", run["id"])
    ]
    assert seqs == list(range(1, 42))  # run.created + 40 writes, no gap, no duplicate
    assert await db.fetchval("SELECT event_seq FROM runs WHERE id = $1", run["id"]) == 41
    state = (await detail(clients[0], run["id"]))["state"]
    assert state["version"] == 14


async def test_concurrent_gate_resolves_exactly_one_wins(clients) -> None:
    run = await create_run(clients[0])
    gate = (
        await clients[0].post(f"/runs/{run['id']}/gates/begin", json={"name": "g", "prompt": "p"})
    ).json()["gate"]
    decisions = ["approved", "rejected", "canceled"]
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(
                f"/runs/{run['id']}/gates/{gate['id']}/resolve",
                json={
                    "token": gate["resolveToken"],
                    "decision": decisions[i % 3],
                    "actor": f"a{i}",
                },
            )
            for i in range(N)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 409: N - 1}
    winner = next(r.json()["gate"] for r in responses if r.status_code == 200)
    final = (await clients[1].get(f"/runs/{run['id']}/gates/{gate['id']}")).json()["gate"]
    assert (final["decision"], final["actor"]) == (winner["decision"], winner["actor"])
    events = (await detail(clients[0], run["id"]))["events"]
    assert [e["type"] for e in events].count("gate.resolved") == 1


async def test_concurrent_gate_begins_create_one_gate(clients) -> None:
    run = await create_run(clients[0])
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(f"/runs/{run['id']}/gates/begin", json={"name": "g", "prompt": "p"})
            for i in range(N)
        )
    )
    assert len({r.json()["gate"]["id"] for r in responses}) == 1


async def test_concurrent_child_creation_makes_one_child(clients, db) -> None:
    parent = await create_run(clients[0])
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(
                f"/runs/{parent['id']}/children",
                json={"name": "only-child", "workflowName": "child"},
            )
            for i in range(N)
        )
    )
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert Counter(b["created"] for b in bodies) == {True: 1, False: N - 1}
    assert len({b["run"]["id"] for b in bodies}) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM run_edges WHERE parent_run_id = $1", parent["id"])
        == 1
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM runs WHERE metadata->>'parentRunId' = $1", parent["id"]
        )
        == 1
    )


async def test_racing_run_begins_one_lease_holder(clients) -> None:
    run = await create_run(clients[0])
    responses = await asyncio.gather(
        *(
            clients[i % 2].post(f"/runs/{run['id']}/begin", headers={"x-tidebase-worker": f"w{i}"})
            for i in range(N)
        )
    )
    assert Counter(r.status_code for r in responses) == {200: 1, 409: N - 1}
    holder = next(r.json()["leaseOwner"] for r in responses if r.status_code == 200)
    assert {r.json()["leaseOwner"] for r in responses if r.status_code == 409} == {holder}
