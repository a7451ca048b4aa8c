"""Steps: the reference checkpoint protocol and the SDK's fast path.

Reference (0.7 clients): `steps/begin` answers an `action` discriminator and hands out a step
lease; `steps/:stepId/complete` and `/fail` are fenced by that step lease.

Extensions (our SDK; fenced by the *run* lease, migrations/002): `steps/start` records that a
side-effecting step started, `steps/checkpoint` writes a step's output in one request (a pure
step costs exactly this one round trip), `steps/checkpoints` writes a batch of them in one
transaction (pipelined checkpoints), `steps/failure` records a failure with its resume
decision, and `steps/resolve` is the operator action for a parked step.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param
from tidebase.server.validation import BadRequest, Body
from tidebase.store.base import MAX_CHECKPOINT_BATCH
from tidebase.store.wire import NotResolvable

RESUME_DECISIONS = ("auto_retry", "safe_replay", "manual_review", "fail_hard")
STEP_FAILURE_STATUSES = ("failed", "failed_retryable", "manual_review")
_MAX_HASH_CHARS = 1024
_SPAN_ID_CHARS = 64


async def begin_step(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    result = await deps.store(request).begin_step(
        run_id,
        _name(body),
        _input_hash(body),
        body.json("input"),
        body.obj("options"),
        body.identifier("leaseOwner") or deps.new_lease_owner(),
        _lease_ms(request, body),
    )
    return JSONResponse(result)


async def complete_step(request: Request) -> Response:
    run_id = param(request, "runId")
    step_id = param(request, "stepId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner", required=True)
    result = await deps.store(request).complete_leased_step(
        run_id, step_id, owner, body.json("output")
    )
    if result["outcome"] != "completed":
        return error(409, "step not found or lease lost")
    return JSONResponse({"step": result["step"]})


async def fail_step(request: Request) -> Response:
    run_id = param(request, "runId")
    step_id = param(request, "stepId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner", required=True)
    result = await deps.store(request).fail_leased_step(
        run_id,
        step_id,
        owner,
        body.json("error"),
        bool(body.boolean("retryable")),
        body.choice("resumeDecision", RESUME_DECISIONS),
    )
    if result["outcome"] != "failed":
        return error(409, "step not found or lease lost")
    return JSONResponse({"step": result["step"]})


# -- extensions: the SDK's run-lease-fenced step writes -----------------------------------


def _name(body: Body) -> str:
    name = body.identifier("name", required=True)
    return name


def _input_hash(body: Body) -> str:
    digest = body.text("inputHash", required=True, nonempty=True, max_chars=_MAX_HASH_CHARS)
    return digest


def _lease_ms(request: Request, body: Body) -> int:
    return (
        body.integer("leaseMs", minimum=deps.MIN_LEASE_MS, maximum=deps.MAX_LEASE_MS)
        or deps.config(request).lease_ms
    )


def _json_text(text: str) -> Response:
    return Response(text, media_type="application/json")


_REPLAY_MODES = ("auto", "manual", "never")


def _checked_options(body: Body) -> dict[str, Any] | None:
    """The resume contract of the SDK's extension routes, validated (the reference's
    `steps/begin` stores options as they come, for 0.7 clients)."""
    options = body.obj("options")
    if options is None:
        return None
    retries = options.get("retries")
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 1000
    ):
        raise BadRequest("options.retries", "must be an integer between 0 and 1000")
    replay = options.get("replay")
    if replay is not None and replay not in _REPLAY_MODES:
        raise BadRequest("options.replay", f"must be one of {', '.join(_REPLAY_MODES)}")
    effects = options.get("sideEffects")
    if effects is not None and (
        not isinstance(effects, list) or not all(isinstance(e, str) for e in effects)
    ):
        raise BadRequest("options.sideEffects", "must be a list of strings")
    key = options.get("idempotencyKey")
    if key is not None and not isinstance(key, str):
        raise BadRequest("options.idempotencyKey", "must be a string")
    return options


def _step_key(body: Body) -> dict[str, Any]:
    return {"owner": body.identifier("leaseOwner", required=True), **_step_fields(body)}


def _step_fields(body: Body) -> dict[str, Any]:
    """The step a write is about: name, parent, input hash, input, options."""
    return {
        "name": _name(body),
        "parent": body.identifier("parent"),
        "input_hash": _input_hash(body),
        "input": body.json("input"),
        "options": _checked_options(body),
    }


def _checkpoint(body: Body) -> dict[str, Any]:
    """What a checkpoint writes besides the step key: its output and span context."""
    return {
        "output": body.json("output"),
        "trace_id": body.text("traceId", max_chars=_SPAN_ID_CHARS),
        "span_id": body.text("spanId", max_chars=_SPAN_ID_CHARS),
    }


async def start_step(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    key = _step_key(body)
    result = await deps.store(request).start_step_text(
        run_id, lease_ms=_lease_ms(request, body), **key
    )
    return _json_text(result)


async def checkpoint_step(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    key = _step_key(body)
    result = await deps.store(request).checkpoint_text(
        run_id, lease_ms=_lease_ms(request, body), **key, **_checkpoint(body)
    )
    return _json_text(result)


async def checkpoint_steps(request: Request) -> Response:
    """Several checkpoints of one run in one request and one transaction, in order: the SDK's
    pipelined checkpoints. All or nothing: a refused item (named by its index) stores none."""
    run_id = param(request, "runId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner", required=True)
    lease_ms = _lease_ms(request, body)
    entries = body.raw("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise BadRequest("checkpoints", "must be a non-empty array")
    if len(entries) > MAX_CHECKPOINT_BATCH:
        raise BadRequest(
            "checkpoints", f"must have at most {MAX_CHECKPOINT_BATCH} entries", code="too_big"
        )
    items = [_checkpoint_item(entry, f"checkpoints[{i}]") for i, entry in enumerate(entries)]
    await deps.store(request).checkpoints(run_id, owner, lease_ms, items)
    return JSONResponse({"written": len(items)})


def _checkpoint_item(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise BadRequest(where, "must be an object")
    item = Body(entry)
    try:
        return {**_step_fields(item), **_checkpoint(item)}
    except BadRequest as exc:
        raise BadRequest(f"{where}.{exc.field}", exc.message, code=exc.code) from None


async def record_step_failure(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    key = _step_key(body)
    decision = body.choice("resumeDecision", RESUME_DECISIONS, required=True)
    status = body.choice("status", STEP_FAILURE_STATUSES, required=True)
    result = await deps.store(request).step_failure_text(
        run_id,
        error=body.json("error", {}),
        status=status,
        decision=decision,
        trace_id=body.text("traceId", max_chars=_SPAN_ID_CHARS),
        span_id=body.text("spanId", max_chars=_SPAN_ID_CHARS),
        **key,
    )
    return _json_text(result)


async def resolve_step(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    name = _name(body)
    retry = bool(body.boolean("retry"))
    if not retry and "output" not in body.data:
        raise BadRequest("output", "is required unless retry is true")
    try:
        resolved = await deps.store(request).resolve_step_json(
            run_id, name, retry=retry, output=body.json("output")
        )
    except NotResolvable as exc:
        return error(409, "step cannot be resolved now", code=exc.reason, message=str(exc))
    return JSONResponse(
        {"step": {"id": resolved["id"], "name": name, "status": resolved["status"]}}
    )


routes = [
    Route("/runs/{runId}/steps/begin", begin_step, methods=["POST"]),
    Route("/runs/{runId}/steps/start", start_step, methods=["POST"]),
    Route("/runs/{runId}/steps/checkpoint", checkpoint_step, methods=["POST"]),
    Route("/runs/{runId}/steps/checkpoints", checkpoint_steps, methods=["POST"]),
    Route("/runs/{runId}/steps/failure", record_step_failure, methods=["POST"]),
    Route("/runs/{runId}/steps/resolve", resolve_step, methods=["POST"]),
    Route("/runs/{runId}/steps/{stepId}/complete", complete_step, methods=["POST"]),
    Route("/runs/{runId}/steps/{stepId}/fail", fail_step, methods=["POST"]),
]
