"""Path parameters that may contain any character, `/` included.

Clients percent-encode ids and names in paths (a workflow name or a caller-chosen run id may
contain `/`). ASGI servers decode the path before routing, which would split such a segment, so
`RawPathMiddleware` routes on the raw (still encoded) path and `param` decodes each parameter.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tidebase.server.validation import BadRequest, check_identifier

_RAW = "tidebase.raw_path"


class RawPathMiddleware:
    """Routes on the undecoded request path (when the server provides it)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw:
                try:
                    path = raw.split(b"?", 1)[0].decode("ascii")
                except UnicodeDecodeError:
                    path = None
                if path is not None:
                    scope["path"] = path
                    scope[_RAW] = True
        await self.app(scope, receive, send)


def param(request: Request, name: str) -> str:
    """A decoded path parameter: a non-empty identifier (400 naming it otherwise)."""
    value = request.path_params[name]
    if request.scope.get(_RAW):
        try:
            value = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(
                name, "is not valid percent-encoded UTF-8", code="invalid_string"
            ) from None
    if "\x00" in value:
        raise BadRequest(name, "must not contain NUL characters", code="invalid_string")
    return check_identifier(name, value)
