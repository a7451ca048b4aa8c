"""OTelAgentsProcessor against the real OpenTelemetry SDK and real `Runner.run` calls.

The model is the scripted offline model (`tidebase.demo.offline_model`): no network, no key.
Every test replaces the Agents SDK's processors (the default one exports to OpenAI) and restores
an empty list afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import agents
import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    RunConfig,
    Runner,
    function_tool,
    input_guardrail,
)
from agents.tracing import TracingProcessor
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tidebase.demo.offline_model import OfflineModel, ToolCall, handoff_call
from tidebase_otel import _semconv as sc
from tidebase_otel.agents import AgentsUsage, OTelAgentsProcessor, _iso_to_ns, install, uninstall

CONTENT_ATTRS = (
    sc.GEN_AI_INPUT_MESSAGES,
    sc.GEN_AI_OUTPUT_MESSAGES,
    sc.GEN_AI_SYSTEM_INSTRUCTIONS,
    sc.GEN_AI_TOOL_CALL_ARGUMENTS,
    sc.GEN_AI_TOOL_CALL_RESULT,
    sc.TIDEBASE_AGENTS_CUSTOM_DATA,
    sc.TIDEBASE_AGENTS_AUDIO_INPUT,
    sc.TIDEBASE_AGENTS_AUDIO_OUTPUT,
    sc.TIDEBASE_AGENTS_ERROR_MESSAGE,
)


# ----------------------------------------------------------------------------- helpers
@dataclass
class AgentsRecord:
    type: str
    span_id: str
    parent_id: str | None
    trace_id: str
    started_at: str | None = None
    ended_at: str | None = None
    error: Any = None


@dataclass
class Recorder(TracingProcessor):
    """Records what the Agents SDK reported, to compare our OTel spans against."""

    spans: dict[str, AgentsRecord] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)

    def on_trace_start(self, trace: Any) -> None:
        self.traces.append(trace.trace_id)

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        self.spans[span.span_id] = AgentsRecord(
            span.span_data.type, span.span_id, span.parent_id, span.trace_id, span.started_at
        )

    def on_span_end(self, span: Any) -> None:
        rec = self.spans[span.span_id]
        rec.ended_at = span.ended_at
        rec.error = span.error

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def by_id(self) -> dict[int, ReadableSpan]:
        return {s.context.span_id: s for s in self.spans()}

    def agents_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if sc.TIDEBASE_AGENTS_SPAN_TYPE in (s.attributes or {})]

    def of_type(self, stype: str) -> list[ReadableSpan]:
        return [
            s for s in self.agents_spans() if s.attributes[sc.TIDEBASE_AGENTS_SPAN_TYPE] == stype
        ]

    def by_agents_id(self) -> dict[str, ReadableSpan]:
        return {s.attributes[sc.TIDEBASE_AGENTS_SPAN_ID]: s for s in self.agents_spans()}

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id().get(span.parent.span_id) if span.parent else None

    def ancestors(self, span: ReadableSpan) -> Iterator[ReadableSpan]:
        index = self.by_id()
        current = span
        while current.parent is not None:
            nxt = index.get(current.parent.span_id)
            if nxt is None:
                return
            yield nxt
            current = nxt


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.provider.shutdown()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def use(otel: Otel, recorder: Recorder) -> Iterator[Any]:
    """use(**kwargs) -> a processor registered (with the recorder after it) as the only ones."""

    def make(*before: TracingProcessor, **kwargs: Any) -> OTelAgentsProcessor:
        kwargs.setdefault("tracer_provider", otel.provider)
        processor = OTelAgentsProcessor(**kwargs)
        agents.set_trace_processors([*before, processor, recorder])
        return processor

    yield make
    agents.set_trace_processors([])


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@function_tool
def explode() -> str:
    """A tool that always fails."""
    raise RuntimeError("tool went boom: secret-detail")


@function_tool
async def slow_echo(text: str) -> str:
    """Echo after yielding to the event loop, so concurrent runs interleave."""
    await asyncio.sleep(0.01)
    return text


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# ----------------------------------------------------------------------------- span tree
async def test_span_tree_names_attributes_and_times(otel: Otel, use: Any, recorder: Recorder):
    use()
    model = OfflineModel([ToolCall("add", {"a": 1, "b": 2}), "3"])
    agent = Agent(name="calc", model=model, tools=[add])
    with otel.tracer.start_as_current_span("step research") as step:
        result = await Runner.run(agent, "what is 1+2?")
    assert result.final_output == "3"

    step_span = next(s for s in otel.spans() if s.name == "step research")
    (task,) = otel.of_type("task")
    (agent_span,) = otel.of_type("agent")
    turns = sorted(otel.of_type("turn"), key=lambda s: s.start_time)
    responses = sorted(otel.of_type("response"), key=lambda s: s.start_time)
    (function,) = otel.of_type("function")

    # tree: step -> task -> agent -> turn -> response; the function span under turn 1
    assert task.parent.span_id == step.get_span_context().span_id
    assert task.context.trace_id == step_span.context.trace_id
    assert otel.parent(agent_span) is not None and otel.parent(agent_span).name == task.name
    assert len(turns) == 2 and all(otel.parent(t).name == agent_span.name for t in turns)
    assert [otel.parent(r).context.span_id for r in responses] == [t.context.span_id for t in turns]
    assert otel.parent(function).context.span_id == turns[0].context.span_id

    # names and kinds
    assert task.name == "invoke_workflow Agent workflow"
    assert agent_span.name == "invoke_agent calc"
    assert [t.name for t in turns] == ["turn 1", "turn 2"]
    assert [r.name for r in responses] == ["chat gpt-4.1-mini"] * 2
    assert all(r.kind == SpanKind.CLIENT for r in responses)
    assert function.name == "execute_tool add"
    assert function.kind == SpanKind.INTERNAL

    # attributes
    a = _attrs(task)
    assert a[sc.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert a[sc.TIDEBASE_AGENTS_TRACE_ID] == recorder.traces[0]
    usage = result.context_wrapper.usage
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == usage.input_tokens
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == usage.output_tokens
    a = _attrs(agent_span)
    assert a[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert a[sc.GEN_AI_AGENT_NAME] == "calc"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.TIDEBASE_AGENTS_TOOLS] == ("add",)  # final only at span end
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4.1-mini"
    for r in responses:
        a = _attrs(r)
        assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
        assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
        assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4.1-mini"
        assert a[sc.GEN_AI_RESPONSE_MODEL] == "gpt-4.1-mini"  # sensitive data on: from response
        assert a[sc.GEN_AI_RESPONSE_ID].startswith("resp_")
        assert a[sc.GEN_AI_AGENT_NAME] == "calc"
        assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0 and a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    a = _attrs(function)
    assert a[sc.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[sc.GEN_AI_TOOL_NAME] == "add"
    assert a[sc.GEN_AI_TOOL_TYPE] == "function"
    assert a[sc.GEN_AI_AGENT_NAME] == "calc"
    assert _attrs(turns[0])[sc.TIDEBASE_AGENTS_TURN] == 1

    # the enclosing step span learns the Agents trace id and workflow name
    assert _attrs(step_span)[sc.TIDEBASE_AGENTS_TRACE_ID] == recorder.traces[0]
    assert _attrs(step_span)[sc.TIDEBASE_AGENTS_WORKFLOW_NAME] == "Agent workflow"

    # every Agents span mapped 1:1, with the Agents span's own times and parent
    mapped = otel.by_agents_id()
    assert set(mapped) == set(recorder.spans)
    for span_id, rec in recorder.spans.items():
        span = mapped[span_id]
        assert span.start_time == _iso_to_ns(rec.started_at)
        assert span.end_time == _iso_to_ns(rec.ended_at)
        if rec.parent_id is None:
            assert span.parent.span_id == step.get_span_context().span_id
        else:
            assert span.parent.span_id == mapped[rec.parent_id].context.span_id


async def test_response_model_without_sensitive_data(otel: Otel, use: Any):
    """With sensitive data off the SDK's response span has no model: we still name it."""
    use()
    agent = Agent(name="quiet", model=OfflineModel(["ok"], model="gpt-5-nano"))
    await Runner.run(agent, "hi", run_config=RunConfig(trace_include_sensitive_data=False))
    (response,) = otel.of_type("response")
    assert response.name == "chat gpt-5-nano"
    assert _attrs(response)[sc.GEN_AI_REQUEST_MODEL] == "gpt-5-nano"
    assert sc.GEN_AI_RESPONSE_MODEL not in _attrs(response)
    assert _attrs(response)[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0


async def test_generation_span_model(otel: Otel, use: Any):
    usages: list[AgentsUsage] = []
    use(on_usage=usages.append)
    model = OfflineModel(["ok"], model="gpt-4o-chat", span_kind="generation")
    await Runner.run(Agent(name="g", model=model), "hi")
    (gen,) = otel.of_type("generation")
    assert gen.name == "chat gpt-4o-chat"
    assert gen.kind == SpanKind.CLIENT
    assert _attrs(gen)[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o-chat"
    assert [u.model for u in usages] == ["gpt-4o-chat"]


# ----------------------------------------------------------------------------- handoff / errors
async def test_handoff_span_target(otel: Otel, use: Any):
    use()
    billing = Agent(name="billing", model=OfflineModel(["refund issued"]))
    triage = Agent(name="triage", model=OfflineModel([handoff_call(billing)]), handoffs=[billing])
    with otel.tracer.start_as_current_span("step"):
        result = await Runner.run(triage, "refund please")
    assert result.final_output == "refund issued"

    (handoff,) = otel.of_type("handoff")
    assert handoff.name == "handoff triage -> billing"
    assert _attrs(handoff)[sc.TIDEBASE_AGENTS_HANDOFF_FROM] == "triage"
    assert _attrs(handoff)[sc.TIDEBASE_AGENTS_HANDOFF_TO] == "billing"
    (task,) = otel.of_type("task")
    agent_spans = {s.name: s for s in otel.of_type("agent")}
    assert set(agent_spans) == {"invoke_agent triage", "invoke_agent billing"}
    for s in agent_spans.values():  # after a handoff the next agent is a sibling under task
        assert s.parent.span_id == task.context.span_id
    assert _attrs(agent_spans["invoke_agent triage"])[sc.TIDEBASE_AGENTS_HANDOFFS] == ("billing",)
    assert any(
        a.context.span_id == agent_spans["invoke_agent triage"].context.span_id
        for a in otel.ancestors(handoff)
    )
    # model spans of the second agent carry its name
    billing_chat = [
        s for s in otel.of_type("response") if _attrs(s)[sc.GEN_AI_AGENT_NAME] == "billing"
    ]
    assert len(billing_chat) == 1


async def test_tool_error_marks_function_span(otel: Otel, use: Any):
    use()
    agent = Agent(
        name="fragile", model=OfflineModel([ToolCall("explode"), "recovered"]), tools=[explode]
    )
    result = await Runner.run(agent, "go")
    assert result.final_output == "recovered"  # the run goes on
    (function,) = otel.of_type("function")
    assert function.status.status_code == StatusCode.ERROR
    assert _attrs(function)[sc.ERROR_TYPE] == "Error running tool (non-fatal)"
    assert "secret-detail" not in (function.status.description or "")
    assert sc.TIDEBASE_AGENTS_ERROR_MESSAGE not in _attrs(function)
    for s in otel.agents_spans():
        if s is not function:
            assert s.status.status_code == StatusCode.UNSET, s.name


async def test_model_error_marks_agent_span(otel: Otel, use: Any, recorder: Recorder):
    use()
    agent = Agent(name="short", model=OfflineModel([]))  # script exhausted on the first call
    with pytest.raises(RuntimeError):
        await Runner.run(agent, "hi")
    (agent_span,) = otel.of_type("agent")
    assert agent_span.status.status_code == StatusCode.ERROR
    assert _attrs(agent_span)[sc.ERROR_TYPE]
    assert otel.of_type("response")[0].status.status_code == StatusCode.ERROR
    # nothing left open after the failed run
    assert len(otel.agents_spans()) == len(recorder.spans)


async def test_guardrail_span(otel: Otel, use: Any):
    use()

    @input_guardrail
    async def no_secrets(ctx: Any, agent: Any, inp: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered=False)

    agent = Agent(name="guarded", model=OfflineModel(["fine"]), input_guardrails=[no_secrets])
    await Runner.run(agent, "hello")
    (guardrail,) = otel.of_type("guardrail")
    assert guardrail.name == "guardrail no_secrets"
    assert _attrs(guardrail)[sc.TIDEBASE_AGENTS_GUARDRAIL_NAME] == "no_secrets"
    assert _attrs(guardrail)[sc.TIDEBASE_AGENTS_GUARDRAIL_TRIGGERED] is False
    assert otel.parent(guardrail).name == "turn 1"


# ----------------------------------------------------------------------------- streaming
async def test_streamed_run_carries_usage(otel: Otel, use: Any):
    usages: list[AgentsUsage] = []
    use(on_usage=usages.append)

    @input_guardrail
    async def check(ctx: Any, agent: Any, inp: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered=False)

    agent = Agent(
        name="streamer",
        model=OfflineModel([ToolCall("add", {"a": 2, "b": 2}), "four"], cached_input_tokens=2),
        tools=[add],
        input_guardrails=[check],
    )
    with otel.tracer.start_as_current_span("step stream") as step:
        result = Runner.run_streamed(agent, "2+2")
        async for _ in result.stream_events():
            pass
    assert result.final_output == "four"
    usage = result.context_wrapper.usage
    responses = otel.of_type("response")
    assert len(responses) == 2
    assert sum(_attrs(r)[sc.GEN_AI_USAGE_INPUT_TOKENS] for r in responses) == usage.input_tokens
    assert sum(_attrs(r)[sc.GEN_AI_USAGE_OUTPUT_TOKENS] for r in responses) == usage.output_tokens
    assert all(_attrs(r)[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2 for r in responses)
    assert all(r.name == "chat gpt-4.1-mini" for r in responses)
    assert sum(u.input_tokens for u in usages) == usage.input_tokens
    (task,) = otel.of_type("task")
    assert task.parent.span_id == step.get_span_context().span_id
    # in a streamed run the guardrail span sits under the agent span
    (guardrail,) = otel.of_type("guardrail")
    assert otel.parent(guardrail).name == "invoke_agent streamer"


# ----------------------------------------------------------------------------- resume
class Intruder(TracingProcessor):
    """Another instrumentation that makes its own OTel span current inside on_span_start."""

    def __init__(self, tracer: otel_trace.Tracer) -> None:
        self.tracer = tracer
        self.open: dict[str, tuple[Any, Any]] = {}
        self.ids: set[int] = set()

    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        own = self.tracer.start_span(f"intruder {span.span_data.type}")
        self.ids.add(own.get_span_context().span_id)
        token = otel_context.attach(otel_trace.set_span_in_context(own))
        self.open[span.span_id] = (own, token)

    def on_span_end(self, span: Any) -> None:
        own, token = self.open.pop(span.span_id)
        otel_context.detach(token)
        own.end()

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


@pytest.mark.parametrize("with_intruder", [False, True])
async def test_run_resumed_from_run_state_nests_under_current_span(
    otel: Otel, use: Any, recorder: Recorder, with_intruder: bool
):
    # with_intruder: a processor registered before ours makes its own span current in
    # on_span_start, also for the resumed run's root span (the one moment we read the context).
    intruder = Intruder(otel.tracer)
    processor = use(intruder) if with_intruder else use()

    @function_tool(needs_approval=True)
    def create_ticket(title: str) -> str:
        """Create a ticket (needs approval)."""
        return "T-1"

    agent = Agent(
        name="ops",
        model=OfflineModel([ToolCall("create_ticket", {"title": "disk full"}), "ticket T-1"]),
        tools=[create_ticket],
    )
    config = RunConfig(group_id="conv-42", workflow_name="ops-flow")
    with otel.tracer.start_as_current_span("step first") as first:
        result = await Runner.run(agent, "disk full", run_config=config)
    assert result.interruptions
    state = result.to_state()
    for item in result.interruptions:
        state.approve(item)
    seen_before = set(recorder.spans)
    assert processor._sizes() == (0, 0)

    with otel.tracer.start_as_current_span("step resume") as second:
        resumed = await Runner.run(agent, state, run_config=config)
    assert resumed.final_output == "ticket T-1"
    assert len(recorder.traces) == 1  # the resumed run fired no on_trace_start

    mapped = otel.by_agents_id()
    new_ids = set(recorder.spans) - seen_before
    roots = [mapped[i] for i in new_ids if recorder.spans[i].parent_id is None]
    assert len(roots) == 1 and _attrs(roots[0])[sc.TIDEBASE_AGENTS_SPAN_TYPE] == "task"
    assert roots[0].parent.span_id == second.get_span_context().span_id
    assert _attrs(roots[0])[sc.GEN_AI_CONVERSATION_ID] == "conv-42"
    for i in new_ids:  # every span of the resumed run lives under the resume step
        ancestor_ids = {a.context.span_id for a in otel.ancestors(mapped[i])}
        assert second.get_span_context().span_id in ancestor_ids
        assert first.get_span_context().span_id not in ancestor_ids
    second_span = next(s for s in otel.spans() if s.name == "step resume")
    if not with_intruder:  # (with one, we only know the step's span context, not the span)
        assert _attrs(second_span)[sc.TIDEBASE_AGENTS_TRACE_ID] == recorder.traces[0]
        assert _attrs(second_span)[sc.TIDEBASE_AGENTS_WORKFLOW_NAME] == "ops-flow"
    for i in new_ids:
        assert mapped[i].parent.span_id not in intruder.ids
    assert "execute_tool create_ticket" in {mapped[i].name for i in new_ids}
    assert processor._sizes() == (0, 0)  # no on_trace_end, yet nothing retained


# ----------------------------------------------------------------------------- isolation
async def test_other_processor_making_its_span_current_does_not_reparent(
    otel: Otel, use: Any, recorder: Recorder
):
    intruder = Intruder(otel.tracer)
    use(intruder)
    agent = Agent(
        name="calc", model=OfflineModel([ToolCall("add", {"a": 1, "b": 1}), "2"]), tools=[add]
    )
    with otel.tracer.start_as_current_span("step") as step:
        await Runner.run(agent, "1+1")
    mapped = otel.by_agents_id()
    assert set(mapped) == set(recorder.spans)
    assert intruder.ids  # it really did run and attach its spans
    for span_id, rec in recorder.spans.items():
        span = mapped[span_id]
        assert span.parent.span_id not in intruder.ids
        expected = (
            step.get_span_context().span_id
            if rec.parent_id is None
            else mapped[rec.parent_id].context.span_id
        )
        assert span.parent.span_id == expected


class TraceStartIntruder(Intruder):
    """Another instrumentation that makes its own span current for the whole Agents trace."""

    def on_trace_start(self, trace: Any) -> None:
        own = self.tracer.start_span("intruder trace")
        self.ids.add(own.get_span_context().span_id)
        self.open[trace.trace_id] = (own, otel_context.attach(otel_trace.set_span_in_context(own)))

    def on_trace_end(self, trace: Any) -> None:
        own, token = self.open.pop(trace.trace_id)
        otel_context.detach(token)
        own.end()

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        pass


async def test_install_goes_first_so_a_processor_changing_the_span_at_trace_start_cannot_adopt(
    otel: Otel, recorder: Recorder
):
    """Processors run in order: ours is installed first, so it notes the step span before one
    registered earlier makes its own span current in on_trace_start."""
    intruder = TraceStartIntruder(otel.tracer)
    agents.set_trace_processors([intruder, recorder])
    processor = install(tracer_provider=otel.provider)
    try:
        agent = Agent(name="calc", model=OfflineModel(["2"]))
        with otel.tracer.start_as_current_span("step") as step:
            await Runner.run(agent, "1+1")
    finally:
        agents.set_trace_processors([])
        processor.shutdown()
    assert intruder.ids  # it did make its span current
    roots = [otel.by_agents_id()[i] for i, rec in recorder.spans.items() if rec.parent_id is None]
    assert roots and all(r.parent.span_id == step.get_span_context().span_id for r in roots)


@pytest.mark.parametrize("mode", ["tasks", "threads"])
async def test_concurrent_runs_never_cross_parent(otel: Otel, use: Any, mode: str):
    use()

    def make_agent(i: int) -> Agent:
        script = [
            ToolCall("slow_echo", {"text": f"x{i}"}),
            ToolCall("slow_echo", {"text": "y"}),
            f"done {i}",
        ]
        return Agent(name=f"agent-{i}", model=OfflineModel(script), tools=[slow_echo])

    async def one(i: int) -> tuple[int, int]:
        with otel.tracer.start_as_current_span(f"step-{i}") as step:
            result = await Runner.run(make_agent(i), f"run {i}")
        assert result.final_output == f"done {i}"
        return i, step.get_span_context().span_id

    if mode == "tasks":
        pairs = await asyncio.gather(*(one(i) for i in range(5)))
    else:
        pairs = []
        lock = threading.Lock()

        def in_thread(i: int) -> None:
            pair = asyncio.run(one(i))
            with lock:
                pairs.append(pair)

        threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    step_of = dict(pairs)
    assert len(step_of) == 5
    spans = otel.agents_spans()
    assert len(otel.of_type("task")) == 5
    for span in spans:
        agent_name = _attrs(span).get(sc.GEN_AI_AGENT_NAME)
        ancestor_ids = [a.context.span_id for a in otel.ancestors(span)]
        step_ids = [sid for sid in step_of.values() if sid in ancestor_ids]
        assert len(step_ids) == 1, span.name  # exactly one step above every span
        if agent_name is not None:
            assert step_ids == [step_of[int(agent_name.split("-")[1])]]


# ----------------------------------------------------------------------------- content
async def test_no_content_by_default(otel: Otel, use: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(sc.ENV_CAPTURE_MESSAGE_CONTENT, raising=False)
    processor = use()
    assert processor.capture_content is False
    agent = Agent(
        name="talker",
        instructions="You are a helpful secret-keeper.",
        model=OfflineModel([ToolCall("add", {"a": 40, "b": 2}), ToolCall("explode"), "42"]),
        tools=[add, explode],
    )
    # sensitive data is ON in the SDK (its default): the SDK hands us content, we drop it
    await Runner.run(agent, "my password is hunter2")
    with agents.trace("manual"):
        with agents.custom_span("notes", data={"secret": "hunter2"}):
            pass
    assert otel.agents_spans()
    for span in otel.spans():
        for attr in CONTENT_ATTRS:
            assert attr not in _attrs(span), (span.name, attr)
        assert "hunter2" not in repr(_attrs(span))
        assert "secret-detail" not in (span.status.description or "")


async def test_content_opt_in_is_capped(otel: Otel, use: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(sc.ENV_CAPTURE_MESSAGE_CONTENT, raising=False)
    use(capture_content=True, max_content_chars=40)
    agent = Agent(
        name="talker",
        instructions="You are a helpful assistant. " * 10,
        model=OfflineModel([ToolCall("add", {"a": 40, "b": 2}), "forty-two " * 20]),
        tools=[add],
    )
    await Runner.run(agent, "what is 40 + 2? " * 20)
    with agents.trace("manual"):
        with agents.custom_span("notes", data={"blob": "z" * 500}):
            pass
    responses = otel.of_type("response")
    for r in responses:
        a = _attrs(r)
        for attr in (sc.GEN_AI_INPUT_MESSAGES, sc.GEN_AI_OUTPUT_MESSAGES):
            assert 0 < len(a[attr]) <= 40, attr
        # the scripted Response carries no `instructions`; a real one does (then capped too)
        assert len(a.get(sc.GEN_AI_SYSTEM_INSTRUCTIONS, "")) <= 40
    assert "what is 40 + 2?" in _attrs(responses[0])[sc.GEN_AI_INPUT_MESSAGES]
    (function,) = otel.of_type("function")
    assert _attrs(function)[sc.GEN_AI_TOOL_CALL_ARGUMENTS] == '{"a":40,"b":2}'
    assert _attrs(function)[sc.GEN_AI_TOOL_CALL_RESULT] == "42"
    (custom,) = otel.of_type("custom")
    assert len(_attrs(custom)[sc.TIDEBASE_AGENTS_CUSTOM_DATA]) == 40


async def test_content_opt_in_by_env(otel: Otel, use: Any, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(sc.ENV_CAPTURE_MESSAGE_CONTENT, "true")
    assert use().capture_content is True
    assert use(capture_content=False).capture_content is False  # explicit wins
    monkeypatch.setenv(sc.ENV_CAPTURE_MESSAGE_CONTENT, "false")
    assert use().capture_content is False


# ----------------------------------------------------------------------------- usage callback
async def test_on_usage_once_per_model_call(otel: Otel, use: Any):
    usages: list[AgentsUsage] = []
    use(on_usage=usages.append)
    model = OfflineModel(
        [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 3, "b": 3}), "6"],
        cached_input_tokens=5,
        reasoning_tokens=7,
    )
    agent = Agent(name="counter", model=model, tools=[add])
    config = RunConfig(trace_include_sensitive_data=False)
    result = await Runner.run(agent, "sum", run_config=config)
    total = result.context_wrapper.usage
    assert len(usages) == total.requests == 3 == model.calls
    assert sum(u.input_tokens for u in usages) == total.input_tokens
    assert sum(u.output_tokens for u in usages) == total.output_tokens
    assert [(u.input_tokens, u.output_tokens) for u in usages] == [
        (e.input_tokens, e.output_tokens) for e in total.request_usage_entries
    ]
    for u in usages:
        assert u.provider == "openai"
        assert u.model == "gpt-4.1-mini"
        assert u.operation == "chat"
        assert u.agent_name == "counter"
        assert u.cached_input_tokens == 5
        assert u.reasoning_output_tokens == 7
        assert u.requests == 1
    # unique per call, usable as a ledger idempotency key
    assert len({(u.agents_trace_id, u.agents_span_id) for u in usages}) == 3
    (response,) = otel.of_type("response")[:1]
    assert _attrs(response)[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 7


async def test_on_usage_exception_is_contained(
    otel: Otel, use: Any, caplog: pytest.LogCaptureFixture
):
    def broken(_: AgentsUsage) -> None:
        raise ValueError("ledger down")

    use(on_usage=broken)
    with caplog.at_level(logging.WARNING, logger="tidebase_otel.agents"):
        result = await Runner.run(Agent(name="a", model=OfflineModel(["ok"])), "hi")
    assert result.final_output == "ok"
    assert len(otel.of_type("response")) == 1
    assert any("on_usage" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- all span types
async def test_every_span_type_is_mapped(otel: Otel, use: Any):
    use(capture_content=True)
    from agents.tracing import (
        agent_span,
        function_span,
        generation_span,
        guardrail_span,
        handoff_span,
        mcp_tools_span,
        speech_group_span,
        speech_span,
        task_span,
        transcription_span,
        turn_span,
    )

    with otel.tracer.start_as_current_span("step voice") as step:
        with agents.trace("voice-flow", group_id="conv-7"):
            with task_span("voice-flow"), agent_span("voice", tools=["lookup"]):
                with turn_span(turn=250, agent_name="voice"):
                    with mcp_tools_span(server="files", result=["read", "write"]):
                        pass
                    with function_span("lookup", input='{"q": 1}', output="found"):
                        pass
                    with generation_span(
                        model="gpt-x",
                        model_config={"temperature": 0.2},
                        usage={"input_tokens": 3, "output_tokens": 4},
                    ):
                        pass
                    with guardrail_span("pii", triggered=False) as g:
                        g.span_data.triggered = True
                    with handoff_span(from_agent="voice") as h:
                        h.span_data.to_agent = "human"
                with speech_group_span(input="hello there"):
                    with transcription_span(model="whisper-1", input="AAAA", output="hi"):
                        pass
                    with speech_span(model="tts-1", input="hello there", output="QUJD"):
                        pass
            with agents.custom_span("checkpoint", data={"k": "v"}):
                pass
    names = {s.attributes[sc.TIDEBASE_AGENTS_SPAN_TYPE]: s for s in otel.agents_spans()}
    assert names["task"].name == "invoke_workflow voice-flow"
    assert names["agent"].name == "invoke_agent voice"
    assert names["turn"].name == "turn >100"  # bounded cardinality
    assert _attrs(names["turn"])[sc.TIDEBASE_AGENTS_TURN] == 250
    assert names["mcp_tools"].name == "tools/list files"
    assert _attrs(names["mcp_tools"])[sc.TIDEBASE_AGENTS_MCP_TOOLS] == ("read", "write")
    assert names["function"].name == "execute_tool lookup"
    assert names["generation"].name == "chat gpt-x"
    assert _attrs(names["generation"])[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert _attrs(names["generation"])[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert names["guardrail"].name == "guardrail pii"
    assert _attrs(names["guardrail"])[sc.TIDEBASE_AGENTS_GUARDRAIL_TRIGGERED] is True
    assert names["handoff"].name == "handoff voice -> human"
    assert names["speech_group"].name == "speech_group"
    assert names["transcription"].name == "transcription whisper-1"
    assert names["transcription"].kind == SpanKind.CLIENT
    assert _attrs(names["transcription"])[sc.TIDEBASE_AGENTS_AUDIO_OUTPUT] == "hi"
    assert names["speech"].name == "speech tts-1"
    assert _attrs(names["speech"])[sc.TIDEBASE_AGENTS_AUDIO_INPUT] == "hello there"
    assert "QUJD" not in repr(_attrs(names["speech"]))  # audio is never recorded
    assert "AAAA" not in repr(_attrs(names["transcription"]))
    assert names["custom"].name == "checkpoint"
    for root in (names["task"], names["custom"]):  # root spans of the trace
        assert root.parent.span_id == step.get_span_context().span_id
        assert _attrs(root)[sc.GEN_AI_CONVERSATION_ID] == "conv-7"
    assert sc.GEN_AI_CONVERSATION_ID not in _attrs(names["agent"])


# ----------------------------------------------------------------------------- memory bounds
async def test_state_is_dropped_after_many_traces(otel: Otel, use: Any):
    processor = use()
    for i in range(25):
        await Runner.run(Agent(name=f"a{i}", model=OfflineModel(["ok"])), "hi")
    assert processor._sizes() == (0, 0)
    assert len(otel.of_type("task")) == 25


async def test_hard_caps_bound_memory(otel: Otel, use: Any):
    processor = use(max_open_spans=8, max_traces=4)
    from agents.tracing import custom_span

    for i in range(30):  # spans never finished, traces never ended
        t = agents.trace(f"leaky-{i}")
        t.start()
        custom_span(f"open-{i}", parent=t).start()
    for i in range(30):  # like runs resumed from RunState: no trace start at all
        t = agents.trace(f"resumed-{i}")
        custom_span(f"resumed-{i}", parent=t).start()
    traces, spans = processor._sizes()
    assert traces <= 4 and spans <= 8
    evicted = [s for s in otel.spans() if _attrs(s).get(sc.TIDEBASE_AGENTS_INCOMPLETE)]
    assert len(evicted) == 60 - spans
    processor.shutdown()
    assert processor._sizes() == (0, 0)
    assert len(otel.spans()) == 60  # shutdown ended the rest


async def test_processor_never_raises_into_the_sdk(otel: Otel, use: Any):
    processor = use()

    class Weird:
        span_id = "span_x"
        trace_id = "trace_x"
        parent_id = None
        started_at = "not a date"
        ended_at = None
        span_data = None  # has no .type

        @property
        def error(self) -> dict[str, Any]:
            return {"message": None}

    processor.on_span_start(Weird())
    processor.on_span_end(Weird())
    processor.on_trace_start(object())
    processor.on_trace_end(object())
    processor.force_flush()
    processor.shutdown()


# ----------------------------------------------------------------------------- install
def test_install_and_uninstall_keep_other_processors(otel: Otel, recorder: Recorder):
    other = Recorder()
    agents.set_trace_processors([other])
    try:
        processor = install(tracer_provider=otel.provider)
        assert install(processor) is processor  # idempotent
        from tidebase_otel.agents import _current_processors

        assert _current_processors() == [processor, other]  # first, the others kept in order
        last = Recorder()
        agents.add_trace_processor(last)
        assert uninstall(processor) is True
        assert _current_processors() == [other, last]
        assert uninstall(processor) is False
    finally:
        agents.set_trace_processors([])
