"""OpenAI Agents SDK -> OpenTelemetry: a `TracingProcessor` that mirrors every Agents span.

Usage::

    from tidebase_otel.agents import install
    processor = install()            # keeps the SDK's other processors
    ...
    uninstall(processor)

How it maps (all attribute names live in `tidebase_otel._semconv`):

* Each Agents span becomes one OTel span that carries the Agents span's own start and end
  times, GenAI semantic-convention attributes and a span name from the conventions
  (`invoke_agent {agent}`, `chat {model}`, `execute_tool {tool}`, `invoke_workflow {name}`, ...).
* Parenting never looks at the current OTel span except once per Agents trace: the context that
  is current in `on_trace_start` is captured and every root Agents span (``parent_id is None``)
  of that trace goes under it; every other span goes under the OTel span mapped from its Agents
  ``parent_id``. Other instrumentations that make their own span current inside their
  ``on_span_start`` therefore cannot re-parent ours, and concurrent runs never cross.
* A run resumed in the same process from a ``RunState`` re-attaches its old trace without any
  ``on_trace_start``/``on_trace_end``. For such a trace the context is captured when its first
  root span starts and the trace state is dropped when its last open span ends. (If a processor
  registered before ours made its own span current for that very root span, which we detect
  because it started at or after the Agents span, its parent span context is used instead.)
* Memory is bounded: per-trace state goes at ``on_trace_end``; at most ``max_open_spans``
  spans and ``max_traces`` traces are held, the oldest evicted (an evicted span is ended with
  ``tidebase.agents.incomplete=true``).
* Fields that are final only at span end (handoff target, agent tools and handoffs, usage,
  response model, errors) are read at ``on_span_end``.
* Model name of a ``response`` span: with sensitive data on, ``span_data.response.model``.
  With sensitive data off the SDK records no model on the span at all, so the processor looks
  (best effort, a bounded walk of at most a few stack frames, no RunHooks, no provider wrapper)
  for the ``agents.models.interface.Model`` instance whose ``with response_span()`` block is
  ending, and reads its ``model`` attribute (``OpenAIResponsesModel.model`` is the requested
  model name). A ``generation`` span carries its model itself. A model found this way is also
  remembered on the enclosing agent span (``gen_ai.request.model`` of ``invoke_agent``) and is
  the last fallback for later model spans of that agent.
* Message content is recorded only when opted in (``capture_content=True``, or
  ``capture_content=None`` and ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``),
  each value capped to ``max_content_chars``. The SDK itself only puts content on spans when
  ``RunConfig.trace_include_sensitive_data`` is on (its default).
* Usage: ``gen_ai.usage.*`` on model spans (one model call each), on ``task`` spans (run
  total) and ``turn`` spans (that turn's delta). Sum tokens over ``gen_ai.operation.name=chat``
  spans only; ``on_usage`` fires once per model span (never for task/turn).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.tracing import TracingProcessor, get_current_trace
from agents.tracing import get_current_span as _current_agents_span
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from . import _semconv as sc

__all__ = [
    "AgentsUsage",
    "OTelAgentsProcessor",
    "install",
    "uninstall",
]

_log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_NOOP_ID = "no-op"
_MAX_ERROR_TYPE_CHARS = 128
_MAX_NAME_PART_CHARS = 128
_MAX_LIST_ITEMS = 128
_FRAME_WALK_DEPTH = 6  # foreign method frames inspected before giving up
_THIS_FILE = __file__
_MODEL_SPAN_TYPES = frozenset(("response", "generation"))

try:  # the Model interface, used to find the model name of a response span
    from agents.models.interface import Model as _AgentsModel
except Exception:  # pragma: no cover - very old / very new SDK layouts
    _AgentsModel = None  # type: ignore[assignment,misc]


@dataclass(frozen=True, slots=True)
class AgentsUsage:
    """Token usage of one model call (one ``response`` or ``generation`` Agents span).

    ``agents_trace_id`` + ``agents_span_id`` identify the call uniquely, so a consumer that
    writes usage into a ledger can use them as an idempotency key.
    """

    provider: str
    model: str | None
    operation: str
    agent_name: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_output_tokens: int
    requests: int
    agents_trace_id: str
    agents_span_id: str


class _TraceState:
    __slots__ = ("context", "group_id", "implicit", "name", "open_spans")

    def __init__(
        self, context: otel_context.Context, name: str | None, group_id: str | None, implicit: bool
    ) -> None:
        self.context = context
        self.name = name
        self.group_id = group_id
        self.implicit = implicit
        self.open_spans = 0


class _SpanState:
    __slots__ = (
        "agent_name",
        "agent_state",
        "base_context",
        "child_context",
        "model",
        "otel_span",
        "trace_id",
        "usage",
    )

    def __init__(
        self,
        otel_span: otel_trace.Span,
        trace_id: str,
        base_context: otel_context.Context,
        agent_name: str | None,
        agent_state: _SpanState | None,
    ) -> None:
        self.otel_span = otel_span
        self.trace_id = trace_id
        self.base_context = base_context
        self.child_context: otel_context.Context | None = None
        self.agent_name = agent_name
        self.agent_state = agent_state  # nearest enclosing agent span (self for agent spans)
        self.model: str | None = None  # agent spans: model learned from child model spans
        self.usage: AgentsUsage | None = None  # model spans: set at span end

    def context_for_children(self) -> otel_context.Context:
        ctx = self.child_context
        if ctx is None:
            ctx = otel_trace.set_span_in_context(self.otel_span, self.base_context)
            self.child_context = ctx
        return ctx


def _env_capture_content() -> bool:
    return os.environ.get(sc.ENV_CAPTURE_MESSAGE_CONTENT, "").strip().lower() in (
        "true",
        "1",
        "yes",
        "on",
    )


def _iso_to_ns(value: str | None) -> int | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return ((dt - _EPOCH) // _ONE_US) * 1000


def _short(value: Any, limit: int = _MAX_NAME_PART_CHARS) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit]


def _str_list(values: Any) -> list[str] | None:
    if not values:
        return None
    try:
        return [_short(v) for v in list(values)[:_MAX_LIST_ITEMS]]
    except Exception:
        return None


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def _detail(usage: Mapping[str, Any], details_key: str, key: str) -> int:
    details = usage.get(details_key)
    if isinstance(details, list):  # serialize_usage() shape
        details = details[0] if details else None
    if isinstance(details, Mapping):
        return _as_int(details.get(key))
    return 0


def _parse_usage(usage: Any) -> tuple[int, int, int, int, int] | None:
    """(input, output, cached_input, reasoning_output, requests) from any SDK usage dict shape."""
    if not isinstance(usage, Mapping):
        return None
    cached = _as_int(usage.get("cached_input_tokens")) or _detail(
        usage, "input_tokens_details", "cached_tokens"
    )
    reasoning = _as_int(usage.get("reasoning_output_tokens")) or _detail(
        usage, "output_tokens_details", "reasoning_tokens"
    )
    return (
        _as_int(usage.get("input_tokens")),
        _as_int(usage.get("output_tokens")),
        cached,
        reasoning,
        _as_int(usage.get("requests")),
    )


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json", exclude_none=True)
        except Exception:
            pass
    return str(value)


def _context_before(started_ns: int | None) -> otel_context.Context:
    """The current context, minus a span another processor made current for this Agents span.

    Used only for a root span of a trace we never saw start. Processors registered before us
    have already run their ``on_span_start`` for this span; if one made its own span current,
    that span started at or after the Agents span did (the step span started well before), so
    its parent is what was current when the Agents span began.
    """
    ctx = otel_context.get_current()
    if started_ns is None:
        return ctx
    current = otel_trace.get_current_span(ctx)
    start = getattr(current, "start_time", None)
    if isinstance(start, int) and start >= started_ns:
        parent = getattr(current, "parent", None)
        if isinstance(parent, SpanContext) and parent.is_valid:
            return otel_trace.set_span_in_context(NonRecordingSpan(parent), ctx)
        return otel_trace.set_span_in_context(otel_trace.INVALID_SPAN, ctx)
    return ctx


def _model_name_from_stack() -> str | None:
    """The ``model`` attribute of the SDK ``Model`` whose span is ending, if on the stack.

    The SDK calls processors synchronously from ``Span.__exit__``, which runs inside the model
    implementation's ``with response_span(...)`` block, so that model object is a few frames up
    (past this module, the SDK's multi-processor and ``SpanImpl.finish``/``__exit__``).
    """
    if _AgentsModel is None:
        return None
    frame: Any = sys._getframe(1)
    depth = 0
    while frame is not None and depth < _FRAME_WALK_DEPTH:
        code = frame.f_code
        if code.co_filename != _THIS_FILE:
            depth += 1
            if code.co_argcount and code.co_varnames[0] == "self":
                obj = frame.f_locals.get("self")
                if isinstance(obj, _AgentsModel):
                    name = getattr(obj, "model", None)
                    return name if isinstance(name, str) and name else None
        frame = frame.f_back
    return None


class OTelAgentsProcessor(TracingProcessor):
    """Mirror OpenAI Agents SDK traces as OpenTelemetry spans (see module docstring)."""

    def __init__(
        self,
        tracer_provider: otel_trace.TracerProvider | None = None,
        capture_content: bool | None = None,
        max_content_chars: int = 4096,
        on_usage: Callable[[AgentsUsage], Any] | None = None,
        *,
        provider_name: str = sc.PROVIDER_OPENAI,
        max_open_spans: int = 10_000,
        max_traces: int = 1_000,
    ) -> None:
        self._tracer = otel_trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._capture = _env_capture_content() if capture_content is None else bool(capture_content)
        self._max_chars = max(0, int(max_content_chars))
        # Listeners are replaced, never mutated, so callbacks iterate without the lock.
        self._usage_listeners: tuple[Callable[[AgentsUsage], Any], ...] = (
            (on_usage,) if on_usage is not None else ()
        )
        self._provider = provider_name
        self._max_open_spans = max(1, int(max_open_spans))
        self._max_traces = max(1, int(max_traces))
        self._lock = threading.Lock()
        self._traces: OrderedDict[str, _TraceState] = OrderedDict()
        self._spans: OrderedDict[str, _SpanState] = OrderedDict()

    # ------------------------------------------------------------------ introspection
    @property
    def capture_content(self) -> bool:
        return self._capture

    def add_usage_listener(self, listener: Callable[[AgentsUsage], Any]) -> None:
        """Also call ``listener`` with the usage of every model call (like ``on_usage``)."""
        with self._lock:
            if listener not in self._usage_listeners:
                self._usage_listeners = (*self._usage_listeners, listener)

    def remove_usage_listener(self, listener: Callable[[AgentsUsage], Any]) -> None:
        with self._lock:
            self._usage_listeners = tuple(u for u in self._usage_listeners if u != listener)

    def has_open_spans(self) -> bool:
        """Whether any Agents span is open: a cheap test before `context_for_current_span`,
        which can only find a span while one is open. Read without the lock: a span opened
        concurrently by another thread is not the caller's current span anyway."""
        return bool(self._spans)

    def context_for_current_span(
        self, context: otel_context.Context | None = None, *, under: int | None = None
    ) -> otel_context.Context | None:
        """``context`` (default: the current one) with our mirror of the SDK's current Agents
        span as its current span.

        Used to parent work done inside an Agents span (a tidebase step inside a tool) under
        that span, e.g. ``execute_tool create_ticket``. Returns None unless the Agents trace of
        that span began under the OTel span whose span id is ``under`` (default: the span
        current in ``context``), so an unrelated Agents span never captures other work.
        """
        try:
            agents_span = _current_agents_span()
            if agents_span is None:
                return None
            with self._lock:
                state = self._spans.get(agents_span.span_id)
            if state is None:
                return None
            ctx = otel_context.get_current() if context is None else context
            if under is None:
                under = otel_trace.get_current_span(ctx).get_span_context().span_id
            base = otel_trace.get_current_span(state.base_context).get_span_context()
            if not base.is_valid or base.span_id != under:
                return None
            return otel_trace.set_span_in_context(state.otel_span, ctx)
        except Exception:
            _log.debug("tidebase_otel: context_for_current_span failed", exc_info=True)
            return None

    def _sizes(self) -> tuple[int, int]:
        """(open traces, open spans) held in memory; for tests and diagnostics."""
        with self._lock:
            return len(self._traces), len(self._spans)

    # ------------------------------------------------------------------ traces
    def on_trace_start(self, trace: Any) -> None:
        try:
            trace_id = trace.trace_id
            if not trace_id or trace_id == _NOOP_ID:
                return
            ctx = otel_context.get_current()
            name = getattr(trace, "name", None)
            state = _TraceState(ctx, name, getattr(trace, "group_id", None), implicit=False)
            with self._lock:
                old = self._traces.pop(trace_id, None)
                if old is not None:
                    state.open_spans = old.open_spans
                self._traces[trace_id] = state
                while len(self._traces) > self._max_traces:
                    self._traces.popitem(last=False)
            self._mark_enclosing(ctx, trace_id, name)
        except Exception:
            _log.debug("tidebase_otel: on_trace_start failed", exc_info=True)

    def on_trace_end(self, trace: Any) -> None:
        try:
            with self._lock:
                self._traces.pop(trace.trace_id, None)
        except Exception:
            _log.debug("tidebase_otel: on_trace_end failed", exc_info=True)

    @staticmethod
    def _mark_enclosing(ctx: otel_context.Context, trace_id: str, name: str | None) -> None:
        enclosing = otel_trace.get_current_span(ctx)
        if enclosing.is_recording():
            enclosing.set_attribute(sc.TIDEBASE_AGENTS_TRACE_ID, trace_id)
            if name:
                enclosing.set_attribute(sc.TIDEBASE_AGENTS_WORKFLOW_NAME, name)

    # ------------------------------------------------------------------ spans
    def on_span_start(self, span: Any) -> None:
        try:
            self._start(span)
        except Exception:
            _log.debug("tidebase_otel: on_span_start failed", exc_info=True)

    def on_span_end(self, span: Any) -> None:
        try:
            self._end(span)
        except Exception:
            _log.debug("tidebase_otel: on_span_end failed", exc_info=True)

    def _start(self, span: Any) -> None:
        span_id = span.span_id
        trace_id = span.trace_id
        if span_id == _NOOP_ID or trace_id == _NOOP_ID:
            return
        parent_id = span.parent_id
        data = span.span_data
        name, kind, attrs = self._start_fields(data)
        new_trace: _TraceState | None = None
        with self._lock:
            parent = self._spans.get(parent_id) if parent_id else None
            if parent is not None:
                parent_ctx = parent.context_for_children()
                tstate = self._traces.get(trace_id)
                is_root = False
            else:
                tstate = self._traces.get(trace_id)
                if tstate is None:
                    started_ns = _iso_to_ns(span.started_at)
                    new_trace = tstate = self._implicit_trace(trace_id, started_ns)
                    self._traces[trace_id] = tstate
                    while len(self._traces) > self._max_traces:
                        self._traces.popitem(last=False)
                parent_ctx = tstate.context
                is_root = True
            base_ctx = tstate.context if tstate is not None else parent_ctx
            group_id = tstate.group_id if tstate is not None else None
        if new_trace is not None:
            self._mark_enclosing(new_trace.context, trace_id, new_trace.name)

        agent_name: str | None = None
        agent_state: _SpanState | None = None
        if parent is not None:
            agent_name = parent.agent_name
            agent_state = parent.agent_state
        stype = data.type
        if stype == "agent":
            agent_name = data.name
        elif stype == "turn":
            agent_name = data.agent_name or agent_name
        if agent_name and sc.GEN_AI_AGENT_NAME not in attrs:
            attrs[sc.GEN_AI_AGENT_NAME] = agent_name
        attrs[sc.TIDEBASE_AGENTS_SPAN_ID] = span_id
        if is_root:
            attrs[sc.TIDEBASE_AGENTS_TRACE_ID] = trace_id
            if group_id:
                attrs[sc.GEN_AI_CONVERSATION_ID] = group_id

        otel_span = self._tracer.start_span(
            name,
            context=parent_ctx,
            kind=kind,
            attributes=attrs,
            start_time=_iso_to_ns(span.started_at) or time.time_ns(),
        )
        state = _SpanState(otel_span, trace_id, base_ctx, agent_name, agent_state)
        if stype == "agent":
            state.agent_state = state
        evicted: list[_SpanState] = []
        with self._lock:
            self._spans[span_id] = state
            if tstate is not None:
                tstate.open_spans += 1
            while len(self._spans) > self._max_open_spans:
                _, old = self._spans.popitem(last=False)
                self._release_trace(old.trace_id)
                evicted.append(old)
        for old in evicted:
            self._end_incomplete(old)

    def _implicit_trace(self, trace_id: str, started_ns: int | None) -> _TraceState:
        """A root span for a trace we never saw start (a run resumed from RunState)."""
        name = group_id = None
        try:
            current = get_current_trace()
            if current is not None and current.trace_id == trace_id:
                name = current.name
                group_id = getattr(current, "group_id", None)
        except Exception:
            pass
        return _TraceState(_context_before(started_ns), name, group_id, implicit=True)

    def _release_trace(self, trace_id: str) -> None:
        # caller holds the lock
        tstate = self._traces.get(trace_id)
        if tstate is None:
            return
        tstate.open_spans -= 1
        if tstate.implicit and tstate.open_spans <= 0:
            del self._traces[trace_id]

    def _end_incomplete(self, state: _SpanState) -> None:
        try:
            state.otel_span.set_attribute(sc.TIDEBASE_AGENTS_INCOMPLETE, True)
            state.otel_span.end()
        except Exception:
            _log.debug("tidebase_otel: ending an evicted span failed", exc_info=True)

    def _end(self, span: Any) -> None:
        span_id = span.span_id
        if span_id == _NOOP_ID:
            return
        with self._lock:
            state = self._spans.pop(span_id, None)
            if state is None:
                return
            self._release_trace(state.trace_id)
        try:
            self._finish_otel_span(span, state)
        finally:
            # Usage reaches the listeners (e.g. the usage ledger) even when the OTel side
            # failed, say a span processor of the TracerProvider raised in on_end.
            if state.usage is not None:
                self._notify_usage(state.usage)

    def _finish_otel_span(self, span: Any, state: _SpanState) -> None:
        otel_span = state.otel_span
        data = span.span_data
        out: dict[str, Any] = {}
        state.usage = self._end_fields(data, state, span, out)

        error = span.error
        if error:
            message = error.get("message") if isinstance(error, Mapping) else str(error)
            message = _short(message or sc.ERROR_TYPE_OTHER, _MAX_ERROR_TYPE_CHARS)
            out[sc.ERROR_TYPE] = message
            description = message
            if self._capture and isinstance(error, Mapping):
                detail = error.get("data")
                if detail:
                    description = self._content(detail) or message
                    out[sc.TIDEBASE_AGENTS_ERROR_MESSAGE] = description
            otel_span.set_status(Status(StatusCode.ERROR, description))
        if out:
            otel_span.set_attributes(out)
        otel_span.end(end_time=_iso_to_ns(span.ended_at) or time.time_ns())

    def _notify_usage(self, usage: AgentsUsage) -> None:
        for listener in self._usage_listeners:
            try:
                listener(usage)
            except Exception:
                _log.warning("tidebase_otel: on_usage callback raised", exc_info=True)

    # ------------------------------------------------------------------ per-type fields
    def _content(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, default=_json_default, ensure_ascii=False)
            )
        except Exception:
            text = str(value)
        return text[: self._max_chars]

    def _start_fields(self, data: Any) -> tuple[str, SpanKind, dict[str, Any]]:
        stype = data.type
        attrs: dict[str, Any] = {sc.TIDEBASE_AGENTS_SPAN_TYPE: stype}
        kind = SpanKind.INTERNAL
        if stype == "agent":
            agent = _short(data.name or sc.SPAN_UNKNOWN_AGENT)
            name = sc.SPAN_INVOKE_AGENT.format(agent=agent)
            attrs[sc.GEN_AI_OPERATION_NAME] = sc.OP_INVOKE_AGENT
            attrs[sc.GEN_AI_PROVIDER_NAME] = self._provider
            attrs[sc.GEN_AI_AGENT_NAME] = data.name or sc.SPAN_UNKNOWN_AGENT
        elif stype in _MODEL_SPAN_TYPES:
            kind = SpanKind.CLIENT
            attrs[sc.GEN_AI_OPERATION_NAME] = sc.OP_CHAT
            attrs[sc.GEN_AI_PROVIDER_NAME] = self._provider
            model = getattr(data, "model", None) if stype == "generation" else None
            if model:
                model = _short(model)
                attrs[sc.GEN_AI_REQUEST_MODEL] = model
                name = sc.SPAN_CHAT.format(model=model)
                config = data.model_config
                if isinstance(config, Mapping):
                    self._model_config_attrs(config, attrs)
            else:
                name = sc.SPAN_CHAT_NO_MODEL
        elif stype == "function":
            tool = _short(data.name or sc.SPAN_UNKNOWN_AGENT)
            name = sc.SPAN_EXECUTE_TOOL.format(tool=tool)
            attrs[sc.GEN_AI_OPERATION_NAME] = sc.OP_EXECUTE_TOOL
            attrs[sc.GEN_AI_TOOL_NAME] = tool
            attrs[sc.GEN_AI_TOOL_TYPE] = sc.TOOL_TYPE_FUNCTION
            mcp = data.mcp_data
            if isinstance(mcp, Mapping) and mcp.get("server"):
                attrs[sc.TIDEBASE_AGENTS_MCP_SERVER] = _short(mcp["server"])
        elif stype == "task":
            workflow = _short(data.name or sc.SPAN_UNKNOWN_AGENT)
            name = sc.SPAN_INVOKE_WORKFLOW.format(workflow=workflow)
            attrs[sc.GEN_AI_OPERATION_NAME] = sc.OP_INVOKE_WORKFLOW
            attrs[sc.GEN_AI_WORKFLOW_NAME] = workflow
        elif stype == "turn":
            turn = _as_int(data.turn)
            if turn <= sc.SPAN_TURN_NAME_MAX:
                name = sc.SPAN_TURN.format(turn=turn)
            else:
                name = sc.SPAN_TURN_OVERFLOW.format(max_turn=sc.SPAN_TURN_NAME_MAX)
            attrs[sc.TIDEBASE_AGENTS_TURN] = turn
        elif stype == "handoff":
            # to_agent is None at start; the name is completed in _end_fields.
            from_agent = _short(data.from_agent or sc.SPAN_UNKNOWN_AGENT)
            name = sc.SPAN_HANDOFF.format(from_agent=from_agent, to_agent=sc.SPAN_UNKNOWN_AGENT)
            attrs[sc.TIDEBASE_AGENTS_HANDOFF_FROM] = from_agent
        elif stype == "guardrail":
            gname = _short(data.name or sc.SPAN_UNKNOWN_AGENT)
            name = sc.SPAN_GUARDRAIL.format(name=gname)
            attrs[sc.TIDEBASE_AGENTS_GUARDRAIL_NAME] = gname
        elif stype == "custom":
            name = _short(data.name) if data.name else sc.SPAN_CUSTOM_DEFAULT
            attrs[sc.TIDEBASE_AGENTS_CUSTOM_NAME] = name
        elif stype == "mcp_tools":
            server = data.server
            attrs[sc.MCP_METHOD_NAME] = sc.MCP_METHOD_TOOLS_LIST
            if server:
                server = _short(server)
                attrs[sc.TIDEBASE_AGENTS_MCP_SERVER] = server
                name = sc.SPAN_MCP_LIST_TOOLS.format(server=server)
            else:
                name = sc.SPAN_MCP_LIST_TOOLS_NO_SERVER
        elif stype in ("transcription", "speech"):
            kind = SpanKind.CLIENT
            op = sc.OP_TRANSCRIPTION if stype == "transcription" else sc.OP_SPEECH
            attrs[sc.GEN_AI_OPERATION_NAME] = op
            attrs[sc.GEN_AI_PROVIDER_NAME] = self._provider
            model = data.model
            if model:
                model = _short(model)
                attrs[sc.GEN_AI_REQUEST_MODEL] = model
                fmt = sc.SPAN_TRANSCRIPTION if stype == "transcription" else sc.SPAN_SPEECH
                name = fmt.format(model=model)
            else:
                name = (
                    sc.SPAN_TRANSCRIPTION_NO_MODEL
                    if stype == "transcription"
                    else sc.SPAN_SPEECH_NO_MODEL
                )
        elif stype == "speech_group":
            name = sc.SPAN_SPEECH_GROUP
        else:
            name = _short(stype or sc.SPAN_CUSTOM_DEFAULT)
        return name, kind, attrs

    @staticmethod
    def _model_config_attrs(config: Mapping[str, Any], attrs: dict[str, Any]) -> None:
        for key, attr in (
            ("temperature", sc.GEN_AI_REQUEST_TEMPERATURE),
            ("top_p", sc.GEN_AI_REQUEST_TOP_P),
            ("max_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS),
            ("frequency_penalty", sc.GEN_AI_REQUEST_FREQUENCY_PENALTY),
            ("presence_penalty", sc.GEN_AI_REQUEST_PRESENCE_PENALTY),
        ):
            value = config.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[attr] = value

    @staticmethod
    def _usage_attrs(out: dict[str, Any], parsed: tuple[int, int, int, int, int]) -> None:
        inp, outp, cached, reasoning, requests = parsed
        out[sc.GEN_AI_USAGE_INPUT_TOKENS] = inp
        out[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = outp
        if cached:
            out[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = cached
        if reasoning:
            out[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = reasoning
        if requests:
            out[sc.TIDEBASE_AGENTS_USAGE_REQUESTS] = requests

    def _end_fields(
        self, data: Any, state: _SpanState, span: Any, out: dict[str, Any]
    ) -> AgentsUsage | None:
        stype = data.type
        otel_span = state.otel_span
        if stype in _MODEL_SPAN_TYPES:
            return self._end_model(data, state, span, out)
        if stype == "agent":
            tools = _str_list(data.tools)
            if tools:
                out[sc.TIDEBASE_AGENTS_TOOLS] = tools
            handoffs = _str_list(data.handoffs)
            if handoffs:
                out[sc.TIDEBASE_AGENTS_HANDOFFS] = handoffs
            if data.output_type:
                out[sc.TIDEBASE_AGENTS_OUTPUT_TYPE] = _short(data.output_type)
            if state.model:
                out[sc.GEN_AI_REQUEST_MODEL] = state.model
        elif stype in ("task", "turn"):
            parsed = _parse_usage(data.usage)
            if parsed is not None:
                self._usage_attrs(out, parsed)
        elif stype == "function":
            if self._capture:
                args = self._content(data.input)
                if args is not None:
                    out[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = args
                result = self._content(data.output)
                if result is not None:
                    out[sc.GEN_AI_TOOL_CALL_RESULT] = result
        elif stype == "handoff":
            from_agent = _short(data.from_agent or sc.SPAN_UNKNOWN_AGENT)
            to_agent = _short(data.to_agent or sc.SPAN_UNKNOWN_AGENT)
            if data.to_agent:
                out[sc.TIDEBASE_AGENTS_HANDOFF_TO] = to_agent
            otel_span.update_name(sc.SPAN_HANDOFF.format(from_agent=from_agent, to_agent=to_agent))
        elif stype == "guardrail":
            out[sc.TIDEBASE_AGENTS_GUARDRAIL_TRIGGERED] = bool(data.triggered)
        elif stype == "custom":
            if self._capture and data.data:
                payload = self._content(data.data)
                if payload is not None:
                    out[sc.TIDEBASE_AGENTS_CUSTOM_DATA] = payload
        elif stype == "mcp_tools":
            tools = _str_list(data.result)
            if tools:
                out[sc.TIDEBASE_AGENTS_MCP_TOOLS] = tools
        elif stype in ("transcription", "speech", "speech_group"):
            if self._capture:
                # Text only: transcription input and speech output are audio, never recorded.
                text = data.output if stype == "transcription" else data.input
                text = self._content(text) if isinstance(text, str) else None
                if text is not None:
                    attr = (
                        sc.TIDEBASE_AGENTS_AUDIO_OUTPUT
                        if stype == "transcription"
                        else sc.TIDEBASE_AGENTS_AUDIO_INPUT
                    )
                    out[attr] = text
        return None

    def _end_model(
        self, data: Any, state: _SpanState, span: Any, out: dict[str, Any]
    ) -> AgentsUsage | None:
        otel_span = state.otel_span
        stype = data.type
        request_model: str | None = None
        response_model: str | None = None
        if stype == "generation":
            request_model = _short(data.model) if data.model else None
        else:
            response = data.response
            if response is not None:
                response_model = getattr(response, "model", None) or None
                response_id = getattr(response, "id", None)
            else:
                response_id = getattr(data, "_response_id", None)
            if response_id:
                out[sc.GEN_AI_RESPONSE_ID] = _short(response_id)
            request_model = _model_name_from_stack()
            if request_model is None and state.agent_state is not None:
                request_model = state.agent_state.model
            if request_model is None:
                request_model = response_model
            if response_model:
                response_model = _short(response_model)
                out[sc.GEN_AI_RESPONSE_MODEL] = response_model
            if request_model:
                request_model = _short(request_model)
                out[sc.GEN_AI_REQUEST_MODEL] = request_model
                otel_span.update_name(sc.SPAN_CHAT.format(model=request_model))
        agent_state = state.agent_state
        if request_model and agent_state is not None and agent_state.model is None:
            agent_state.model = request_model

        if self._capture:
            self._model_content(data, out)

        parsed = _parse_usage(data.usage)
        if parsed is None:
            return None
        self._usage_attrs(out, parsed)
        inp, outp, cached, reasoning, requests = parsed
        return AgentsUsage(
            provider=self._provider,
            model=request_model or response_model,
            operation=sc.OP_CHAT,
            agent_name=state.agent_name,
            input_tokens=inp,
            output_tokens=outp,
            cached_input_tokens=cached,
            reasoning_output_tokens=reasoning,
            requests=requests,
            agents_trace_id=span.trace_id,
            agents_span_id=span.span_id,
        )

    def _model_content(self, data: Any, out: dict[str, Any]) -> None:
        inputs = self._content(data.input)
        if inputs is not None:
            out[sc.GEN_AI_INPUT_MESSAGES] = inputs
        if data.type == "generation":
            outputs = self._content(data.output)
        else:
            response = data.response
            outputs = None
            if response is not None:
                outputs = self._content(getattr(response, "output", None))
                instructions = self._content(getattr(response, "instructions", None))
                if instructions is not None:
                    out[sc.GEN_AI_SYSTEM_INSTRUCTIONS] = instructions
        if outputs is not None:
            out[sc.GEN_AI_OUTPUT_MESSAGES] = outputs

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """End every span still open (marked incomplete) and forget all state."""
        try:
            with self._lock:
                states = list(self._spans.values())
                self._spans.clear()
                self._traces.clear()
            for state in reversed(states):  # children before parents
                self._end_incomplete(state)
        except Exception:
            _log.debug("tidebase_otel: shutdown failed", exc_info=True)

    def force_flush(self) -> None:
        """No-op: exporting belongs to the OpenTelemetry TracerProvider, not to us."""
        return None


# ---------------------------------------------------------------------- install / uninstall
def _current_processors() -> list[TracingProcessor] | None:
    """The provider's processor list. agents 0.24 exposes no getter, so read the multi-processor
    of `DefaultTraceProvider` (``_multi_processor._processors``, a tuple)."""
    from agents.tracing import get_trace_provider

    multi = getattr(get_trace_provider(), "_multi_processor", None)
    procs = getattr(multi, "_processors", None)
    if isinstance(procs, tuple | list):
        return list(procs)
    return None


def install(processor: OTelAgentsProcessor | None = None, **kwargs: Any) -> OTelAgentsProcessor:
    """Register an `OTelAgentsProcessor` with the Agents SDK, first, keeping its other processors.

    ``kwargs`` go to the constructor when ``processor`` is None. Installing the same processor
    twice is a no-op.
    """
    import agents

    if processor is None:
        processor = OTelAgentsProcessor(**kwargs)
    elif kwargs:
        raise TypeError("pass either a processor or constructor arguments, not both")
    current = _current_processors()
    if current is None:
        agents.add_trace_processor(processor)
        return processor
    if any(p is processor for p in current):
        return processor
    # First in line: it notes the OTel span current when an Agents trace starts before any
    # other processor runs, one of which could make its own span current and adopt ours.
    agents.set_trace_processors([processor, *current])
    return processor


def uninstall(processor: OTelAgentsProcessor) -> bool:
    """Remove just ``processor`` from the Agents SDK (others stay, in order) and end its spans.

    Returns False when the processor was not registered or the trace provider is not the SDK's
    default one (then it cannot be removed without replacing the others).
    """
    import agents

    current = _current_processors()
    if current is None:
        _log.warning("tidebase_otel: cannot list the Agents trace processors; not uninstalled")
        return False
    if not any(p is processor for p in current):
        return False
    agents.set_trace_processors([p for p in current if p is not processor])
    processor.shutdown()
    return True
