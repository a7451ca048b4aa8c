"""Runs over plain HTTP, as WIRE-API.md describes them: create, list, detail, the run lease,
completion, failure and cancellation (and where we are stricter than the reference)."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from .wire_client import begin_run, begin_step, create_run, detail

RUN_KEYS = {
    "id",
    "workflowName",
    "input",
    "metadata",
    "status",
    "result",
    "error",
    "recoveryWebhook",
    "leaseOwner",
    "leaseExpiresAt",
    "attempt",
    "queue",
    "dedupeKey",
    "priority",
    "runAt",
    "maxAttempts",
    "deadlineAt",
    "cancelRequestedAt",
    "cancelledAt",
    "cancelReason",
    "cancelActor",
    "failureClass",
    "createdAt",
    "updatedAt",
    "completedAt",
}
DETAIL_KEYS = {
    "run",
    "steps",
    "state",
    "stateStreams",
    "stateVersions",
    "runEdges",
    "childRuns",
    "recoveryAttempts",
    "channels",
    "channelDeliveries",
    "gates",
    "usage",
    "events",
}


async def test_health_is_open_and_small(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_create_run_shape(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/runs/report", json={"input": {"topic": "tides"}, "metadata": {"team": "a"}}
    )
    assert response.status_code == 200
    run = response.json()["run"]
    assert set(run) >= RUN_KEYS
    assert run["id"].startswith("run_") and len(run["id"]) == 36
    assert run["status"] == "pending" and run["attempt"] == 0
    assert run["input"] == {"topic": "tides"} and run["metadata"] == {"team": "a"}
    assert run["createdAt"].endswith("Z") and run["completedAt"] is None
    events = (await detail(api, run["id"]))["events"]
    assert [e["type"] for e in events] == ["run.created"]
    assert events[0]["seq"] == 1


async def test_create_run_defaults_input_to_empty_object(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    assert run["input"] == {} and run["metadata"] == {}


async def test_workflow_name_may_contain_encoded_slash(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs/team%2Freport%20v2", json={})
    assert response.status_code == 200
    assert response.json()["run"]["workflowName"] == "team/report v2"


async def test_detail_has_every_collection(api: httpx.AsyncClient) -> None:
    run = await create_run(api, channels=[{"type": "webhook", "url": "http://hooks.example/x"}])
    body = await detail(api, run["id"])
    assert set(body) >= DETAIL_KEYS
    assert body["run"]["id"] == run["id"]
    assert body["state"] is None
    assert body["channels"][0]["config"]["url"] == "http://hooks.example/x"


async def test_unknown_run_is_404(api: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/runs/run_missing"),
        ("POST", "/runs/run_missing/begin"),
        ("POST", "/runs/run_missing/complete"),
        ("POST", "/runs/run_missing/fail"),
        ("POST", "/runs/run_missing/cancel"),
    ]:
        response = await api.request(method, path, json={})
        assert response.status_code == 404, (method, path, response.text)
        assert response.json() == {"error": "run not found"}
    response = await api.post("/runs/run_missing/heartbeat", json={"leaseOwner": "w"})
    assert response.status_code == 404


async def test_list_runs_newest_first_with_filters_and_paging(api: httpx.AsyncClient) -> None:
    workflow = f"list-{uuid.uuid4().hex[:8]}"
    ids = [(await create_run(api, workflow))["id"] for _ in range(5)]
    response = await api.get("/runs")
    assert response.status_code == 200
    assert len(response.json()["runs"]) <= 100
    page = (await api.get("/runs", params={"workflow": workflow, "limit": 2})).json()
    assert [r["id"] for r in page["runs"]] == ids[::-1][:2]
    seen = [r["id"] for r in page["runs"]]
    while page["nextCursor"]:
        page = (
            await api.get(
                "/runs", params={"workflow": workflow, "limit": 2, "cursor": page["nextCursor"]}
            )
        ).json()
        seen += [r["id"] for r in page["runs"]]
    assert seen == ids[::-1]
    await begin_run(api, ids[0])
    running = (await api.get("/runs", params={"workflow": workflow, "status": "running"})).json()
    assert [r["id"] for r in running["runs"]] == [ids[0]]
    assert {"stepsDone", "stepsTotal", "tokens", "costUsd"} <= set(running["runs"][0])


async def test_bad_paging_parameters_are_400(api: httpx.AsyncClient) -> None:
    for params in ({"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"cursor": "nope"}):
        response = await api.get("/runs", params=params)
        assert response.status_code == 400, params


async def test_an_unknown_status_filter_is_400_naming_the_choices(api: httpx.AsyncClient) -> None:
    response = await api.get("/runs", params={"status": "bogus"})
    assert response.status_code == 400
    assert "status" in response.json()["message"] and "manual_review" in response.json()["message"]
    for status in ("queued", "manual_review"):
        assert (await api.get("/runs", params={"status": status})).status_code == 200


async def test_enqueue_with_both_run_at_and_delay_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/queues/both/enqueue",
        json={"workflowName": "wf", "runAt": "2030-01-01T00:00:00Z", "delayMs": 1000},
    )
    assert response.status_code == 400, response.text
    assert "delayMs" in response.json()["message"]


async def test_begin_takes_the_lease(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    begun = await begin_run(api, run["id"], "w1")
    assert begun["leaseOwner"] == "w1"
    assert begun["run"]["status"] == "running" and begun["run"]["attempt"] == 1
    assert begun["run"]["leaseOwner"] == "w1" and begun["run"]["leaseExpiresAt"]
    # Old clients send no body and get no extension fields.
    assert "steps" not in begun and "outcome" not in begun


async def test_begin_without_worker_header_makes_an_owner(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    response = await api.post(f"/runs/{run['id']}/begin")
    assert response.status_code == 200
    owner = response.json()["leaseOwner"]
    assert uuid.UUID(owner)


async def test_second_worker_cannot_begin_a_leased_run(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"], "w1")
    response = await api.post(f"/runs/{run['id']}/begin", headers={"x-tidebase-worker": "w2"})
    assert response.status_code == 409
    assert response.json()["error"] == "run is leased"
    assert response.json()["leaseOwner"] == "w1"
    # The holder may begin again (a retried request): it keeps its attempt.
    again = await begin_run(api, run["id"], "w1")
    assert again["run"]["attempt"] == 1 and again["run"]["leaseOwner"] == "w1"


async def test_begin_on_completed_run_returns_it_unchanged(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"], "w1")
    done = await api.post(f"/runs/{run['id']}/complete", json={"result": {"ok": True}})
    assert done.status_code == 200
    replay = await begin_run(api, run["id"], "w2")
    assert replay["run"]["status"] == "completed"
    assert replay["run"]["attempt"] == 1 and replay["run"]["result"] == {"ok": True}


async def test_heartbeat_extends_only_for_the_holder(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    begun = await begin_run(api, run["id"], "w1")
    before = begun["run"]["leaseExpiresAt"]
    await asyncio.sleep(0.01)
    response = await api.post(f"/runs/{run['id']}/heartbeat", json={"leaseOwner": "w1"})
    assert response.status_code == 200
    assert response.json()["run"]["leaseExpiresAt"] > before
    events = (await detail(api, run["id"]))["events"]
    assert [e["type"] for e in events] == ["run.created", "run.started"]  # no event appended
    lost = await api.post(f"/runs/{run['id']}/heartbeat", json={"leaseOwner": "w2"})
    assert lost.status_code == 409
    assert lost.json()["error"] == "lease lost" and lost.json()["code"] == "lease_lost"
    missing = await api.post(f"/runs/{run['id']}/heartbeat", json={})
    assert missing.status_code == 400
    assert missing.json()["error"] == "leaseOwner is required"


async def test_complete_and_fail_like_a_07_client(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    response = await api.post(
        f"/runs/{run['id']}/fail", json={"error": {"name": "Boom", "message": "x"}}
    )
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "failed"
    assert response.json()["requeued"] is False
    assert response.json()["run"]["error"] == {"name": "Boom", "message": "x"}
    # A failed run can be begun again (resume), then completed.
    again = await begin_run(api, run["id"], "w2")
    assert again["run"]["attempt"] == 2 and again["run"]["error"] is None
    response = await api.post(f"/runs/{run['id']}/complete", json={"result": [1, 2]})
    assert response.status_code == 200
    completed = response.json()["run"]
    assert completed["status"] == "completed" and completed["result"] == [1, 2]
    assert completed["completedAt"] and completed["leaseOwner"] is None
    types = [e["type"] for e in (await detail(api, run["id"]))["events"]]
    assert types == ["run.created", "run.started", "run.failed", "run.started", "run.completed"]


async def test_completed_run_is_never_overwritten(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    await api.post(f"/runs/{run['id']}/complete", json={"result": "first"})
    second = await api.post(f"/runs/{run['id']}/complete", json={"result": "second"})
    assert second.status_code == 200 and second.json()["run"]["result"] == "first"
    failed = await api.post(f"/runs/{run['id']}/fail", json={"error": {"message": "late"}})
    assert failed.status_code == 200 and failed.json()["run"]["status"] == "completed"


async def test_completion_is_fenced_when_the_owner_is_sent(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"], "w1")
    stale = await api.post(
        f"/runs/{run['id']}/complete", json={"result": "zombie", "leaseOwner": "w-old"}
    )
    assert stale.status_code == 409 and stale.json()["code"] == "lease_lost"
    assert (await detail(api, run["id"]))["run"]["status"] == "running"
    ok = await api.post(f"/runs/{run['id']}/complete", json={"result": "ok", "leaseOwner": "w1"})
    assert ok.status_code == 200 and ok.json()["run"]["result"] == "ok"
    repeat = await api.post(
        f"/runs/{run['id']}/complete", json={"result": "ok", "leaseOwner": "w1"}
    )
    assert repeat.status_code == 200 and repeat.json()["outcome"] == "already"


async def test_cancel_flow(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"], "w1")
    response = await api.post(
        f"/runs/{run['id']}/cancel", json={"reason": "user asked", "actor": "alice"}
    )
    assert response.status_code == 200
    cancelled = response.json()["run"]
    assert cancelled["status"] == "cancelled" and cancelled["leaseOwner"] is None
    assert cancelled["cancelReason"] == "user asked" and cancelled["cancelActor"] == "alice"
    assert cancelled["cancelledAt"] and cancelled["completedAt"]
    again = await api.post(f"/runs/{run['id']}/cancel")
    assert again.status_code == 200 and again.json()["run"] == cancelled  # idempotent
    # In-flight workers notice: begin 409, heartbeat 409, steps/begin action cancelled.
    begin = await api.post(f"/runs/{run['id']}/begin")
    assert begin.status_code == 409 and begin.json()["code"] == "run_cancelled"
    assert begin.json()["run"]["status"] == "cancelled"
    beat = await api.post(f"/runs/{run['id']}/heartbeat", json={"leaseOwner": "w1"})
    assert beat.status_code == 409 and beat.json()["code"] == "run_cancelled"
    step = await begin_step(api, run["id"], "s1", leaseOwner="w1")
    assert step == {"action": "cancelled"}
    # complete/fail change nothing and answer 200 with the cancelled run.
    for path, body in (("complete", {"result": 1}), ("fail", {"error": {"message": "x"}})):
        response = await api.post(f"/runs/{run['id']}/{path}", json=body)
        assert response.status_code == 200
        assert response.json()["run"]["status"] == "cancelled"
    types = [e["type"] for e in (await detail(api, run["id"]))["events"]]
    assert types.count("run.cancelled") == 1


async def test_cancel_completed_run_is_409(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    await api.post(f"/runs/{run['id']}/complete", json={"result": None})
    response = await api.post(f"/runs/{run['id']}/cancel", json={})
    assert response.status_code == 409
    assert response.json()["error"] == "run already completed"
    assert response.json()["run"]["status"] == "completed"


async def test_later_routes_answer_json(api: httpx.AsyncClient) -> None:
    # schedules are served now (tests/server/test_schedules.py): a bad body is a 400
    response = await api.put("/schedules/nightly", json={})
    assert response.status_code == 400
    assert response.json()["issues"][0]["path"] == ["cron"]
    for method, path in [
        ("POST", "/agents"),
        ("GET", "/audit"),
        ("POST", "/resources"),
        ("POST", "/runs/run_x/grants"),
    ]:
        response = await api.request(method, path, json={})
        assert response.status_code == 503
        assert response.json()["code"] == "broker_disabled"
    unknown = await api.get("/no/such/route")
    assert unknown.status_code == 404 and unknown.json() == {"error": "not found"}
