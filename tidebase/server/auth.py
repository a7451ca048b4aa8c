"""API-key authentication: with TIDEBASE_API_KEY set, every route but /health needs the key.

The key comes as `Authorization: Bearer <key>`; the events stream also accepts `?token=<key>`
(browsers' EventSource cannot set headers). Keys are compared in constant time. Failure is
401 `{error: "unauthorized"}`.
"""

from __future__ import annotations

import hmac
import json
import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

_EVENTS_PATH = re.compile(r"^/runs/[^/]+/events/?$")
_UNAUTHORIZED = json.dumps({"error": "unauthorized"}).encode()


class ApiKeyMiddleware:
    """Rejects requests without the configured API key (pure ASGI: no per-request overhead)."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None or scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        candidate: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    candidate = token.strip()
                break
        if candidate is None and _EVENTS_PATH.match(scope["path"]):
            query = scope.get("query_string", b"").decode("latin-1")
            for key, value in parse_qsl(query, keep_blank_values=True):
                if key == "token":
                    candidate = value.encode("utf-8", "surrogateescape")
                    break
        return candidate is not None and hmac.compare_digest(candidate, self._key)
