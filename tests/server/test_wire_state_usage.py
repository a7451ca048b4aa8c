"""State (put/patch/save/versions), snapshots and usage over plain HTTP (WIRE-API.md)."""

from __future__ import annotations

import httpx

from .wire_client import begin_run, create_run, detail


async def test_put_patch_versions(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    put = await api.put(f"/runs/{run['id']}/state", json={"value": {"phase": "research", "n": 1}})
    assert put.status_code == 200
    state = put.json()["state"]
    assert state["runId"] == run["id"] and state["version"] == 1
    assert state["value"] == {"phase": "research", "n": 1} and state["updatedAt"].endswith("Z")
    patch = await api.patch(f"/runs/{run['id']}/state", json={"value": {"n": 2, "extra": True}})
    assert patch.json()["state"] == {
        **patch.json()["state"],
        "version": 2,
        "value": {"phase": "research", "n": 2, "extra": True},
    }
    versions = (await api.get(f"/runs/{run['id']}/state/versions")).json()["stateVersions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["patch"] == {"n": 2, "extra": True}
    assert versions[1]["value"] == {"phase": "research", "n": 2, "extra": True}
    assert versions[0]["importance"] == "normal" and versions[0]["streamId"].startswith("stream_")
    assert {e["type"] for e in (await detail(api, run["id"]))["events"]} >= {"state.updated"}


async def test_missing_value_is_stored_as_empty_object(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    response = await api.put(f"/runs/{run['id']}/state", json={})
    assert response.status_code == 200 and response.json()["state"]["value"] == {}


async def test_streams_labels_and_save(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    missing = await api.post(f"/runs/{run['id']}/state/save", json={"label": "v0"})
    assert missing.status_code == 404 and missing.json() == {"error": "run state not found"}
    await api.put(
        f"/runs/{run['id']}/state",
        json={
            "value": {"draft": 1},
            "stream": "doc",
            "label": "first",
            "importance": "checkpoint",
            "reason": "r",
            "createdBy": "agent",
        },
    )
    saved = await api.post(
        f"/runs/{run['id']}/state/save", json={"label": "reviewed", "stream": "doc"}
    )
    assert saved.status_code == 200
    version = saved.json()["stateVersion"]
    assert version["label"] == "reviewed" and version["importance"] == "milestone"
    assert version["value"] == {"draft": 1} and version["version"] == 2
    labeled = (
        await api.get(
            f"/runs/{run['id']}/state/versions", params={"stream": "doc", "labeled": "true"}
        )
    ).json()
    assert [v["label"] for v in labeled["stateVersions"]] == ["first", "reviewed"]
    other = (await api.get(f"/runs/{run['id']}/state/versions", params={"stream": "nope"})).json()
    assert other["stateVersions"] == []
    body = await detail(api, run["id"])
    assert [s["name"] for s in body["stateStreams"]] == ["doc"]
    assert body["state"]["value"] == {"draft": 1}


async def test_snapshots(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    first = await api.post(
        f"/runs/{run['id']}/snapshots", json={"label": "reviewed", "state": {"doc": "v1"}}
    )
    assert first.status_code == 200
    snap = first.json()["snapshot"]
    assert snap["importance"] == "milestone" and snap["value"] == {"doc": "v1"}
    await api.post(
        f"/runs/{run['id']}/snapshots",
        json={"label": "published", "state": {"doc": "v2"}, "target": {"type": "doc", "id": "d1"}},
    )
    listed = (await api.get(f"/runs/{run['id']}/snapshots")).json()["snapshots"]
    assert [s["label"] for s in listed] == ["published", "reviewed"]  # newest first
    streams = {s["name"]: s for s in (await detail(api, run["id"]))["stateStreams"]}
    assert streams["doc:d1"]["targetType"] == "doc" and streams["doc:d1"]["targetId"] == "d1"
    assert f"run:{run['id']}" in streams


async def test_state_routes_on_unknown_run_are_404(api: httpx.AsyncClient) -> None:
    for method, path, body in [
        ("PUT", "/runs/run_nope/state", {"value": 1}),
        ("PATCH", "/runs/run_nope/state", {"value": {}}),
        ("POST", "/runs/run_nope/state/save", {"label": "x"}),
        ("GET", "/runs/run_nope/state/versions", None),
        ("POST", "/runs/run_nope/snapshots", {"label": "x", "state": {}}),
        ("GET", "/runs/run_nope/snapshots", None),
        ("POST", "/runs/run_nope/usage", {}),
    ]:
        response = await api.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)


async def test_usage_records_and_totals(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    first = await api.post(
        f"/runs/{run['id']}/usage",
        json={
            "kind": "llm",
            "provider": "openai",
            "model": "gpt-x",
            "inputTokens": 100,
            "outputTokens": 20,
            "costUsd": 0.0125,
            "metadata": {"agent": "writer"},
        },
    )
    assert first.status_code == 200
    usage = first.json()["usage"]
    assert usage["totalTokens"] == 120 and usage["costUsd"] == 0.0125
    assert usage["kind"] == "llm" and usage["id"].startswith("use_")
    second = (
        await api.post(f"/runs/{run['id']}/usage", json={"quantity": 3, "unit": "searches"})
    ).json()
    assert second["usage"]["kind"] == "custom" and second["usage"]["totalTokens"] is None
    same = (
        await api.post(f"/runs/{run['id']}/usage", json={"quantity": 3, "unit": "searches"})
    ).json()
    assert same["usage"]["id"] != second["usage"]["id"]  # 0.7 clients: every call is a record
    body = await detail(api, run["id"])
    assert len(body["usage"]) == 3
    listed = (await api.get("/runs", params={"workflow": "wf", "limit": 50})).json()["runs"]
    mine = next(r for r in listed if r["id"] == run["id"])
    assert mine["tokens"] == 120 and abs(mine["costUsd"] - 0.0125) < 1e-9


async def test_usage_tied_to_a_step(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    step = (
        await api.post(f"/runs/{run['id']}/steps/begin", json={"name": "s", "inputHash": "h"})
    ).json()["step"]
    ok = await api.post(f"/runs/{run['id']}/usage", json={"stepId": step["id"], "inputTokens": 1})
    assert ok.status_code == 200 and ok.json()["usage"]["stepId"] == step["id"]
    wrong = await api.post(f"/runs/{run['id']}/usage", json={"stepId": "step_nope"})
    assert wrong.status_code == 400 and "stepId" in wrong.json()["message"]


async def test_usage_with_a_record_key_is_idempotent(api: httpx.AsyncClient) -> None:
    """Extension: `key` makes a record idempotent (what our SDK sends)."""
    run = await create_run(api)
    begun = await begin_run(api, run["id"], "w1")
    body = {"key": "run:1", "leaseOwner": begun["leaseOwner"], "inputTokens": 5}
    first = (await api.post(f"/runs/{run['id']}/usage", json=body)).json()
    again = (await api.post(f"/runs/{run['id']}/usage", json=body)).json()
    assert first["inserted"] is True and again["inserted"] is False
    assert first["usage"]["id"] == again["usage"]["id"]
    fenced = await api.post(
        f"/runs/{run['id']}/usage", json={**body, "key": "run:2", "leaseOwner": "someone-else"}
    )
    assert fenced.status_code == 409 and fenced.json()["code"] == "lease_lost"
    assert len((await detail(api, run["id"]))["usage"]) == 1
