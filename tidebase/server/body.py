"""Reading request bodies: a size limit (413) and strict JSON parsing (400, never a 500).

Beyond syntax, a body is refused when Postgres could not store it as `jsonb`: NaN/Infinity,
numbers that overflow a float, strings with NUL characters or unpaired surrogates. An empty
body reads as `{}`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from tidebase.server.validation import BadRequest, Body

# Deepest nesting a body may have. The SDK's codec stops user values at 200 levels; the
# request's own wrapping needs a few more. Every stored value must also read back, and reading
# goes through deeper call stacks than parsing did (about 960 levels failed there).
MAX_DEPTH = 256


class PayloadTooLarge(Exception):
    """The request body exceeds the server's limit (HTTP 413)."""

    def __init__(self, limit: int):
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class InvalidJSON(Exception):
    """The body is not a JSON document Tidebase can store (HTTP 400)."""


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"number {text[:40]} is out of range")
    return value


def _check_strings(value: Any) -> None:
    """Refuses NUL and unpaired surrogates anywhere in the document (Postgres cannot store them)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, path or "body")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key, f"{path}.{key}" if path else key)
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise BadRequest(path[:200], "must not contain NUL characters", code="invalid_string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            path[:200], "must not contain unpaired UTF-16 surrogates", code="invalid_string"
        ) from None


def parse_json(raw: bytes) -> Any:
    """The JSON document in `raw`; InvalidJSON or BadRequest when it is not storable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("request body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("request body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if text.count("[") + text.count("{") > MAX_DEPTH:  # else it cannot nest that deep
        _check_depth(value)
    if "\\u" in text:  # NUL and surrogates can only arrive escaped
        _check_strings(value)
    return value


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidJSON(f"request body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if _nests(child))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if _nests(child))


def _nests(value: Any) -> bool:
    return isinstance(value, dict | list)


async def read_bytes(request: Request, limit: int) -> bytes:
    """The raw body, at most `limit` bytes (PayloadTooLarge beyond, checked while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(limit)
        except ValueError:
            pass
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request) -> Body:
    """The request body as a JSON object (an empty body reads as `{}`)."""
    raw = await read_bytes(request, request.app.state.config.max_body_bytes)
    if not raw.strip():
        return Body({})
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise InvalidJSON("request body must be a JSON object")
    return Body(value)
