"""How failures become HTTP answers: the reference API's status codes and JSON error bodies.

Routes raise; these handlers answer. Bad input is a 4xx naming what was wrong; only a server bug
is a 500 `{error: "internal server error"}` (logged with its traceback).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidebase.errors import (
    InputMismatch,
    LeaseLost,
    RunCancelled,
    RunNotFound,
    StoreUnavailable,
)
from tidebase.server.body import InvalidJSON, PayloadTooLarge
from tidebase.server.validation import BadRequest
from tidebase.store.wire import BadCursor, RequestRejected

_log = logging.getLogger("tidebase.server")


class HTTPError(Exception):
    """An answer a route gives up with: status and JSON body."""

    def __init__(self, status: int, error: str, **extra: Any):
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}


class ErrorResponse(JSONResponse):
    """A JSON error body that may quote the client's own text, which can hold a lone UTF-16
    surrogate (U+D800 escaped is valid JSON, raw it is not valid UTF-8): written as a JSON
    escape instead of failing to encode (a 500 for a 400)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        # Only a lone surrogate fails to encode, and only inside a string, where the
        # backslash-u escape that backslashreplace writes is JSON's escape for it.
        return text.encode("utf-8", "backslashreplace")


def error(status: int, text: str, /, **extra: Any) -> JSONResponse:
    """A JSON error answer: `{error: text, ...extra}`."""
    return ErrorResponse({"error": text, **extra}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return ErrorResponse(exc.body, status_code=exc.status)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return ErrorResponse(exc.body(), status_code=400)


async def _invalid_json(request: Request, exc: Exception) -> Response:
    return error(400, "invalid JSON", message=str(exc))


async def _rejected(request: Request, exc: Exception) -> Response:
    return error(400, "invalid request body", message=str(exc))


async def _too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PayloadTooLarge)
    return error(413, "request body too large", code="body_too_large", limit=exc.limit)


async def _run_not_found(request: Request, exc: Exception) -> Response:
    return error(404, "run not found")


async def _lease_lost(request: Request, exc: Exception) -> Response:
    return error(409, "lease lost", code="lease_lost", message=str(exc))


async def _cancelled(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunCancelled)
    return error(409, "run is cancelled", code="run_cancelled", reason=exc.reason, message=str(exc))


async def _input_mismatch(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputMismatch)
    return error(
        409,
        "input mismatch",
        code="input_mismatch",
        step=exc.step,
        expectedInputHash=exc.expected_hash,
        actualInputHash=exc.actual_hash,
        message=str(exc),
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    _log.warning("database unavailable: %s", exc)
    return error(503, "database unavailable", code="store_unavailable")


async def _internal(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, "internal server error")


EXCEPTION_HANDLERS = {
    HTTPError: _http_error,
    BadRequest: _bad_request,
    BadCursor: _rejected,
    InvalidJSON: _invalid_json,
    RequestRejected: _rejected,
    PayloadTooLarge: _too_large,
    RunNotFound: _run_not_found,
    LeaseLost: _lease_lost,
    RunCancelled: _cancelled,
    InputMismatch: _input_mismatch,
    StoreUnavailable: _unavailable,
    Exception: _internal,
}
