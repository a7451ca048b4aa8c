"""Usage ledger: token, cost and other usage records of a run.

Extensions (our SDK): `key` makes the record idempotent (a second write with the same key
records nothing and answers `inserted: false`), `leaseOwner` fences it by the run lease, and
`stepName` ties it to a step by name. Without them (0.7 clients) every request is a new record.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.paths import param
from tidebase.server.validation import MAX_IDENTIFIER_CHARS, BadRequest

# numeric(20, 10): up to 10 integer digits
_MAX_COST_USD = 9_999_999_999.0
_MAX_TOKENS = (1 << 63) - 1


async def record_usage(request: Request) -> Response:
    run_id = param(request, "runId")
    body = await read_body(request)
    short = {"max_chars": MAX_IDENTIFIER_CHARS}
    owner = body.identifier("leaseOwner")
    step_id = body.identifier("stepId")
    if owner is not None and step_id is not None:
        # The fenced (SDK) path ties a record to its step by name, as it runs inside it.
        raise BadRequest("stepId", "is not accepted with leaseOwner: send stepName instead")
    result = await deps.store(request).record_usage_json(
        run_id,
        owner=owner,
        key=body.identifier("key"),
        step_id=step_id,
        step_name=body.identifier("stepName"),
        kind=body.text("kind", nonempty=True, **short),
        provider=body.text("provider", **short),
        model=body.text("model", **short),
        label=body.text("label", **short),
        quantity=body.number("quantity"),
        unit=body.text("unit", **short),
        input_tokens=body.integer("inputTokens", minimum=0, maximum=_MAX_TOKENS),
        output_tokens=body.integer("outputTokens", minimum=0, maximum=_MAX_TOKENS),
        total_tokens=body.integer("totalTokens", minimum=0, maximum=_MAX_TOKENS),
        cost_usd=body.number("costUsd", minimum=0, maximum=_MAX_COST_USD),
        metadata=body.obj("metadata"),
    )
    return JSONResponse(result)


routes = [Route("/runs/{runId}/usage", record_usage, methods=["POST"])]
