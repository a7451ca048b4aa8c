"""Recovery webhook signatures: unsigned, tampered, wrong secret, stale and replayed deliveries."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from conftest import new_run_id

from tidebase.recovery import (
    DeliveryRejected,
    RecoveryHandler,
    SeenDeliveries,
    sign_delivery,
    verify_delivery,
)

SECRET = "s3cret-webhook-key"


def payload(run_id: str = "run_x", workflow: str = "wf") -> bytes:
    return json.dumps({"type": "run.recovery", "runId": run_id, "workflowName": workflow}).encode()


def test_valid_delivery_is_accepted():
    body = payload()
    assert verify_delivery(sign_delivery(body, SECRET), body, SECRET)["runId"] == "run_x"


def test_rotated_secrets_are_accepted():
    body = payload()
    assert verify_delivery(sign_delivery(body, "old"), body, ["new", "old"])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: ({}, b), "unsigned"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "Tidebase-Signature"}, b), "unsigned"),
        (lambda h, b: (h, b.replace(b"run_x", b"run_y")), "bad_signature"),
        (lambda h, b: ({**h, "Tidebase-Delivery": "del_other"}, b), "bad_signature"),
        (lambda h, b: (sign_delivery(b, "wrong-secret"), b), "bad_signature"),
        (lambda h, b: (sign_delivery(b, SECRET, timestamp=int(time.time()) - 3600), b), "stale"),
        (lambda h, b: (sign_delivery(b, SECRET, timestamp=int(time.time()) + 3600), b), "stale"),
        (lambda h, b: ({**h, "Tidebase-Timestamp": "yesterday"}, b), "malformed"),
    ],
)
def test_bad_deliveries_are_rejected(mutate, reason):
    body = payload()
    headers, sent = mutate(sign_delivery(body, SECRET), body)
    with pytest.raises(DeliveryRejected) as info:
        verify_delivery(headers, sent, SECRET)
    assert info.value.reason == reason


def test_replayed_delivery_is_rejected():
    body = payload()
    headers = sign_delivery(body, SECRET)
    seen = SeenDeliveries().first_time
    verify_delivery(headers, body, SECRET, seen=seen)
    with pytest.raises(DeliveryRejected) as info:
        verify_delivery(headers, body, SECRET, seen=seen)
    assert info.value.reason == "replayed"


async def test_asgi_handler_verifies_and_resumes_the_registered_workflow(tide):
    run_id = new_run_id()
    calls = []

    @tide.workflow("recoverable")
    async def pipeline(run, _):
        done = await run.step("a", lambda: calls.append(run.attempt) or "a-done")
        if run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return done

    with pytest.raises(RuntimeError):
        await tide.run("recoverable", pipeline, run_id=run_id)

    handler = RecoveryHandler(tide, SECRET, wait=True)
    transport = httpx.ASGITransport(app=handler.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
        body = payload(run_id, "recoverable")
        unsigned = await client.post("/", content=body)
        assert unsigned.status_code == 401
        headers = sign_delivery(body, SECRET)
        ok = await client.post("/", content=body, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"runId": run_id, "outcome": "completed"}
        replay = await client.post("/", content=body, headers=headers)
        assert replay.status_code == 401 and replay.json()["reason"] == "replayed"
        unknown = payload(run_id, "nobody-registered-this")
        missing = await client.post("/", content=unknown, headers=sign_delivery(unknown, SECRET))
        assert missing.status_code == 404
    assert calls == [1]  # the step replayed on resume
    assert (await tide.get_run(run_id))["run"]["status"] == "completed"


async def test_handler_never_creates_runs_and_answers_202_only_holding_the_lease(tide):
    release = asyncio.Event()

    @tide.workflow("slow")
    async def slow(run, _):
        await run.step("wait", release.wait)
        return "done"

    handler = RecoveryHandler(tide, SECRET)
    unknown = payload(new_run_id(), "slow")
    missing = await handler.handle(sign_delivery(unknown, SECRET), unknown)
    assert missing.status == 404 and missing.body["outcome"] == "not_found"

    run_id = new_run_id()
    with pytest.raises(RuntimeError):

        async def fail_first(run, _):
            raise RuntimeError("first attempt")

        await tide.run("slow", fail_first, run_id=run_id)
    body = payload(run_id, "slow")
    answer = await handler.handle(sign_delivery(body, SECRET), body)
    assert answer.status == 202
    detail = await tide.get_run(run_id)
    assert detail["run"]["status"] == "running" and detail["run"]["attempt"] == 2
    release.set()
    for _ in range(100):
        if (await tide.get_run(run_id))["run"]["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert (await tide.get_run(run_id))["run"]["status"] == "completed"
