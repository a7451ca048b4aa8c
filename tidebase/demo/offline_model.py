"""A scripted, offline stand-in for an OpenAI model, for tests and the demo.

Why: Tidebase's tests and demo must drive real ``agents.Runner`` runs (tools, handoffs,
streaming, usage, tracing) without network access or an API key. :class:`OfflineModel`
implements the Agents SDK :class:`~agents.models.interface.Model` interface and answers from a
*script* instead of an API:

* a list of turns, consumed one per model call; each turn is a text answer (``str``), a
  structured answer (a pydantic model or a ``dict``, sent as JSON text for an ``output_type``
  agent), one tool call (:class:`ToolCall` or a ready ``ResponseFunctionToolCall``), or a list of
  tool calls (parallel calls). A handoff is a tool call whose name is the handoff's
  ``tool_name`` — build it with :func:`handoff_call`;
* or a *rule*: a callable that receives a :class:`ModelRequest` (the input items, tools,
  handoffs, ...) and returns a turn. A rule may be the whole script (called on every model call)
  or one entry of the list.

Every response carries deterministic, realistic :class:`agents.usage.Usage` (one request; input
tokens from the size of the instructions + input, output tokens from the size of the output), and
opens a model span like the real models do: ``response_span()`` (Responses model) by default, or
``generation_span()`` (Chat Completions model) with ``span_kind="generation"``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import (
    ModelResponse,
    TResponseInputItem,
    TResponseOutputItem,
    TResponseStreamEvent,
)
from agents.model_settings import ModelSettings
from agents.models.interface import Model, ModelProvider, ModelTracing
from agents.tool import Tool
from agents.tracing import SpanError, generation_span, response_span
from agents.usage import Usage, model_usage_to_span_usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel

__all__ = [
    "ModelRequest",
    "OfflineModel",
    "OfflineModelProvider",
    "Rule",
    "ScriptExhaustedError",
    "ToolCall",
    "Turn",
    "handoff_call",
    "last_item_is_tool_output",
]

CHARS_PER_TOKEN = 4
"""Rough size of a token in characters, used to derive deterministic token counts."""


@dataclass(frozen=True)
class ToolCall:
    """One scripted function-tool call (or handoff, when ``name`` is a handoff's tool name).

    ``arguments`` may be a JSON string or a mapping (serialised with sorted keys). ``call_id``
    defaults to a deterministic id derived from the call and the request, so reruns of the same
    script produce the same ids.
    """

    name: str
    arguments: str | Mapping[str, Any] = field(default_factory=dict)
    call_id: str | None = None

    def arguments_json(self) -> str:
        """Return the arguments as JSON text, as the Responses API sends them."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), sort_keys=True, separators=(",", ":"))


Answer: TypeAlias = str | BaseModel | dict[str, Any]
"""A final answer: text, or structured output sent as JSON text."""
Call: TypeAlias = ToolCall | ResponseFunctionToolCall
"""A tool or handoff call."""
Turn: TypeAlias = Answer | Call | Sequence[Call]
"""What the model returns for one call: an answer, one call, or several calls."""


@dataclass(frozen=True)
class ModelRequest:
    """What the model was asked on one call; given to rules and kept in ``OfflineModel.requests``.

    ``input`` is always a list of input items (a string input becomes one user message).
    """

    index: int
    system_instructions: str | None
    input: list[TResponseInputItem]
    tools: list[Tool]
    handoffs: list[Handoff]
    output_schema: AgentOutputSchemaBase | None
    model_settings: ModelSettings
    streamed: bool

    @property
    def last_item(self) -> Any:
        """The last input item, or ``None`` when there is no input."""
        return self.input[-1] if self.input else None

    @property
    def tool_names(self) -> list[str]:
        """Names of the function tools offered on this call."""
        return [str(getattr(tool, "name", "")) for tool in self.tools]

    @property
    def handoff_tool_names(self) -> list[str]:
        """Tool names of the handoffs offered on this call (call one to hand off)."""
        return [h.tool_name for h in self.handoffs]


Rule: TypeAlias = Callable[[ModelRequest], Turn]
"""A callable that decides a turn from the request (e.g. answer once a tool output is present)."""

Script: TypeAlias = Rule | Sequence[Turn | Rule]


class ScriptExhaustedError(RuntimeError):
    """The model was called more times than its script has turns."""


def _item_type(item: Any) -> str | None:
    if isinstance(item, Mapping):
        value = item.get("type")
        return value if isinstance(value, str) else None
    value = getattr(item, "type", None)
    return value if isinstance(value, str) else None


def last_item_is_tool_output(request: ModelRequest) -> bool:
    """True when the last input item is a function call output (a tool just returned)."""
    return _item_type(request.last_item) == "function_call_output"


def handoff_call(target: Any, arguments: str | Mapping[str, Any] | None = None) -> ToolCall:
    """Build the tool call that makes the model hand off to ``target``.

    ``target`` is an ``Agent`` (its default handoff tool name, ``transfer_to_<name>``), a
    ``Handoff`` (its ``tool_name``, honouring ``tool_name_override``) or the tool name itself.
    """
    if isinstance(target, Handoff):
        name = target.tool_name
    elif isinstance(target, str):
        name = target
    else:
        name = Handoff.default_tool_name(target)
    return ToolCall(name=name, arguments=arguments if arguments is not None else {})


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def _jsonish(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        return str(obj)

    return json.dumps(value, sort_keys=True, default=default)


def _output_text(output: Sequence[TResponseOutputItem]) -> str:
    """What the model "wrote": message text, or tool names and JSON arguments."""
    parts: list[str] = []
    for item in output:
        if isinstance(item, ResponseOutputMessage):
            parts.extend(getattr(part, "text", "") for part in item.content)
        elif isinstance(item, ResponseFunctionToolCall):
            parts.append(item.name + item.arguments)
    return "".join(parts)


def _as_input_list(input: str | list[TResponseInputItem]) -> list[TResponseInputItem]:
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    return list(input)


class OfflineModel(Model):
    """A scripted :class:`agents.models.interface.Model` that never touches the network.

    Attributes:
        model: the model name reported in spans and responses (default ``"gpt-4.1-mini"``).
        calls: how many times the model was called (``get_response`` + ``stream_response``).
        requests: every :class:`ModelRequest` received, in order.
    """

    def __init__(
        self,
        script: Script,
        *,
        model: str = "gpt-4.1-mini",
        span_kind: Literal["response", "generation"] = "response",
        cached_input_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        """Create the model.

        Args:
            script: a rule, or a list of turns and/or rules consumed one per call.
            model: model name reported in spans and in the ``Response`` objects.
            span_kind: ``"response"`` opens ``response_span()`` like the Responses model;
                ``"generation"`` opens ``generation_span()`` like the Chat Completions model.
            cached_input_tokens: reported in ``input_tokens_details.cached_tokens`` (capped at
                the input tokens of the call).
            reasoning_tokens: added to each call's output tokens and reported in
                ``output_tokens_details.reasoning_tokens``.
        """
        self.model = model
        self.span_kind = span_kind
        self.cached_input_tokens = cached_input_tokens
        self.reasoning_tokens = reasoning_tokens
        self.calls = 0
        self.requests: list[ModelRequest] = []
        self._rule: Rule | None = None
        self._turns: list[Turn | Rule] = []
        if callable(script):
            self._rule = script
        else:
            self._turns = list(script)

    @property
    def remaining_turns(self) -> int:
        """Scripted turns not consumed yet (0 for a rule script, which never runs out)."""
        return len(self._turns)

    # -- script evaluation -------------------------------------------------------------------

    def _next_turn(self, request: ModelRequest) -> Turn:
        if self._rule is not None:
            return self._rule(request)
        if not self._turns:
            raise ScriptExhaustedError(
                f"OfflineModel {self.model!r}: call #{request.index + 1} but the script has no "
                "turns left"
            )
        turn = self._turns.pop(0)
        if callable(turn):
            return turn(request)
        return turn

    def _output_items(self, turn: Turn, request: ModelRequest) -> list[TResponseOutputItem]:
        seed = f"{self.model}|{request.index}|{len(request.input)}"
        if isinstance(turn, ToolCall | ResponseFunctionToolCall):
            turn = [turn]
        if isinstance(turn, BaseModel):
            turn = turn.model_dump_json()
        elif isinstance(turn, dict):
            turn = json.dumps(turn)
        if isinstance(turn, str):
            text = ResponseOutputText(type="output_text", text=turn, annotations=[], logprobs=[])
            message_id = f"msg_{_digest(seed, turn)}"
            return [
                ResponseOutputMessage(
                    id=message_id,
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[text],
                )
            ]
        items: list[TResponseOutputItem] = []
        for position, call in enumerate(turn):
            if isinstance(call, ResponseFunctionToolCall):
                items.append(call)
                continue
            if not isinstance(call, ToolCall):
                raise TypeError(f"unsupported scripted turn item: {type(call).__name__}")
            arguments = call.arguments_json()
            digest = _digest(seed, str(position), call.name, arguments)
            items.append(
                ResponseFunctionToolCall(
                    id=f"fc_{digest}",
                    type="function_call",
                    name=call.name,
                    call_id=call.call_id or f"call_{digest}",
                    arguments=arguments,
                    status="completed",
                )
            )
        return items

    def _usage(self, request: ModelRequest, output: list[TResponseOutputItem]) -> Usage:
        prompt = (request.system_instructions or "") + _jsonish(request.input)
        input_tokens = _tokens(prompt)
        output_tokens = _tokens(_output_text(output)) + self.reasoning_tokens
        return Usage(
            requests=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            # model_validate: cache_write_tokens is required by openai>=2.45, unknown before.
            input_tokens_details=InputTokensDetails.model_validate(
                {
                    "cached_tokens": min(self.cached_input_tokens, input_tokens),
                    "cache_write_tokens": 0,
                }
            ),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=self.reasoning_tokens),
        )

    def _respond(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        streamed: bool,
    ) -> tuple[Response, Usage]:
        request = ModelRequest(
            index=self.calls,
            system_instructions=system_instructions,
            input=_as_input_list(input),
            tools=list(tools),
            handoffs=list(handoffs),
            output_schema=output_schema,
            model_settings=model_settings,
            streamed=streamed,
        )
        self.calls += 1
        self.requests.append(request)
        output = self._output_items(self._next_turn(request), request)
        usage = self._usage(request, output)
        response = Response(
            id=f"resp_{_digest(self.model, str(request.index), _jsonish(request.input))}",
            created_at=1_700_000_000,
            model=self.model,
            object="response",
            output=output,
            parallel_tool_calls=True,
            tool_choice="auto",
            tools=[],
            status="completed",
            usage=ResponseUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
                input_tokens_details=usage.input_tokens_details,
                output_tokens_details=usage.output_tokens_details,
            ),
        )
        return response, usage

    # -- spans -------------------------------------------------------------------------------

    def _open_span(self, model_settings: ModelSettings, tracing: ModelTracing) -> Any:
        if self.span_kind == "generation":
            config = model_settings.to_traceable_dict()
            if not tracing.include_data():
                config.pop("metadata", None)
            return generation_span(
                model=self.model, model_config=config, disabled=tracing.is_disabled()
            )
        return response_span(disabled=tracing.is_disabled())

    def _fill_span(
        self,
        span: Any,
        response: Response,
        usage: Usage,
        input: str | list[TResponseInputItem],
        tracing: ModelTracing,
    ) -> None:
        span.span_data.usage = model_usage_to_span_usage(usage)
        if not tracing.include_data():
            return
        if self.span_kind == "generation":
            span.span_data.input = _as_input_list(input)
            span.span_data.output = [item.model_dump() for item in response.output]
        else:
            span.span_data.response = response
            span.span_data.input = input

    # -- Model interface ---------------------------------------------------------------------

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> ModelResponse:
        """Answer the next scripted turn as one complete response."""
        with self._open_span(model_settings, tracing) as span:
            try:
                response, usage = self._respond(
                    system_instructions,
                    input,
                    model_settings,
                    tools,
                    output_schema,
                    handoffs,
                    streamed=False,
                )
            except Exception as error:
                _record_error(span, "Error getting response", error, tracing)
                raise
            self._fill_span(span, response, usage, input, tracing)
        return ModelResponse(output=list(response.output), usage=usage, response_id=response.id)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """Answer the next scripted turn as Responses API stream events.

        Ends with ``response.completed`` carrying the full response and its usage, which is where
        the runner takes the output and usage from.
        """
        with self._open_span(model_settings, tracing) as span:
            try:
                response, usage = self._respond(
                    system_instructions,
                    input,
                    model_settings,
                    tools,
                    output_schema,
                    handoffs,
                    streamed=True,
                )
            except Exception as error:
                _record_error(span, "Error streaming response", error, tracing)
                raise
            # Record before yielding the terminal event: consumers may stop right after it.
            self._fill_span(span, response, usage, input, tracing)
            for event in _stream_events(response):
                yield event


def _record_error(span: Any, message: str, error: Exception, tracing: ModelTracing) -> None:
    """Put the error on the model span, redacted unless sensitive data is traced (as the SDK)."""
    detail = str(error) if tracing.include_data() else "Error details are redacted."
    span.set_error(SpanError(message=message, data={"error": detail}))


def _stream_events(response: Response) -> list[TResponseStreamEvent]:
    """The event sequence the Responses API streams for ``response`` (one delta per item)."""
    pending = response.model_copy(update={"output": [], "status": "in_progress", "usage": None})
    events: list[Any] = [
        ResponseCreatedEvent(type="response.created", response=pending, sequence_number=0),
        ResponseInProgressEvent(type="response.in_progress", response=pending, sequence_number=1),
    ]

    def seq() -> int:
        return len(events)

    for index, item in enumerate(response.output):
        if isinstance(item, ResponseOutputMessage):
            started = item.model_copy(update={"content": [], "status": "in_progress"})
            events.append(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    item=started,
                    output_index=index,
                    sequence_number=seq(),
                )
            )
            for content_index, part in enumerate(item.content):
                if not isinstance(part, ResponseOutputText):
                    continue
                empty = part.model_copy(update={"text": ""})
                common = {"item_id": item.id, "output_index": index, "content_index": content_index}
                events.append(
                    ResponseContentPartAddedEvent(
                        type="response.content_part.added",
                        part=empty,
                        sequence_number=seq(),
                        **common,
                    )
                )
                events.append(
                    ResponseTextDeltaEvent(
                        type="response.output_text.delta",
                        delta=part.text,
                        logprobs=[],
                        sequence_number=seq(),
                        **common,
                    )
                )
                events.append(
                    ResponseTextDoneEvent(
                        type="response.output_text.done",
                        text=part.text,
                        logprobs=[],
                        sequence_number=seq(),
                        **common,
                    )
                )
                events.append(
                    ResponseContentPartDoneEvent(
                        type="response.content_part.done",
                        part=part,
                        sequence_number=seq(),
                        **common,
                    )
                )
        elif isinstance(item, ResponseFunctionToolCall):
            item_id = item.id or item.call_id
            started_call = item.model_copy(update={"arguments": "", "status": "in_progress"})
            events.append(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    item=started_call,
                    output_index=index,
                    sequence_number=seq(),
                )
            )
            events.append(
                ResponseFunctionCallArgumentsDeltaEvent(
                    type="response.function_call_arguments.delta",
                    delta=item.arguments,
                    item_id=item_id,
                    output_index=index,
                    sequence_number=seq(),
                )
            )
            events.append(
                ResponseFunctionCallArgumentsDoneEvent(
                    type="response.function_call_arguments.done",
                    arguments=item.arguments,
                    item_id=item_id,
                    output_index=index,
                    sequence_number=seq(),
                )
            )
        events.append(
            ResponseOutputItemDoneEvent(
                type="response.output_item.done",
                item=item,
                output_index=index,
                sequence_number=seq(),
            )
        )
    events.append(
        ResponseCompletedEvent(type="response.completed", response=response, sequence_number=seq())
    )
    return events


class OfflineModelProvider(ModelProvider):
    """A :class:`ModelProvider` serving offline models, for ``RunConfig(model_provider=...)``.

    ``get_model(name)`` returns ``models[name]`` when given, else the default model, so agents
    that name a real model (or none) still run offline.
    """

    def __init__(
        self, default: OfflineModel, models: Mapping[str, OfflineModel] | None = None
    ) -> None:
        """Serve ``default`` for every name not found in ``models``."""
        self.default = default
        self.models = dict(models or {})

    def get_model(self, model_name: str | None) -> Model:
        """Return the model scripted for ``model_name`` (or the default)."""
        if model_name is not None and model_name in self.models:
            return self.models[model_name]
        return self.default
