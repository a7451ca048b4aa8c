"""Gates: human approval points, created once per (run, name) and resolved exactly once."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param
from tidebase.server.validation import MAX_IDENTIFIER_CHARS

DECISIONS = ("approved", "rejected", "canceled")


async def begin_gate(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    name = body.identifier("name", required=True)
    prompt = body.text("prompt", required=True, nonempty=True)
    body.integer("timeoutMs", minimum=1)  # accepted, not stored: clients enforce it by polling
    result = await deps.store(request).begin_gate(
        run_id, name, prompt, body.json("data"), body.channels(), body.json("capability")
    )
    if result["outcome"] == "cancelled":
        return error(409, "run is cancelled", code="run_cancelled")
    return JSONResponse({"action": result["action"], "gate": result["gate"]})


async def get_gate(request: Request) -> Response:
    run_id = param(request, "runId")
    gate_id = param(request, "gateId")
    found = await deps.store(request).get_gate(run_id, gate_id)
    if found is None:
        return error(404, "gate not found")
    return JSONResponse(found)


async def resolve_gate(request: Request) -> Response:
    run_id = param(request, "runId")
    gate_id = param(request, "gateId")
    body = await read_body(request)
    token = body.text("token", required=True, nonempty=True, max_chars=MAX_IDENTIFIER_CHARS)
    decision = body.choice("decision", DECISIONS, required=True)
    result = await deps.store(request).resolve_gate(
        run_id,
        gate_id,
        token,
        decision,
        body.text("actor", max_chars=MAX_IDENTIFIER_CHARS),
        body.json("payload"),
    )
    if result["outcome"] != "resolved":
        return error(409, "gate not found, already resolved, or invalid token")
    return JSONResponse({"gate": result["gate"]})


routes = [
    Route("/runs/{runId}/gates/begin", begin_gate, methods=["POST"]),
    Route("/runs/{runId}/gates/{gateId}", get_gate, methods=["GET"]),
    Route("/runs/{runId}/gates/{gateId}/resolve", resolve_gate, methods=["POST"]),
]
