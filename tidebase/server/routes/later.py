"""Routes of the reference API that this server does not serve.

The credential broker is not part of this server: its routes answer 503 `broker_disabled`, as
the reference does when it runs without an API key, so a client fails clearly instead of
misreading a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidebase.server.errors import error

_ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def broker_disabled(request: Request) -> Response:
    return error(
        503,
        "credential broker disabled: this server does not include the agent-auth endpoints",
        code="broker_disabled",
    )


routes = [
    Route("/agents", broker_disabled, methods=_ALL),
    Route("/agents/{rest:path}", broker_disabled, methods=_ALL),
    Route("/resources", broker_disabled, methods=_ALL),
    Route("/resources/{rest:path}", broker_disabled, methods=_ALL),
    Route("/audit", broker_disabled, methods=_ALL),
    Route("/runs/{runId}/grants", broker_disabled, methods=_ALL),
    Route("/runs/{runId}/grants/{rest:path}", broker_disabled, methods=_ALL),
]
