"""Encode an OpenAI Agents SDK run result to plain JSON, and rebuild a stand-in on replay.

Why: Tidebase records each step's return value in Postgres; when a pipeline is re-run, a finished
step returns the recorded value instead of running again. A step that returns ``Runner.run(...)``
returns a ``RunResult``, which holds live agents, tools and SDK objects that cannot (and should
not) be stored. What callers actually use afterwards is small: ``final_output``, the run's token
usage on ``context_wrapper.usage``, the last agent and the per-response usage. This module keeps
exactly that, as JSON, and rebuilds it as :class:`ReplayedRunResult`, which answers those
attributes the same way the live result does. Pickle is never used.

``final_output`` is recorded with its type (``module:qualname``):

* ``str`` / plain JSON data (dicts with string keys, lists, numbers, bools, ``None``) as is;
* a pydantic model (an agent ``output_type``) as ``model_dump(mode="json")``, rebuilt with
  ``Class.model_validate``;
* a dataclass as its pydantic JSON dump, rebuilt with ``TypeAdapter(Class)``;
* an ``Enum`` member as its value, rebuilt with ``Class(value)``.

If the recorded class cannot be imported on replay (moved, renamed, defined inside a function),
``final_output`` falls back to the plain JSON data (a dict for models and dataclasses) and
``ReplayedRunResult.output_type_restored`` is ``False``. If the class imports but the recorded
data no longer validates against it, the validation error is raised: returning a half-matching
object would fail later, further from the cause. Decoding imports the recorded module, so only
decode data that Tidebase itself wrote.

Nothing here imports ``agents`` unless the SDK is already loaded (``is_run_result``) or a result
is being decoded (for a real ``agents.usage.Usage``; a look-alike is used if the SDK is absent).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import math
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, TypeVar, cast

__all__ = [
    "FORMAT",
    "ReplayedAgent",
    "ReplayedContextWrapper",
    "ReplayedModelResponse",
    "ReplayedRunResult",
    "decode_run_result",
    "encode_run_result",
    "is_run_result",
]

FORMAT = "tidebase.agents.run_result/1"
"""Marker and version stored in every encoded result; bump it when the layout changes."""

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Replayed stand-ins


@dataclasses.dataclass(frozen=True)
class ReplayedAgent:
    """Name-ish information about the agent that produced the final output."""

    name: str
    model: str | None = None


@dataclasses.dataclass
class ReplayedContextWrapper:
    """Stands in for ``RunContextWrapper``: ``usage`` holds the recorded run totals.

    ``usage`` is a real ``agents.usage.Usage`` when the SDK is importable. ``context`` is always
    ``None``: the user's context object is not recorded.
    """

    usage: Any
    context: Any = None


@dataclasses.dataclass
class ReplayedModelResponse:
    """Stands in for ``ModelResponse`` when the SDK is not importable (usage and ids only)."""

    usage: Any
    response_id: str | None = None
    request_id: str | None = None
    output: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ReplayedRunResult:
    """A recorded run result, as returned by a replayed step.

    Behaves like ``RunResult`` for ``final_output``, ``final_output_as``,
    ``context_wrapper.usage``, ``raw_responses[i].usage`` and ``last_agent.name``. Item-level
    history (``new_items``) is not recorded and is always empty. ``replayed`` is ``True`` so code
    can tell a replay from a live run.
    """

    final_output: Any
    context_wrapper: ReplayedContextWrapper
    last_agent_name: str | None = None
    last_agent_model: str | None = None
    raw_responses: list[Any] = dataclasses.field(default_factory=list)
    last_response_id: str | None = None
    final_output_type: str | None = None
    output_type_restored: bool = True
    streamed: bool = False
    new_items: list[Any] = dataclasses.field(default_factory=list)
    replayed: bool = True
    is_complete: bool = True
    _recorded_output: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def last_agent(self) -> ReplayedAgent | None:
        """The last agent's name and model name (not the live ``Agent``), if recorded."""
        if self.last_agent_name is None:
            return None
        return ReplayedAgent(name=self.last_agent_name, model=self.last_agent_model)

    def final_output_as(self, cls: type[T], raise_if_incorrect_type: bool = False) -> T:
        """Return ``final_output`` typed as ``cls``; like ``RunResult.final_output_as``.

        With ``raise_if_incorrect_type=True``, raise ``TypeError`` when it is not a ``cls``
        (e.g. a model that fell back to a dict because its class could not be imported).
        """
        if raise_if_incorrect_type and not isinstance(self.final_output, cls):
            raise TypeError(f"Final output is not of type {cls.__name__}")
        return cast(T, self.final_output)

    async def stream_events(self) -> AsyncIterator[Any]:
        """Yield nothing: a replayed streamed run has already been consumed."""
        for event in ():
            yield event


# --------------------------------------------------------------------------------------------
# Detection


def is_run_result(value: object) -> bool:
    """True for an Agents SDK run result (``RunResult``/``RunResultStreaming``) or a replay.

    Never imports ``agents``: if the SDK is not loaded, no value can be one of its results.
    """
    if isinstance(value, ReplayedRunResult):
        return True
    module = sys.modules.get("agents.result")
    base = getattr(module, "RunResultBase", None) if module is not None else None
    return isinstance(base, type) and isinstance(value, base)


# --------------------------------------------------------------------------------------------
# Encoding


def _type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_plain_json(value: object) -> bool:
    """True if ``value`` survives ``json.dumps``/``json.loads`` unchanged (no tuples, etc.)."""
    if value is None or type(value) in (str, bool, int):
        return True
    if type(value) is float:
        return math.isfinite(cast(float, value))
    if type(value) is list:
        return all(_is_plain_json(item) for item in cast(list[Any], value))
    if type(value) is dict:
        return all(
            type(key) is str and _is_plain_json(item)
            for key, item in cast(dict[Any, Any], value).items()
        )
    return False


def _is_pydantic_model(value: object) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


def _encode_final_output(value: Any) -> dict[str, Any]:
    cls = type(value)
    if _is_plain_json(value):
        return {"kind": "json", "type": _type_path(cls), "value": value}
    try:
        if _is_pydantic_model(value):
            data = value.model_dump(mode="json")
            return {"kind": "pydantic", "type": _type_path(cls), "value": data}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            from pydantic import TypeAdapter

            data = TypeAdapter(cls).dump_python(value, mode="json")
            return {"kind": "dataclass", "type": _type_path(cls), "value": data}
        if isinstance(value, enum.Enum) and _is_plain_json(value.value):
            return {"kind": "enum", "type": _type_path(cls), "value": value.value}
    except Exception as error:
        raise TypeError(f"cannot encode final_output of type {_type_path(cls)}: {error}") from error
    raise TypeError(
        f"cannot encode final_output of type {_type_path(cls)}: expected str, plain JSON data, "
        "a pydantic model, a dataclass or an Enum"
    )


def _details(details: Any) -> dict[str, Any]:
    if details is None:
        return {}
    if hasattr(details, "model_dump"):
        return cast(dict[str, Any], details.model_dump(mode="json"))
    return {k: v for k, v in vars(details).items() if not k.startswith("_")}


def _encode_usage(usage: Any) -> dict[str, Any]:
    """Plain-dict form of ``agents.usage.Usage`` (details as dicts, per-request entries kept)."""

    def tokens(source: Any) -> dict[str, Any]:
        return {
            "input_tokens": source.input_tokens,
            "output_tokens": source.output_tokens,
            "total_tokens": source.total_tokens,
            "input_tokens_details": _details(source.input_tokens_details),
            "output_tokens_details": _details(source.output_tokens_details),
        }

    return {
        "requests": usage.requests,
        **tokens(usage),
        "request_usage_entries": [
            tokens(entry) for entry in getattr(usage, "request_usage_entries", None) or []
        ],
    }


def _agent_model_name(agent: Any) -> str | None:
    model = getattr(agent, "model", None)
    if isinstance(model, str):
        return model
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else None


def encode_run_result(value: Any) -> dict[str, Any]:
    """Encode a run result (or a :class:`ReplayedRunResult`) to a JSON-safe dict.

    Raises:
        TypeError: ``value`` is not a run result, or its ``final_output`` cannot be encoded (the
            message names the output's type).
        ValueError: ``value`` is a ``RunResultStreaming`` whose run has not completed.
    """
    if not is_run_result(value):
        raise TypeError(f"not an Agents SDK run result: {_type_path(type(value))}")
    if isinstance(value, ReplayedRunResult):
        return _encode_replayed(value)
    streaming_cls = getattr(sys.modules.get("agents.result"), "RunResultStreaming", None)
    streamed = isinstance(streaming_cls, type) and isinstance(value, streaming_cls)
    if streamed and not getattr(value, "is_complete", True):
        raise ValueError(
            "cannot record a RunResultStreaming before its run completes: "
            "consume stream_events() first"
        )
    try:
        agent = value.last_agent
    except Exception:  # noqa: BLE001 - the SDK raises once the agent reference has been released
        agent = None
    return {
        "format": FORMAT,
        "streamed": streamed,
        "final_output": _encode_final_output(value.final_output),
        "usage": _encode_usage(value.context_wrapper.usage),
        "last_agent": None
        if agent is None
        else {"name": str(getattr(agent, "name", "")), "model": _agent_model_name(agent)},
        "raw_responses": [
            {
                "response_id": response.response_id,
                "request_id": getattr(response, "request_id", None),
                "usage": _encode_usage(response.usage),
            }
            for response in value.raw_responses
        ],
        "last_response_id": getattr(value, "last_response_id", None),
    }


def _encode_replayed(value: ReplayedRunResult) -> dict[str, Any]:
    if not value.output_type_restored and value._recorded_output is not None:
        # Keep the original kind and type so a later replay can still restore the class.
        final_output = dict(value._recorded_output)
    else:
        final_output = _encode_final_output(value.final_output)
    return {
        "format": FORMAT,
        "streamed": value.streamed,
        "final_output": final_output,
        "usage": _encode_usage(value.context_wrapper.usage),
        "last_agent": None
        if value.last_agent_name is None
        else {"name": value.last_agent_name, "model": value.last_agent_model},
        "raw_responses": [
            {
                "response_id": getattr(response, "response_id", None),
                "request_id": getattr(response, "request_id", None),
                "usage": _encode_usage(response.usage),
            }
            for response in value.raw_responses
        ],
        "last_response_id": value.last_response_id,
    }


# --------------------------------------------------------------------------------------------
# Decoding


def _import_type(path: str) -> type | None:
    """Import ``module:qualname``; ``None`` if it cannot be imported or is not a class."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname or "<locals>" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) else None


def _decode_final_output(data: dict[str, Any]) -> tuple[Any, bool]:
    """Return ``(final_output, type_restored)``."""
    kind, path, value = data.get("kind"), data.get("type") or "", data.get("value")
    if kind == "json":
        return value, True
    cls = _import_type(path)
    if cls is None:
        return value, False
    if kind == "pydantic" and hasattr(cls, "model_validate"):
        return cls.model_validate(value), True  # type: ignore[attr-defined]
    if kind == "dataclass" and dataclasses.is_dataclass(cls):
        try:
            from pydantic import TypeAdapter
        except ImportError:
            return cls(**value), True
        return TypeAdapter(cls).validate_python(value), True
    if kind == "enum" and issubclass(cls, enum.Enum):
        return cls(value), True
    return value, False


def _agents_usage_module() -> Any | None:
    try:
        return importlib.import_module("agents.usage")
    except ImportError:
        return None


def _decode_usage(data: dict[str, Any]) -> Any:
    """A real ``agents.usage.Usage`` if the SDK is importable, else an attribute look-alike."""
    usage_module = _agents_usage_module()
    if usage_module is not None:
        return usage_module.deserialize_usage(data)

    def tokens(source: dict[str, Any]) -> dict[str, Any]:
        return {
            "input_tokens": source.get("input_tokens", 0),
            "output_tokens": source.get("output_tokens", 0),
            "total_tokens": source.get("total_tokens", 0),
            "input_tokens_details": SimpleNamespace(
                **{"cached_tokens": 0, **(source.get("input_tokens_details") or {})}
            ),
            "output_tokens_details": SimpleNamespace(
                **{"reasoning_tokens": 0, **(source.get("output_tokens_details") or {})}
            ),
        }

    return SimpleNamespace(
        requests=data.get("requests", 0),
        **tokens(data),
        request_usage_entries=[
            SimpleNamespace(**tokens(entry)) for entry in data.get("request_usage_entries") or []
        ],
    )


def _decode_raw_response(data: dict[str, Any]) -> Any:
    usage = _decode_usage(data.get("usage") or {})
    try:
        from agents.items import ModelResponse
    except ImportError:
        return ReplayedModelResponse(
            usage=usage, response_id=data.get("response_id"), request_id=data.get("request_id")
        )
    return ModelResponse(
        output=[],
        usage=usage,
        response_id=data.get("response_id"),
        request_id=data.get("request_id"),
    )


def decode_run_result(data: dict[str, Any]) -> ReplayedRunResult:
    """Rebuild a :class:`ReplayedRunResult` from :func:`encode_run_result` output.

    Raises:
        ValueError: ``data`` was not written by this module (wrong or missing ``format``), or
            the recorded output no longer validates against its (importable) class.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not an encoded run result (expected format {FORMAT!r}, got {found!r})")
    output_data = data.get("final_output") or {"kind": "json", "value": None}
    final_output, restored = _decode_final_output(output_data)
    agent = data.get("last_agent") or {}
    return ReplayedRunResult(
        final_output=final_output,
        context_wrapper=ReplayedContextWrapper(usage=_decode_usage(data.get("usage") or {})),
        last_agent_name=agent.get("name"),
        last_agent_model=agent.get("model"),
        raw_responses=[_decode_raw_response(r) for r in data.get("raw_responses") or []],
        last_response_id=data.get("last_response_id"),
        final_output_type=output_data.get("type"),
        output_type_restored=restored,
        streamed=bool(data.get("streamed")),
        _recorded_output=output_data,
    )
