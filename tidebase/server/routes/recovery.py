"""`POST /runs/:runId/recover`: fire the run's recovery webhook now (reason `manual`).

Answers `{recoveryAttempt}` (the recorded try: status, HTTP status, response excerpt, error);
404 for an unknown run, 422 when the run has no recovery webhook, 503 when this server has no
TIDEBASE_WEBHOOK_SECRET to sign with, 409 when another delivery of the run is in flight.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.server import deps
from tidebase.server.body import read_body
from tidebase.server.errors import error
from tidebase.server.paths import param


async def recover(request: Request) -> Response:
    run_id = param(request, "runId")
    await read_body(request)  # optional {reason}: the reason recorded is always `manual`
    detail = await deps.store(request).detail(run_id)
    if detail is None:
        return error(404, "run not found")
    if not detail["run"].get("recoveryWebhook"):
        return error(422, "run has no recovery webhook", code="no_recovery_webhook")
    reconciler = request.app.state.reconciler
    if reconciler.sender is None:
        return error(
            503,
            "recovery webhooks are disabled: TIDEBASE_WEBHOOK_SECRET is not set on the server",
            code="webhook_secret_missing",
        )
    await reconciler.maintenance.request_recovery(run_id, "manual")
    attempt = await reconciler.sender.deliver_run(run_id)
    if attempt is None:
        return error(409, "another recovery delivery of this run is in flight", code="in_flight")
    return JSONResponse({"recoveryAttempt": attempt})


routes = [Route("/runs/{runId}/recover", recover, methods=["POST"])]
