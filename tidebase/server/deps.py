"""What a route needs from the running app: the store, the event hub, the settings."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from starlette.requests import Request

from tidebase.server.validation import BadRequest, check_identifier

if TYPE_CHECKING:
    from tidebase.server.config import ServerConfig
    from tidebase.server.hub import EventHub
    from tidebase.store.wire import WireStore

WORKER_HEADER = "x-tidebase-worker"
MIN_LEASE_MS = 1000
MAX_LEASE_MS = 86_400_000


def store(request: Request) -> WireStore:
    return request.app.state.store


def hub(request: Request) -> EventHub:
    return request.app.state.hub


def config(request: Request) -> ServerConfig:
    return request.app.state.config


def worker_header(request: Request) -> str | None:
    """The caller's worker id from `x-tidebase-worker`, if sent."""
    value = request.headers.get(WORKER_HEADER)
    if value is None or value == "":
        return None
    if "\x00" in value:
        raise BadRequest(WORKER_HEADER, "must not contain NUL characters", code="invalid_string")
    return check_identifier(WORKER_HEADER, value)


def new_lease_owner() -> str:
    return str(uuid.uuid4())


def query_int(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    """An integer query parameter (400 naming it when malformed or out of range)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, f"must be an integer, got {raw[:40]!r}") from None
    if not minimum <= value <= maximum:
        raise BadRequest(name, f"must be between {minimum} and {maximum}", code="too_big")
    return value


def query_text(request: Request, name: str) -> str | None:
    """An identifier-like query parameter, or None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if "\x00" in raw:
        raise BadRequest(name, "must not contain NUL characters", code="invalid_string")
    return check_identifier(name, raw)
