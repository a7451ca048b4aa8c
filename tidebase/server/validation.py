"""Request-body validation: typed accessors that answer 400 naming the field that is wrong.

A field sent as JSON `null` counts as absent. Identifiers (names, ids, keys) are limited in
length so that no value can exceed what a Postgres index accepts: a bad input is a 400 here,
never a database error.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload
from urllib.parse import urlsplit

from tidebase.errors import describe_number

# Identifiers: names, ids, keys. 255 characters and 1000 UTF-8 bytes keep any two of them
# together well under the btree row limit (~2700 bytes).
MAX_IDENTIFIER_CHARS = 255
MAX_IDENTIFIER_BYTES = 1000
# Free text stored as such (prompts, reasons, URLs, error names...).
MAX_TEXT_CHARS = 65_536

_BIGINT = (1 << 63) - 1
_INT32 = (1 << 31) - 1

MISSING: Any = object()


class BadRequest(Exception):
    """A request the server refuses before touching the database (HTTP 400)."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_type"):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.code = code

    def body(self) -> dict[str, Any]:
        path = [p for p in self.field.replace("]", "").replace("[", ".").split(".") if p]
        path = [int(p) if p.isdigit() else p for p in path]
        return {
            "error": "invalid request body",
            "message": str(self),
            "issues": [{"code": self.code, "path": path, "message": self.message}],
        }


def check_identifier(field: str, value: Any) -> str:
    """A non-empty string short enough to be indexed."""
    if not isinstance(value, str):
        raise BadRequest(field, f"must be a string, got {_type_name(value)}")
    if not value:
        raise BadRequest(field, "must not be empty", code="too_small")
    if len(value) > MAX_IDENTIFIER_CHARS or len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise BadRequest(
            field, f"must be at most {MAX_IDENTIFIER_CHARS} characters", code="too_big"
        )
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Body:
    """A JSON object request body with typed, validating accessors."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def __bool__(self) -> bool:
        return bool(self.data)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str) -> Any:
        """The field as sent (any JSON value), or MISSING when absent."""
        return self.data.get(name, MISSING)

    def json(self, name: str, default: Any = None) -> Any:
        """Any JSON value; `default` when absent or null."""
        value = self.data.get(name)
        return default if value is None else value

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise BadRequest(name, "is required", code="invalid_type")
        return value

    @overload
    def identifier(self, name: str, *, required: Literal[True]) -> str: ...
    @overload
    def identifier(self, name: str, *, required: bool = False) -> str | None: ...
    def identifier(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, required)
        return None if value is None else check_identifier(name, value)

    @overload
    def text(
        self, name: str, *, required: Literal[True], nonempty: bool = ..., max_chars: int = ...
    ) -> str: ...
    @overload
    def text(
        self, name: str, *, required: bool = ..., nonempty: bool = ..., max_chars: int = ...
    ) -> str | None: ...
    def text(
        self,
        name: str,
        *,
        required: bool = False,
        nonempty: bool = False,
        max_chars: int = MAX_TEXT_CHARS,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise BadRequest(name, f"must be a string, got {_type_name(value)}")
        if nonempty and not value:
            raise BadRequest(name, "must not be empty", code="too_small")
        if len(value) > max_chars:
            raise BadRequest(name, f"must be at most {max_chars} characters", code="too_big")
        return value

    def url(self, name: str, *, required: bool = False) -> str | None:
        return check_url(name, self.text(name, required=required, nonempty=True, max_chars=2048))

    def obj(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest(name, f"must be an object, got {_type_name(value)}")
        return value

    def boolean(self, name: str, *, required: bool = False) -> bool | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise BadRequest(name, f"must be a boolean, got {_type_name(value)}")
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        minimum: int = -_BIGINT,
        maximum: int = _BIGINT,
    ) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(name, f"must be an integer, got {_type_name(value)}")
        if not minimum <= value <= maximum:
            raise BadRequest(
                name,
                f"must be between {minimum} and {maximum}, got {describe_number(value)}",
                code="too_big",
            )
        return value

    def number(
        self,
        name: str,
        *,
        required: bool = False,
        minimum: float = -math.inf,
        maximum: float = math.inf,
    ) -> float | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadRequest(name, f"must be a number, got {_type_name(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf if value > 0 else -math.inf
        if not math.isfinite(number):
            raise BadRequest(
                name, f"must be a finite number, got {describe_number(value)}", code="too_big"
            )
        if not minimum <= number <= maximum:
            raise BadRequest(
                name,
                f"must be between {minimum:g} and {maximum:g}, got {describe_number(value)}",
                code="too_big",
            )
        return number

    @overload
    def choice(self, name: str, choices: tuple[str, ...], *, required: Literal[True]) -> str: ...
    @overload
    def choice(
        self, name: str, choices: tuple[str, ...], *, required: bool = False
    ) -> str | None: ...
    def choice(self, name: str, choices: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            raise BadRequest(
                name,
                f"must be one of {', '.join(choices)}, got {value!r}",
                code="invalid_enum_value",
            )
        return value

    def channels(self, name: str = "channels") -> list[dict[str, Any]] | None:
        """Webhook channels: `[{type: "webhook", url, secret?, events?: [str]}]`."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list):
            raise BadRequest(name, f"must be an array, got {_type_name(value)}")
        if len(value) > 100:
            raise BadRequest(name, "must have at most 100 entries", code="too_big")
        out = []
        for i, item in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(item, dict):
                raise BadRequest(where, f"must be an object, got {_type_name(item)}")
            entry = Body(item)
            if item.get("type") != "webhook":
                raise BadRequest(f"{where}.type", 'must be "webhook"', code="invalid_literal")
            channel: dict[str, Any] = {"type": "webhook", "url": _sub_url(entry, where)}
            secret = item.get("secret")
            if secret is not None:
                if not isinstance(secret, str) or len(secret) > 4096:
                    raise BadRequest(
                        f"{where}.secret", "must be a string of at most 4096 characters"
                    )
                channel["secret"] = secret
            events = item.get("events")
            if events is not None:
                if not isinstance(events, list) or not all(
                    isinstance(e, str) and len(e) <= MAX_IDENTIFIER_CHARS for e in events
                ):
                    raise BadRequest(f"{where}.events", "must be an array of event type names")
                channel["events"] = events
            out.append(channel)
        return out


def _sub_url(entry: Body, where: str) -> str:
    try:
        url = check_url("url", entry.text("url", required=True, nonempty=True, max_chars=2048))
    except BadRequest as exc:
        raise BadRequest(f"{where}.{exc.field}", exc.message, code=exc.code) from None
    return url


@overload
def check_url(field: str, value: str) -> str: ...
@overload
def check_url(field: str, value: str | None) -> str | None: ...
def check_url(field: str, value: str | None) -> str | None:
    """An absolute http(s) URL (webhooks are POSTed to it)."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(field, "must be an absolute http(s) URL", code="invalid_string")
    return value
