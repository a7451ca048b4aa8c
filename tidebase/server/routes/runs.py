"""Runs: create, list, detail, and the run lease (begin, heartbeat, complete, fail, cancel).

Extensions (ignored by 0.7 clients): `GET /runs` filters and paging; `POST /runs/:id/begin`
with a JSON body `{workflowName, input, create, leaseOwner, leaseMs, traceId, spanId}` that can
create the run and answers with every checkpoint (`outcome`, `steps`, `previous`); `leaseMs` on
heartbeat; `leaseOwner` on complete/fail, which fences the write by the run lease;
`POST /runs/:id/release` for an interrupted worker to give its lease up; `recoveryWebhook` on
begin (sets the run's webhook); `outcome` on cancel (cancelled | already).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.contract import RUN_STATUS_FILTERS
from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import HTTPError, error
from tidebase.server.paths import param
from tidebase.server.validation import MAX_IDENTIFIER_CHARS, BadRequest

_SPAN_ID_CHARS = 64


async def create_run(request: Request) -> Response:
    workflow = param(request, "workflowName")
    body = await read_body(request)
    data = await deps.store(request).create_run(
        workflow,
        body.json("input"),
        body.obj("metadata"),
        body.url("recoveryWebhook"),
        body.channels(),
    )
    return JSONResponse(data)


async def list_runs(request: Request) -> Response:
    status = deps.query_text(request, "status")
    if status is not None and status not in RUN_STATUS_FILTERS:
        raise BadRequest(
            "status", f"must be one of {', '.join(RUN_STATUS_FILTERS)}", code="invalid_enum_value"
        )
    runs, next_cursor = await deps.store(request).runs_page(
        status=status,
        workflow=deps.query_text(request, "workflow"),
        limit=deps.query_int(request, "limit", 100, minimum=1, maximum=1000),
        cursor=request.query_params.get("cursor") or None,
    )
    return JSONResponse({"runs": runs, "nextCursor": next_cursor})


async def run_detail(request: Request) -> Response:
    run_id = param(request, "runId")
    detail = await deps.store(request).detail(run_id)
    if detail is None:
        return error(404, "run not found")
    return JSONResponse(detail)


async def begin_run(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner") or deps.worker_header(request) or deps.new_lease_owner()
    workflow = body.identifier("workflowName")
    create = bool(body.boolean("create"))
    if create and workflow is None:
        raise BadRequest("workflowName", "is required when create is true")
    webhook = body.url("recoveryWebhook")
    lease_ms = (
        body.integer("leaseMs", minimum=deps.MIN_LEASE_MS, maximum=deps.MAX_LEASE_MS)
        or deps.config(request).lease_ms
    )
    begun = await deps.store(request).begin(
        run_id,
        workflow,
        body.json("input") if create else None,
        owner,
        lease_ms,
        create=create,
        trace_id=body.text("traceId", max_chars=_SPAN_ID_CHARS),
        span_id=body.text("spanId", max_chars=_SPAN_ID_CHARS),
    )
    outcome = begun["outcome"]
    run = begun["run"]
    if webhook is not None and outcome == "begun":
        await deps.store(request).set_recovery_webhook(run_id, webhook)
        run = {**run, "recoveryWebhook": webhook}
    if outcome == "cancelled":
        return error(409, "run is cancelled", code="run_cancelled", run=run, outcome=outcome)
    if outcome == "leased":
        return error(409, "run is leased", leaseOwner=run["leaseOwner"], run=run, outcome=outcome)
    if outcome == "input_mismatch":
        return error(
            409,
            "run was created with a different input",
            code="run_input_mismatch",
            run=run,
            outcome=outcome,
        )
    if outcome == "workflow_mismatch":
        return error(
            409,
            "run belongs to another workflow",
            code="workflow_mismatch",
            run=run,
            outcome=outcome,
        )
    answer = {"run": run, "leaseOwner": owner}
    if body:  # the SDK's fast path: every checkpoint of the run in the same round trip
        answer.update(outcome=outcome, steps=begun["steps"], previous=begun["previous"])
    return JSONResponse(answer)


async def heartbeat(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    if not body.has("leaseOwner"):
        raise HTTPError(
            400,
            "leaseOwner is required",
            message="leaseOwner: is required",
            issues=[{"code": "invalid_type", "path": ["leaseOwner"], "message": "is required"}],
        )
    owner = body.identifier("leaseOwner", required=True)
    lease_ms = (
        body.integer("leaseMs", minimum=deps.MIN_LEASE_MS, maximum=deps.MAX_LEASE_MS)
        or deps.config(request).lease_ms
    )
    result = await deps.store(request).extend_lease(run_id, owner, lease_ms)
    if result["outcome"] == "extended":
        return JSONResponse({"run": result["run"]})
    code = "run_cancelled" if result["outcome"] == "cancelled" else "lease_lost"
    return error(409, "lease lost", code=code, run=result["run"])


async def complete_run(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    result = await deps.store(request).finish(
        run_id, body.identifier("leaseOwner"), "completed", result=body.json("result")
    )
    return _finished(result, with_requeued=False)


async def fail_run(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    result = await deps.store(request).finish(
        run_id,
        body.identifier("leaseOwner"),
        "failed",
        error=body.json("error", {}),
        failure_class=body.text("failureClass", max_chars=MAX_IDENTIFIER_CHARS),
    )
    return _finished(result, with_requeued=True)


def _finished(result: dict, *, with_requeued: bool) -> Response:
    if result["outcome"] == "lease_lost":
        return error(409, "lease lost", code="lease_lost", run=result["run"])
    answer = {"run": result["run"], "outcome": result["outcome"]}
    if with_requeued:
        answer["requeued"] = result["requeued"]
    return JSONResponse(answer)


async def release_run(request: Request) -> Response:
    """Extension: an interrupted worker gives its lease up so the next attempt starts at once."""
    run_id = param(request, "runId")
    body = await read_body(request)
    owner = body.identifier("leaseOwner", required=True)
    released = await deps.store(request).release(run_id, owner)
    return JSONResponse({"released": released})


async def cancel_run(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    result = await deps.store(request).cancel(
        run_id, body.text("reason"), body.text("actor", max_chars=MAX_IDENTIFIER_CHARS)
    )
    if result["outcome"] == "completed":
        return error(409, "run already completed", run=result["run"])
    return JSONResponse({"run": result["run"], "outcome": result["outcome"]})


routes = [
    Route("/runs", list_runs, methods=["GET"]),
    Route("/runs/{workflowName}", create_run, methods=["POST"]),
    Route("/runs/{runId}", run_detail, methods=["GET"]),
    Route("/runs/{runId}/begin", begin_run, methods=["POST"]),
    Route("/runs/{runId}/heartbeat", heartbeat, methods=["POST"]),
    Route("/runs/{runId}/complete", complete_run, methods=["POST"]),
    Route("/runs/{runId}/fail", fail_run, methods=["POST"]),
    Route("/runs/{runId}/cancel", cancel_run, methods=["POST"]),
    Route("/runs/{runId}/release", release_run, methods=["POST"]),
]
