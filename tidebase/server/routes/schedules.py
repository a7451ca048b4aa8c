"""Schedules: cron expressions that enqueue runs (migrations/005).

`PUT /schedules/:name` creates or replaces one: `{cron, queue, workflowName, input?, metadata?,
maxAttempts?, priority?, enabled?}` (a 5-field cron expression, evaluated in UTC; enabled
defaults to true). `GET /schedules/:name` (404 when unknown), `GET /schedules` (all, by name),
`DELETE /schedules/:name` (idempotent: `{deleted}` says whether it existed). The reconciler
enqueues due schedules on `queue`.
"""

from __future__ import annotations

import datetime as _dt

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.schedules import MAX_CRON_CHARS, BadCron, check_cron, next_after
from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param
from tidebase.server.validation import BadRequest

_INT32 = 2**31 - 1


async def put_schedule(request: Request) -> Response:
    name = param(request, "name")
    body = await read_body(request)
    try:
        cron = check_cron(body.text("cron", required=True, max_chars=MAX_CRON_CHARS))
    except BadCron as exc:
        raise BadRequest("cron", str(exc), code="invalid_string") from None
    queue = body.identifier("queue", required=True)
    workflow = body.identifier("workflowName", required=True)
    input_ = body.json("input")
    metadata = body.obj("metadata")
    max_attempts = body.integer("maxAttempts", minimum=1, maximum=1000)
    priority = body.integer("priority", minimum=-_INT32, maximum=_INT32)
    enabled = body.boolean("enabled")
    data = await deps.store(request).put_schedule(
        name,
        cron=cron,
        queue=queue,
        workflow=workflow,
        input=input_,
        metadata=metadata,
        max_attempts=max_attempts,
        priority=priority,
        enabled=True if enabled is None else enabled,
        next_run_at=next_after(cron, _dt.datetime.now(_dt.UTC)),
    )
    return JSONResponse(data)


async def get_schedule(request: Request) -> Response:
    name = param(request, "name")
    schedule = await deps.store(request).get_schedule(name)
    if schedule is None:
        return error(404, "schedule not found")
    return JSONResponse({"schedule": schedule})


async def list_schedules(request: Request) -> Response:
    return JSONResponse({"schedules": await deps.store(request).list_schedules()})


async def delete_schedule(request: Request) -> Response:
    name = param(request, "name")
    return JSONResponse({"deleted": await deps.store(request).delete_schedule(name)})


routes = [
    Route("/schedules", list_schedules, methods=["GET"]),
    Route("/schedules/{name}", get_schedule, methods=["GET"]),
    Route("/schedules/{name}", put_schedule, methods=["PUT"]),
    Route("/schedules/{name}", delete_schedule, methods=["DELETE"]),
]
