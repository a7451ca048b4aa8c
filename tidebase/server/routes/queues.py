"""Queues: enqueue (with dedupe), claim, per-queue config, and the queue list.

Extensions (ignored by 0.7 clients): `traceId`/`spanId` on enqueue (the enqueuing span, which
each attempt's processing links to) and `leaseMs` on claim. Claimed runs carry `claimedAt` and
the enqueuer's span context.
"""

from __future__ import annotations

import datetime as _dt

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.hooks import SpanRef
from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.paths import param
from tidebase.server.validation import BadRequest, Body, check_identifier
from tidebase.store.base import EnqueueRequest

_SPAN_ID_CHARS = 64
_MAX_CLAIM = 100
_MAX_QUEUES = 100
_MAX_DELAY_MS = 366 * 24 * 3600 * 1000
_INT32 = 2**31 - 1


def _run_at(body: Body) -> _dt.datetime | None:
    text = body.text("runAt", max_chars=64)
    if text is None:
        return None
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest("runAt", "must be an ISO-8601 datetime", code="invalid_string") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.UTC)


def _span(body: Body) -> SpanRef | None:
    trace_id = body.text("traceId", max_chars=_SPAN_ID_CHARS)
    span_id = body.text("spanId", max_chars=_SPAN_ID_CHARS)
    return SpanRef(trace_id, span_id) if trace_id and span_id else None


async def enqueue(request: Request) -> Response:
    queue = param(request, "queue")
    body = await read_body(request)
    if body.has("runAt") and body.has("delayMs"):
        raise BadRequest("delayMs", "give runAt or delayMs, not both", code="invalid_combination")
    data = await deps.store(request).enqueue(
        queue,
        EnqueueRequest(
            workflow=body.identifier("workflowName", required=True),
            input=body.json("input"),
            metadata=body.obj("metadata"),
            recovery_webhook=body.url("recoveryWebhook"),
            channels=body.channels(),
            dedupe_key=body.identifier("dedupeKey"),
            run_at=_run_at(body),
            delay_ms=body.integer("delayMs", minimum=0, maximum=_MAX_DELAY_MS),
            max_attempts=body.integer("maxAttempts", minimum=1, maximum=1000) or 1,
            priority=body.integer("priority", minimum=-_INT32, maximum=_INT32) or 0,
            deadline_ms=body.integer("deadlineMs", minimum=0, maximum=_MAX_DELAY_MS),
            span=_span(body),
        ),
    )
    return JSONResponse(data)


def _queue_names(body: Body) -> list[str]:
    names = body.raw("queues")
    if not isinstance(names, list) or not names:
        raise BadRequest("queues", "must be a non-empty list of queue names", code="too_small")
    if len(names) > _MAX_QUEUES:
        raise BadRequest("queues", f"must list at most {_MAX_QUEUES} queues", code="too_big")
    return [check_identifier(f"queues[{i}]", name) for i, name in enumerate(names)]


async def claim(request: Request) -> Response:
    body = await read_body(request)
    queues = _queue_names(body)
    owner = body.identifier("leaseOwner") or deps.worker_header(request) or deps.new_lease_owner()
    limit = body.integer("limit", minimum=1, maximum=_MAX_CLAIM) or 1
    lease_ms = (
        body.integer("leaseMs", minimum=deps.MIN_LEASE_MS, maximum=deps.MAX_LEASE_MS)
        or deps.config(request).lease_ms
    )
    runs = await deps.store(request).claim(queues, owner, limit, lease_ms)
    return JSONResponse({"runs": runs, "leaseOwner": owner})


async def set_config(request: Request) -> Response:
    queue = param(request, "queue")
    body = await read_body(request)
    config = await deps.store(request).configure_queue(
        queue,
        concurrency=body.integer("concurrency", minimum=1, maximum=1_000_000),
        rate_per_minute=body.integer("ratePerMinute", minimum=1, maximum=1_000_000),
        invoke_url=body.url("invokeUrl"),
    )
    return JSONResponse({"config": config})


async def list_queues(request: Request) -> Response:
    return JSONResponse({"queues": await deps.store(request).list_queues()})


routes = [
    Route("/queues", list_queues, methods=["GET"]),
    Route("/queues/claim", claim, methods=["POST"]),
    Route("/queues/{queue}/enqueue", enqueue, methods=["POST"]),
    Route("/queues/{queue}/config", set_config, methods=["PUT"]),
]
