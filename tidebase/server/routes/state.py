"""Run state (current value, versioned per named stream) and labelled snapshots.

Extensions: `leaseOwner` (fences the write by the run lease) and `step` (the step that wrote it)
on PUT/PATCH, and `GET /runs/:id/state` for the current value.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param
from tidebase.server.validation import MAX_IDENTIFIER_CHARS, BadRequest, Body, check_identifier

IMPORTANCE = ("transient", "normal", "checkpoint", "milestone")


def _actor(body: Body, name: str) -> str | None:
    return body.text(name, max_chars=MAX_IDENTIFIER_CHARS)


async def _write_state(request: Request, *, patch: bool) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner")
    # 0.7 clients: a missing or null value is stored as {} (reference). Our SDK (it sends its
    # lease owner) stores exactly what it sends, null included, as direct mode does.
    value = body.json("value") if owner is not None else body.json("value", {})
    if patch and not isinstance(value, dict):
        raise BadRequest("value", "must be an object for PATCH (it is merged key by key)")
    result = await deps.store(request).write_state_json(
        run_id,
        owner,
        value,
        patch=patch,
        stream=body.identifier("stream"),
        label=body.text("label", nonempty=True, max_chars=MAX_IDENTIFIER_CHARS),
        reason=body.text("reason"),
        importance=body.choice("importance", IMPORTANCE),
        metadata=body.obj("metadata"),
        created_by=_actor(body, "createdBy"),
        step=body.identifier("step"),
    )
    return JSONResponse(result)


async def put_state(request: Request) -> Response:
    return await _write_state(request, patch=False)


async def patch_state(request: Request) -> Response:
    return await _write_state(request, patch=True)


async def get_state(request: Request) -> Response:
    run_id = param(request, "runId")
    found, state = await deps.store(request).state_json(run_id)
    if not found:
        return error(404, "run not found")
    return JSONResponse({"state": state})


async def save_state(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    label = body.text("label", required=True, nonempty=True, max_chars=MAX_IDENTIFIER_CHARS)
    version = await deps.store(request).save_state(
        run_id,
        stream=body.identifier("stream") or "run",
        label=label,
        reason=body.text("reason"),
        importance=body.choice("importance", IMPORTANCE) or "milestone",
        metadata=body.obj("metadata"),
        created_by=_actor(body, "createdBy"),
    )
    if version is None:
        return error(404, "run state not found")
    return JSONResponse({"stateVersion": version})


async def state_versions(request: Request) -> Response:
    run_id = param(request, "runId")
    versions = await deps.store(request).state_versions(
        run_id,
        stream=deps.query_text(request, "stream"),
        labeled=request.query_params.get("labeled") == "true",
    )
    if versions is None:
        return error(404, "run not found")
    return JSONResponse({"stateVersions": versions})


async def create_snapshot(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    label = body.text("label", required=True, nonempty=True, max_chars=MAX_IDENTIFIER_CHARS)
    target = body.obj("target")
    if target is None:
        target_type, target_id = "run", run_id
    else:
        target_type = check_identifier("target.type", target.get("type"))
        target_id = check_identifier("target.id", target.get("id"))
    if len(target_type) + 1 + len(target_id) > MAX_IDENTIFIER_CHARS:
        raise BadRequest(
            "target", f"type:id must be at most {MAX_IDENTIFIER_CHARS} characters", code="too_big"
        )
    snapshot = await deps.store(request).snapshot(
        run_id,
        label=label,
        state=body.json("state", {}),
        target_type=target_type,
        target_id=target_id,
        reason=body.text("reason"),
        metadata=body.obj("metadata"),
        created_by=_actor(body, "createdBy"),
    )
    return JSONResponse({"snapshot": snapshot})


async def list_snapshots(request: Request) -> Response:
    run_id = param(request, "runId")
    snapshots = await deps.store(request).snapshots(run_id)
    if snapshots is None:
        return error(404, "run not found")
    return JSONResponse({"snapshots": snapshots})


routes = [
    Route("/runs/{runId}/state", put_state, methods=["PUT"]),
    Route("/runs/{runId}/state", patch_state, methods=["PATCH"]),
    Route("/runs/{runId}/state", get_state, methods=["GET"]),
    Route("/runs/{runId}/state/save", save_state, methods=["POST"]),
    Route("/runs/{runId}/state/versions", state_versions, methods=["GET"]),
    Route("/runs/{runId}/snapshots", create_snapshot, methods=["POST"]),
    Route("/runs/{runId}/snapshots", list_snapshots, methods=["GET"]),
]
