"""Gates (begin/get/resolve exactly once, token required) and children (idempotent per edge)."""

from __future__ import annotations

import httpx

from .wire_client import begin_run, create_run, detail

GATE_KEYS = {
    "id",
    "runId",
    "name",
    "prompt",
    "data",
    "status",
    "decision",
    "actor",
    "decisionPayload",
    "capability",
    "channels",
    "resolveToken",
    "createdAt",
    "updatedAt",
    "resolvedAt",
}


async def test_gate_flow(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    begun = await api.post(
        f"/runs/{run['id']}/gates/begin",
        json={"name": "approve", "prompt": "Send it?", "data": {"draft": "hi"}, "timeoutMs": 60000},
    )
    assert begun.status_code == 200
    assert begun.json()["action"] == "wait"
    gate = begun.json()["gate"]
    assert set(gate) >= GATE_KEYS
    assert gate["status"] == "pending" and gate["id"].startswith("gate_")
    assert len(gate["resolveToken"]) >= 32
    again = (
        await api.post(
            f"/runs/{run['id']}/gates/begin", json={"name": "approve", "prompt": "ignored"}
        )
    ).json()
    assert again["gate"]["id"] == gate["id"] and again["gate"]["prompt"] == "Send it?"
    polled = (await api.get(f"/runs/{run['id']}/gates/{gate['id']}")).json()
    assert polled["gate"]["status"] == "pending" and polled["runStatus"] == "running"
    bad = await api.post(
        f"/runs/{run['id']}/gates/{gate['id']}/resolve",
        json={"token": "wrong", "decision": "approved"},
    )
    assert bad.status_code == 409
    assert bad.json() == {"error": "gate not found, already resolved, or invalid token"}
    resolved = await api.post(
        f"/runs/{run['id']}/gates/{gate['id']}/resolve",
        json={
            "token": gate["resolveToken"],
            "decision": "approved",
            "actor": "alice",
            "payload": {"note": "ship it"},
        },
    )
    assert resolved.status_code == 200
    done = resolved.json()["gate"]
    assert done["status"] == "approved" and done["decision"] == "approved"
    assert done["actor"] == "alice" and done["decisionPayload"] == {"note": "ship it"}
    assert done["resolvedAt"]
    twice = await api.post(
        f"/runs/{run['id']}/gates/{gate['id']}/resolve",
        json={"token": gate["resolveToken"], "decision": "rejected"},
    )
    assert twice.status_code == 409
    returned = (
        await api.post(
            f"/runs/{run['id']}/gates/begin", json={"name": "approve", "prompt": "Send it?"}
        )
    ).json()
    assert returned["action"] == "return" and returned["gate"]["decision"] == "approved"
    types = [e["type"] for e in (await detail(api, run["id"]))["events"]]
    assert types.count("gate.created") == 1 and types.count("gate.resolved") == 1


async def test_gate_errors(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    missing = await api.get(f"/runs/{run['id']}/gates/gate_nope")
    assert missing.status_code == 404 and missing.json() == {"error": "gate not found"}
    no_token = await api.post(
        f"/runs/{run['id']}/gates/gate_x/resolve", json={"decision": "approved"}
    )
    assert no_token.status_code == 400
    bad_decision = await api.post(
        f"/runs/{run['id']}/gates/gate_x/resolve", json={"token": "t", "decision": "maybe"}
    )
    assert bad_decision.status_code == 400
    assert bad_decision.json()["issues"][0]["path"] == ["decision"]
    unknown_run = await api.post("/runs/run_nope/gates/begin", json={"name": "g", "prompt": "p"})
    assert unknown_run.status_code == 404
    await api.post(f"/runs/{run['id']}/cancel", json={})
    cancelled = await api.post(f"/runs/{run['id']}/gates/begin", json={"name": "g", "prompt": "p"})
    assert cancelled.status_code == 409 and cancelled.json()["code"] == "run_cancelled"


async def test_gate_channels_record_deliveries(api: httpx.AsyncClient) -> None:
    run = await create_run(
        api,
        channels=[
            {"type": "webhook", "url": "http://hooks.example/run", "events": ["run.completed"]}
        ],
    )
    await begin_run(api, run["id"])
    await api.post(
        f"/runs/{run['id']}/gates/begin",
        json={
            "name": "g",
            "prompt": "p",
            "channels": [{"type": "webhook", "url": "http://hooks.example/gate"}],
        },
    )
    await api.post(f"/runs/{run['id']}/complete", json={"result": 1})
    deliveries = (await detail(api, run["id"]))["channelDeliveries"]
    assert sorted(d["eventType"] for d in deliveries) == ["gate.created", "run.completed"]
    assert all(d["status"] == "pending" for d in deliveries)


async def test_children_are_idempotent_per_edge_name(api: httpx.AsyncClient) -> None:
    parent = await create_run(api, "fanout")
    first = await api.post(
        f"/runs/{parent['id']}/children",
        json={
            "name": "part-1",
            "workflowName": "summarize",
            "input": {"chunk": 1},
            "metadata": {"k": "v"},
            "edgeMetadata": {"index": 1},
        },
    )
    assert first.status_code == 200
    body = first.json()
    assert body["created"] is True
    child, edge = body["run"], body["edge"]
    assert child["workflowName"] == "summarize" and child["status"] == "pending"
    assert child["metadata"] == {"k": "v", "parentRunId": parent["id"], "parentEdgeName": "part-1"}
    assert edge["parentRunId"] == parent["id"] and edge["childRunId"] == child["id"]
    assert edge["edgeType"] == "child" and edge["metadata"] == {"index": 1}
    again = (
        await api.post(
            f"/runs/{parent['id']}/children", json={"name": "part-1", "workflowName": "summarize"}
        )
    ).json()
    assert again["created"] is False and again["run"]["id"] == child["id"]
    assert again["edge"]["id"] == edge["id"]
    # The child is an ordinary run: begin, complete.
    await begin_run(api, child["id"])
    done = await api.post(f"/runs/{child['id']}/complete", json={"result": "summary"})
    assert done.json()["run"]["status"] == "completed"
    parent_detail = await detail(api, parent["id"])
    assert [c["id"] for c in parent_detail["childRuns"]] == [child["id"]]
    assert [e["id"] for e in parent_detail["runEdges"]] == [edge["id"]]
    assert [e["type"] for e in parent_detail["events"]] == ["run.created", "run.child.created"]
    child_detail = await detail(api, child["id"])
    assert child_detail["runEdges"][0]["id"] == edge["id"]
    assert child_detail["events"][0]["payload"]["parentRunId"] == parent["id"]


async def test_child_of_unknown_parent_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs/run_nope/children", json={"name": "c", "workflowName": "w"})
    assert response.status_code == 404
    assert response.json() == {"error": "parent run not found"}
