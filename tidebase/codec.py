"""Step output encoding: Python values to JSON that Postgres stores, and back on replay.

Plain JSON (dict with str keys, list, str, int, finite float, bool, None) is stored as is, so
other Tidebase clients can read it. Richer values are stored in a tagged envelope
`{"__tidebase__": TAG, ...}`: pydantic models, dataclasses, Agents SDK `RunResult`s, tuples,
datetimes, dates, UUIDs, Decimals and bytes. Anything else fails at record time with an error
naming the step, the type and where in the value it sits. No pickle, ever.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import importlib
import math
import sys
import uuid
from typing import Any

from tidebase import _agents_result
from tidebase.errors import SerializationError

_TAG = "__tidebase__"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _importable(cls: type) -> bool:
    if "<locals>" in cls.__qualname__:
        return False
    try:
        return _import_class(_class_path(cls)) is cls
    except Exception:  # noqa: BLE001 - any failure means it cannot be rebuilt at replay
        return False


def _import_class(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_pydantic(value: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


_MAX_DEPTH = 200


class _Fail(Exception):
    """Raised deep inside a value; containers add their path segment on the way out."""

    def __init__(self, type_name: str, hint: str = ""):
        self.type_name, self.hint = type_name, hint
        self.segments: list[str] = []


def _fail(value: Any, hint: str = "") -> _Fail:
    return _Fail(type(value).__qualname__, hint)


def _check_str(value: str) -> Any:
    """Strings Postgres jsonb cannot hold: NUL is escaped, lone surrogates are refused."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(value, "the string is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        return {_TAG: "str", "v": value.split("\x00")}
    return value


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise _fail(key, "dict keys must be strings")
    if "\x00" in key or _check_str(key) is not key:
        raise _fail(key, "dict keys cannot contain NUL characters")
    return key


def _items(pairs: Any, depth: int) -> dict[str, Any]:
    out = {}
    for key, item in pairs:
        name = _key(key)
        try:
            out[name] = _encode(item, depth + 1)
        except _Fail as exc:
            exc.segments.append(f".{name}")
            raise
    return out


def _sequence(values: Any, depth: int) -> list[Any]:
    out = []
    for i, item in enumerate(values):
        try:
            out.append(_encode(item, depth + 1))
        except _Fail as exc:
            exc.segments.append(f"[{i}]")
            raise
    return out


def _encode(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(value, "NaN and infinity are not JSON")
        return value
    if depth > _MAX_DEPTH:
        raise _fail(value, f"nested more than {_MAX_DEPTH} levels deep (a cycle?)")
    if isinstance(value, dict):
        out = _items(value.items(), depth)
        return {_TAG: "dict", "v": out} if _TAG in out else out
    if isinstance(value, list):
        return _sequence(value, depth)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {_TAG: "tuple", "v": _sequence(value, depth)}
    if _agents_result.is_run_result(value):
        output_type = type(getattr(value, "final_output", None))
        if (_is_pydantic(value.final_output) or dataclasses.is_dataclass(value.final_output)) and (
            not _importable(output_type)
        ):
            raise _fail(
                value.final_output,
                "the agent's output_type must be defined at module level so replay can rebuild it",
            )
        try:
            data = _agents_result.encode_run_result(value)
        except (TypeError, ValueError) as exc:
            raise _fail(value, str(exc)) from exc
        return {_TAG: "agents.run_result", "v": _encode(data, depth + 1)}
    if _is_pydantic(value):
        cls = type(value)
        if not _importable(cls):
            raise _fail(value, "define the model at module level so replay can rebuild it")
        try:
            data = value.model_dump(mode="json")
        except Exception as exc:
            raise _fail(value, f"model_dump failed: {exc}") from exc
        return {_TAG: "pydantic", "cls": _class_path(cls), "v": _encode(data, depth + 1)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not _importable(cls):
            raise _fail(value, "define the dataclass at module level so replay can rebuild it")
        fields = _items(
            ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.init), depth
        )
        return {_TAG: "dataclass", "cls": _class_path(cls), "v": fields}
    if isinstance(value, _dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    raise _fail(value)


def encode(value: Any, *, what: str = "value") -> Any:
    """The JSON-safe form of `value`; raises SerializationError naming `what`, the type and
    where in the value it sits."""
    try:
        return _encode(value, 0)
    except _Fail as exc:
        path = "".join(reversed(exc.segments)).lstrip(".")
        raise SerializationError(what, path, exc.type_name, exc.hint) from None


def decode(data: Any) -> Any:
    """Rebuilds the value that `encode` stored."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    v = data.get("v")
    if tag == "str":
        return "\x00".join(v)
    if tag == "dict":
        return {k: decode(item) for k, item in v.items()}
    if tag == "tuple":
        return tuple(decode(item) for item in v)
    if tag == "pydantic":
        return _import_class(data["cls"]).model_validate(decode(v))
    if tag == "dataclass":
        return _import_class(data["cls"])(**{k: decode(item) for k, item in v.items()})
    if tag == "datetime":
        return _dt.datetime.fromisoformat(v)
    if tag == "date":
        return _dt.date.fromisoformat(v)
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "decimal":
        return decimal.Decimal(v)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "agents.run_result":
        return _agents_result.decode_run_result(decode(v))
    raise ValueError(f"unknown stored value tag {tag!r}")
