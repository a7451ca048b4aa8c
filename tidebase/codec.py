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


class _Encoder:
    def __init__(self, what: str):
        self.what = what

    def fail(self, value: Any, path: str, hint: str = "") -> SerializationError:
        return SerializationError(self.what, path, type(value).__qualname__, hint)

    def encode(self, value: Any, path: str = "") -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(value, path, "NaN and infinity are not JSON")
            return value
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise self.fail(key, f"{path}[{key!r}]", "dict keys must be strings")
                out[key] = self.encode(item, f"{path}.{key}" if path else key)
            if _TAG in out:
                return {_TAG: "dict", "v": out}
            return out
        if isinstance(value, list):
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {
                _TAG: "tuple",
                "v": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)],
            }
        if _agents_result.is_run_result(value):
            try:
                return {_TAG: "agents.run_result", "v": _agents_result.encode_run_result(value)}
            except TypeError as exc:
                raise SerializationError(
                    self.what, path, type(value).__qualname__, str(exc)
                ) from exc
        if _is_pydantic(value):
            cls = type(value)
            if not _importable(cls):
                raise self.fail(
                    value, path, "define the model at module level so replay can rebuild it"
                )
            try:
                data = value.model_dump(mode="json")
            except Exception as exc:
                raise self.fail(value, path, f"model_dump failed: {exc}") from exc
            return {_TAG: "pydantic", "cls": _class_path(cls), "v": data}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            cls = type(value)
            if not _importable(cls):
                raise self.fail(
                    value, path, "define the dataclass at module level so replay can rebuild it"
                )
            fields = {
                f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
                for f in dataclasses.fields(value)
                if f.init
            }
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
        raise self.fail(value, path)


def encode(value: Any, *, what: str = "value") -> Any:
    """The JSON-safe form of `value`; raises SerializationError naming `what` and the type."""
    return _Encoder(what).encode(value)


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
    if tag == "dict":
        return {k: decode(item) for k, item in v.items()}
    if tag == "tuple":
        return tuple(decode(item) for item in v)
    if tag == "pydantic":
        return _import_class(data["cls"]).model_validate(v)
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
        return _agents_result.decode_run_result(v)
    raise ValueError(f"unknown stored value tag {tag!r}")
