"""Recovery webhooks end to end: `tidebase serve` sends signed deliveries (failed runs, stalled
runs, manual recover), records every try, retries with backoff, and the SDK handler, served by
uvicorn on a loopback port, verifies and resumes the run to completion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from _queue_helpers import eventually
from conftest import new_run_id

from tidebase.aio import AsyncTidebase
from tidebase.recovery import DeliveryRejected, RecoveryHandler, SeenDeliveries, verify_delivery
from tidebase.server import ServerConfig
from tidebase.server.background import BackgroundServer

SECRET = "whsec_test_secret"


@pytest.fixture(scope="module")
def webhook_server(pg_url):
    config = ServerConfig(
        database_url=pg_url, webhook_secret=SECRET, reconcile_ms=100, recovery_throttle_ms=60_000
    )
    with BackgroundServer(config) as server:
        yield server


@contextlib.asynccontextmanager
async def serve_asgi(app) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, timeout=10, interval=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/recover"
    finally:
        server.should_exit = True
        await task


class Recorder:
    """An ASGI webhook that records deliveries and answers with scripted statuses."""

    def __init__(self, statuses=(200,)):
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": f"answered {status}".encode()})


async def attempts(api: AsyncTidebase, run_id: str) -> list[dict]:
    return (await api.get_run(run_id))["recovery_attempts"]


async def test_failed_run_is_delivered_verified_and_resumed_to_completion(webhook_server):
    tide = AsyncTidebase(webhook_server.url)
    calls: list[int] = []

    @tide.workflow("recoverable")
    async def recoverable(run, input):
        first = await run.step("first", lambda: calls.append(run.attempt) or "one")
        if run.attempt == 1:
            raise RuntimeError("transient")
        return {"first": first, "attempt": run.attempt}

    handler = RecoveryHandler(tide, SECRET)
    async with serve_asgi(handler.asgi_app()) as url:
        run_id = new_run_id()
        with pytest.raises(RuntimeError):
            await tide.run("recoverable", recoverable, run_id=run_id, recovery_webhook=url)

        async def completed():
            return (await tide.get_run(run_id))["run"]["status"] == "completed"

        await eventually(completed, timeout=20)
    detail = await tide.get_run(run_id)
    assert detail["run"]["result"] == {"first": "one", "attempt": 2}
    assert calls == [1]  # the completed step replayed on the resumed attempt
    (rec,) = detail["recovery_attempts"]
    assert rec["status"] == "delivered" and rec["http_status"] == 202
    assert rec["reason"] == "failed" and rec["run_attempt"] == 1
    assert "resuming" in rec["response_excerpt"]
    types = [e["type"] for e in detail["events"]]
    assert "recovery.started" in types and "recovery.delivered" in types
    await tide.close()


async def test_stalled_webhook_run_gets_a_lease_expired_recovery(webhook_server):
    tide = AsyncTidebase(webhook_server.url)

    @tide.workflow("stalled")
    async def stalled(run, input):
        return "resumed"

    recorder = RecoveryHandler(tide, SECRET)
    async with serve_asgi(recorder.asgi_app()) as url:
        run_id = new_run_id()
        store = await tide.store()
        await store.begin_run(
            run_id,
            "stalled",
            None,
            "dead-worker",
            1000,
            create=True,
            span=None,
            recovery_webhook=url,
        )  # the worker "dies": its 1 s lease expires

        async def completed():
            return (await tide.get_run(run_id))["run"]["status"] == "completed"

        await eventually(completed, timeout=20)
    recs = await attempts(tide, run_id)
    assert [r["reason"] for r in recs] == ["lease_expired"]
    assert recs[0]["status"] == "delivered"
    await tide.close()


async def test_failed_tries_are_recorded_and_retried_with_backoff_once_delivered(webhook_server):
    tide = AsyncTidebase(webhook_server.url)
    recorder = Recorder(statuses=(500, 503, 200))
    async with serve_asgi(recorder) as url:
        run_id = new_run_id()

        async def fails(run, _):
            raise RuntimeError("nope")

        with pytest.raises(RuntimeError):
            await tide.run("retried", fails, run_id=run_id, recovery_webhook=url)

        async def delivered():
            recs = await attempts(tide, run_id)
            return recs if any(r["status"] == "delivered" for r in recs) else None

        recs = await eventually(delivered, timeout=20)
    assert [(r["status"], r["http_status"]) for r in recs] == [
        ("failed", 500),
        ("failed", 503),
        ("delivered", 200),
    ]
    assert [r["try"] for r in recs] == [1, 2, 3]
    assert recs[0]["error"] == "HTTP 500" and recs[0]["response_excerpt"] == "answered 500"
    gap = (recs[1]["completed_at"] - recs[0]["completed_at"]).total_seconds()
    assert gap >= 0.9  # backoff 1 s, then 2 s
    ids = {json.loads(body)["deliveryId"] for _, body in recorder.received}
    assert len(ids) == 3  # each try is its own signed delivery
    await asyncio.sleep(0.5)
    assert len(await attempts(tide, run_id)) == 3  # one success per run attempt: no more
    await tide.close()


async def test_signature_matrix_on_the_servers_real_delivery(webhook_server):
    tide = AsyncTidebase(webhook_server.url)
    recorder = Recorder()
    async with serve_asgi(recorder) as url:
        async with httpx.AsyncClient() as http:
            created = (
                await http.post(f"{webhook_server.url}/runs/sig-wf", json={"recoveryWebhook": url})
            ).json()["run"]
            response = await http.post(f"{webhook_server.url}/runs/{created['id']}/recover")
        assert response.status_code == 200
        assert response.json()["recoveryAttempt"]["status"] == "delivered"
    (headers, body) = recorder.received[0]
    payload = json.loads(body)
    assert payload["type"] == "tidebase.recovery" and payload["reason"] == "manual"
    assert payload["runId"] == created["id"] and payload["workflowName"] == "sig-wf"
    assert payload["run"]["id"] == created["id"] and payload["attempt"] == 0
    assert payload["deliveryId"] == headers["tidebase-delivery"]

    seen = SeenDeliveries().first_time
    assert verify_delivery(headers, body, SECRET, seen=seen)["runId"] == created["id"]
    cases = {
        "replayed": (headers, body, SECRET, None),
        "bad_signature": (headers, body.replace(b"sig-wf", b"evil-w"), SECRET, None),
        "unsigned": ({"content-type": "application/json"}, body, SECRET, None),
    }
    for reason, (h, b, secret, now) in cases.items():
        with pytest.raises(DeliveryRejected) as info:
            verify_delivery(h, b, secret, seen=seen, now=now)
        assert info.value.reason == reason
    with pytest.raises(DeliveryRejected) as info:
        verify_delivery(headers, body, "another-secret")
    assert info.value.reason == "bad_signature"
    with pytest.raises(DeliveryRejected) as info:
        verify_delivery(headers, body, SECRET, now=time.time() + 3600)
    assert info.value.reason == "stale"
    # and the SDK handler answers each forgery 401 without resuming anything
    handler = RecoveryHandler(tide, SECRET)
    assert (await handler.handle(headers, body.replace(b"sig-wf", b"evil-w"))).status == 401
    assert (await handler.handle({}, body)).status == 401
    assert (await RecoveryHandler(tide, "wrong").handle(headers, body)).status == 401
    await tide.close()


async def test_manual_recover_needs_a_webhook(webhook_server):
    async with httpx.AsyncClient(base_url=webhook_server.url) as http:
        run = (await http.post("/runs/plain-wf", json={})).json()["run"]
        response = await http.post(f"/runs/{run['id']}/recover")
        assert response.status_code == 422
        assert (await http.post("/runs/run_missing/recover")).status_code == 404
