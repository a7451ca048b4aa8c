"""Child runs (fan-out): one child per (parent, edge name), however often it is asked for."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.errors import RunNotFound
from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param


async def create_child(request: Request) -> Response:
    parent_id = param(request, "runId")
    body = await read_body(request)
    name = body.identifier("name", required=True)
    workflow = body.identifier("workflowName", required=True)
    try:
        result = await deps.store(request).create_child(
            parent_id,
            name,
            workflow,
            body.json("input"),
            body.obj("metadata"),
            body.url("recoveryWebhook"),
            body.channels(),
            body.identifier("edgeType"),
            body.obj("edgeMetadata"),
        )
    except RunNotFound:
        return error(404, "parent run not found")
    return JSONResponse(result)


routes = [Route("/runs/{runId}/children", create_child, methods=["POST"])]
