"""The checkpoint protocol over plain HTTP (WIRE-API.md "Steps"): the replay and retry flows a
0.7 client performs, the action discriminator in its documented order, step-lease fencing and
the server's resume-decision inference."""

from __future__ import annotations

import hashlib

import httpx

from tidebase.contract import hash_input

from .wire_client import begin_run, begin_step, create_run, detail

STEP_KEYS = {
    "id",
    "runId",
    "name",
    "inputHash",
    "input",
    "options",
    "resumeContract",
    "status",
    "output",
    "error",
    "leaseOwner",
    "leaseExpiresAt",
    "attempt",
    "startedAt",
    "completedAt",
    "createdAt",
    "updatedAt",
}


async def _leased_run(api: httpx.AsyncClient, worker: str = "w1") -> str:
    run = await create_run(api)
    await begin_run(api, run["id"], worker)
    return run["id"]


async def test_first_begin_executes_then_complete_then_replay(api: httpx.AsyncClient) -> None:
    run_id = await _leased_run(api)
    digest = hash_input({"topic": "tides"})
    first = await begin_step(
        api,
        run_id,
        "research",
        digest,
        input={"topic": "tides"},
        options={"retries": 0},
        leaseOwner="w1",
    )
    assert first["action"] == "execute" and first["leaseOwner"] == "w1"
    step = first["step"]
    assert set(step) >= STEP_KEYS
    assert step["status"] == "running" and step["attempt"] == 1 and step["leaseOwner"] == "w1"
    assert step["id"].startswith("step_") and step["input"] == {"topic": "tides"}
    assert step["resumeContract"] == {
        "sideEffects": [],
        "idempotencyKey": None,
        "replay": "auto",
        "checkpointInvariant": None,
        "verifiedBy": None,
        "credentials": [],
    }
    done = await api.post(
        f"/runs/{run_id}/steps/{step['id']}/complete",
        json={"leaseOwner": "w1", "output": {"findings": ["a", "b"]}},
    )
    assert done.status_code == 200
    completed = done.json()["step"]
    assert completed["status"] == "completed" and completed["leaseOwner"] is None
    assert completed["output"] == {"findings": ["a", "b"]} and completed["completedAt"]
    # Replay: a later attempt (another worker) gets the stored output without executing.
    await begin_run(api, run_id, "w1")
    replay = await begin_step(api, run_id, "research", digest, leaseOwner="w2")
    assert replay["action"] == "return"
    assert replay["output"] == {"findings": ["a", "b"]}
    assert replay["step"]["id"] == step["id"]
    types = [e["type"] for e in (await detail(api, run_id))["events"]]
    assert types == ["run.created", "run.started", "step.started", "step.completed"]


async def test_changed_input_is_an_input_mismatch_action(api: httpx.AsyncClient) -> None:
    run_id = await _leased_run(api)
    await begin_step(api, run_id, "s", "hash-a", leaseOwner="w1")
    mismatch = await begin_step(api, run_id, "s", "hash-b", leaseOwner="w1")
    assert mismatch["action"] == "input_mismatch"
    assert mismatch["expectedInputHash"] == "hash-a"
    assert mismatch["actualInputHash"] == "hash-b"
    assert mismatch["step"]["inputHash"] == "hash-a"


async def test_a_live_step_lease_locks_out_other_owners(api: httpx.AsyncClient) -> None:
    run_id = await _leased_run(api)
    first = await begin_step(api, run_id, "s", leaseOwner="w1")
    locked = await begin_step(api, run_id, "s", leaseOwner="w2")
    assert locked["action"] == "locked" and locked["step"]["leaseOwner"] == "w1"
    # The holder may begin again (a retry of its own): a new attempt under its lease.
    again = await begin_step(api, run_id, "s", leaseOwner="w1")
    assert again["action"] == "execute" and again["step"]["attempt"] == 2
    assert again["step"]["id"] == first["step"]["id"]


async def test_complete_and_fail_are_fenced_by_the_step_lease(api: httpx.AsyncClient) -> None:
    run_id = await _leased_run(api)
    step = (await begin_step(api, run_id, "s", leaseOwner="w1"))["step"]
    for path, body in (
        ("complete", {"leaseOwner": "w2", "output": 1}),
        ("fail", {"leaseOwner": "w2", "error": {"message": "x"}}),
    ):
        response = await api.post(f"/runs/{run_id}/steps/{step['id']}/{path}", json=body)
        assert response.status_code == 409
        assert response.json() == {"error": "step not found or lease lost"}
    unknown = await api.post(
        f"/runs/{run_id}/steps/step_nope/complete", json={"leaseOwner": "w1", "output": 1}
    )
    assert unknown.status_code == 409
    done = await api.post(
        f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": "w1", "output": 1}
    )
    assert done.status_code == 200
    twice = await api.post(
        f"/runs/{run_id}/steps/{step['id']}/complete", json={"leaseOwner": "w1", "output": 2}
    )
    assert twice.status_code == 409  # the lease was released by the first completion
    assert (await detail(api, run_id))["steps"][0]["output"] == 1


async def test_retry_flow_of_a_07_client(api: httpx.AsyncClient) -> None:
    """retries=1: the first try fails retryable, the next begin executes again."""
    run_id = await _leased_run(api)
    begun = await begin_step(api, run_id, "flaky", options={"retries": 1}, leaseOwner="w1")
    failed = await api.post(
        f"/runs/{run_id}/steps/{begun['step']['id']}/fail",
        json={
            "leaseOwner": "w1",
            "retryable": True,
            "resumeDecision": "auto_retry",
            "error": {"name": "TimeoutError", "message": "slow"},
        },
    )
    assert failed.status_code == 200
    assert failed.json()["step"]["status"] == "failed_retryable"
    assert failed.json()["step"]["error"] == {"name": "TimeoutError", "message": "slow"}
    second = await begin_step(api, run_id, "flaky", options={"retries": 1}, leaseOwner="w1")
    assert second["action"] == "execute" and second["step"]["attempt"] == 2
    done = await api.post(
        f"/runs/{run_id}/steps/{second['step']['id']}/complete",
        json={"leaseOwner": "w1", "output": "ok"},
    )
    assert done.json()["step"]["status"] == "completed"


async def _fail_with(api: httpx.AsyncClient, options: dict, **body) -> dict:
    run_id = await _leased_run(api)
    step = (await begin_step(api, run_id, "s", options=options, leaseOwner="w1"))["step"]
    response = await api.post(
        f"/runs/{run_id}/steps/{step['id']}/fail",
        json={"leaseOwner": "w1", "error": {"message": "x"}, **body},
    )
    assert response.status_code == 200, response.text
    return response.json()["step"]


async def test_supplied_resume_decision_maps_to_status(api: httpx.AsyncClient) -> None:
    assert (await _fail_with(api, {}, resumeDecision="manual_review"))["status"] == "manual_review"
    assert (await _fail_with(api, {}, resumeDecision="safe_replay"))["status"] == "failed"
    assert (await _fail_with(api, {}, resumeDecision="fail_hard"))["status"] == "failed"
    assert (await _fail_with(api, {}, resumeDecision="auto_retry"))["status"] == "failed_retryable"


async def test_server_infers_the_decision_when_omitted(api: httpx.AsyncClient) -> None:
    cases = [
        ({}, "safe_replay", "failed"),
        ({"replay": "manual"}, "manual_review", "manual_review"),
        ({"replay": "never"}, "fail_hard", "failed"),
        ({"sideEffects": ["ticket.create"]}, "manual_review", "manual_review"),
        ({"sideEffects": ["ticket.create"], "idempotencyKey": "k"}, "safe_replay", "failed"),
        ({"sideEffects": ["ticket.create"], "idempotencyKey": ""}, "safe_replay", "failed"),
        ({"sideEffects": ["read"]}, "safe_replay", "failed"),
        ({"sideEffects": ["", 7, "read"]}, "safe_replay", "failed"),
        ({"sideEffect": "email.send"}, "manual_review", "manual_review"),
        ({"sideEffect": "none"}, "safe_replay", "failed"),
        ({"sideEffects": ["x"], "onAmbiguousFailure": "retry"}, "safe_replay", "failed"),
        ({"onAmbiguousFailure": "review"}, "manual_review", "manual_review"),
        ({"onAmbiguousFailure": "fail"}, "fail_hard", "failed"),
    ]
    for options, decision, status in cases:
        step = await _fail_with(api, options)
        assert (step["resumeDecision"], step["status"]) == (decision, status), options
    retryable = await _fail_with(api, {"replay": "manual"}, retryable=True)
    assert retryable["status"] == "failed_retryable"


async def test_resume_contract_normalizes_options(api: httpx.AsyncClient) -> None:
    run_id = await _leased_run(api)
    options = {
        "sideEffects": ["ticket.create", "", 3],
        "idempotencyKey": "k-1",
        "checkpointInvariant": {"rows": 3},
        "verifiedBy": "sha",
        "credentials": ["gh"],
    }
    step = (await begin_step(api, run_id, "s", options=options, leaseOwner="w1"))["step"]
    assert step["options"] == options  # stored as-is
    assert step["resumeContract"] == {
        "sideEffects": ["ticket.create"],
        "idempotencyKey": "k-1",
        "replay": "auto",
        "checkpointInvariant": {"rows": 3},
        "verifiedBy": "sha",
        "credentials": ["gh"],
    }


async def test_step_begin_does_not_require_the_run_lease(api: httpx.AsyncClient) -> None:
    run = await create_run(api)  # pending, never begun: the reference does not check
    begun = await begin_step(api, run["id"], "s")
    assert begun["action"] == "execute"


async def test_unknown_run_is_404_not_500(api: httpx.AsyncClient) -> None:
    response = await api.post("/runs/run_nope/steps/begin", json={"name": "s", "inputHash": "h"})
    assert response.status_code == 404 and response.json() == {"error": "run not found"}


def test_input_hash_matches_the_documented_algorithm() -> None:
    """The hash a 0.7 client computes (WIRE-API.md "Input hash") is what our SDK sends."""
    assert hash_input(None) == hashlib.sha256(b"null").hexdigest()
    assert (
        hash_input({"b": 1, "a": [1, "é", None, True]})
        == hashlib.sha256('{"a":[1,"é",null,true],"b":1}'.encode()).hexdigest()
    )
    assert hash_input({2: "x", 10: "y"}) == hashlib.sha256(b'{"2":"x","10":"y"}').hexdigest()
    assert hash_input({"k": {"z": 1, "y": 2}}) == hash_input({"k": {"y": 2, "z": 1}})
