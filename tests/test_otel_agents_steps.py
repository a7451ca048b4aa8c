"""Agents SDK runs inside tidebase steps, with tidebase_otel instrumented: the Agents spans nest
under the step that ran them (handoffs, tools, guardrails, streamed and RunState-resumed runs),
steps called from a tool nest under that tool's span, other instrumentations that change the
current span do not re-parent anything, and concurrent runs never cross."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import agents
import pytest
from _otel import Telemetry, instrumented
from agents import (
    Agent,
    GuardrailFunctionOutput,
    RunConfig,
    Runner,
    function_tool,
    input_guardrail,
)
from agents.tracing import TracingProcessor
from conftest import new_run_id
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

import tidebase_otel
from tidebase.demo.offline_model import OfflineModel, ToolCall, handoff_call
from tidebase_otel import _semconv as sc


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    with instrumented() as telemetry:
        yield telemetry


def _attrs(span) -> dict:
    return dict(span.attributes or {})


def _agents_spans(otel: Telemetry) -> list:
    return [s for s in otel.spans() if sc.TIDEBASE_AGENTS_SPAN_TYPE in _attrs(s)]


def _under(otel: Telemetry, span, ancestor) -> bool:
    return ancestor.context.span_id in {a.context.span_id for a in otel.ancestors(span)}


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def test_tool_and_guardrail_spans_nest_under_the_step(tide, otel: Telemetry):
    @input_guardrail
    async def polite(ctx: Any, agent: Any, inp: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered=False)

    agent = Agent(
        name="calc",
        model=OfflineModel([ToolCall("add", {"a": 1, "b": 2}), "3"]),
        tools=[add],
        input_guardrails=[polite],
    )

    async def pipeline(run, _):
        result = await run.step("compute", lambda: Runner.run(agent, "1+2?"))
        return result.final_output

    assert await tide.run("wf", pipeline, run_id=new_run_id()) == "3"
    step = otel.one("step compute")
    run_span = otel.one("run wf")
    (task,) = [s for s in _agents_spans(otel) if s.name.startswith("invoke_workflow")]
    assert task.parent.span_id == step.context.span_id
    assert _attrs(step)[sc.TIDEBASE_AGENTS_TRACE_ID] == _attrs(task)[sc.TIDEBASE_AGENTS_TRACE_ID]
    tool = otel.one("execute_tool add")
    guardrail = otel.one("guardrail polite")
    assert otel.parent(guardrail).name == "turn 1"
    assert otel.parent(tool).name == "turn 1"
    for span in _agents_spans(otel):
        assert _under(otel, span, step) and _under(otel, span, run_span), span.name
        assert span.context.trace_id == run_span.context.trace_id


async def test_handoff_inside_a_step(tide, otel: Telemetry):
    billing = Agent(name="billing", model=OfflineModel(["refund issued"]))
    triage = Agent(name="triage", model=OfflineModel([handoff_call(billing)]), handoffs=[billing])

    async def pipeline(run, _):
        result = await run.step("support", lambda: Runner.run(triage, "refund please"))
        return result.final_output

    assert await tide.run("wf", pipeline, run_id=new_run_id()) == "refund issued"
    step = otel.one("step support")
    handoff = otel.one("handoff triage -> billing")
    assert _attrs(handoff)[sc.TIDEBASE_AGENTS_HANDOFF_TO] == "billing"
    task = otel.parent(otel.one("invoke_agent billing"))
    assert task.name == "invoke_workflow Agent workflow"
    assert otel.parent(otel.one("invoke_agent triage")) is not None
    assert task.parent.span_id == step.context.span_id
    assert _under(otel, handoff, step)


async def test_streamed_run_inside_a_step(tide, otel: Telemetry):
    agent = Agent(
        name="streamer",
        model=OfflineModel([ToolCall("add", {"a": 2, "b": 2}), "four"]),
        tools=[add],
    )

    async def consume() -> dict:
        streamed = Runner.run_streamed(agent, "2+2")
        async for _ in streamed.stream_events():
            pass
        usage = streamed.context_wrapper.usage
        return {"output": streamed.final_output, "input_tokens": usage.input_tokens}

    async def pipeline(run, _):
        return await run.step("stream", consume)

    out = await tide.run("wf", pipeline, run_id=new_run_id())
    assert out["output"] == "four"
    step = otel.one("step stream")
    chats = [s for s in otel.spans() if _attrs(s).get(sc.GEN_AI_OPERATION_NAME) == "chat"]
    assert len(chats) == 2
    assert sum(_attrs(c)[sc.GEN_AI_USAGE_INPUT_TOKENS] for c in chats) == out["input_tokens"]
    for span in _agents_spans(otel):
        assert _under(otel, span, step), span.name


async def test_run_resumed_from_run_state_nests_under_its_own_step(tide, otel: Telemetry):
    @function_tool(needs_approval=True)
    def delete_disk(name: str) -> str:
        """Delete a disk (needs approval)."""
        return f"deleted {name}"

    agent = Agent(
        name="ops",
        model=OfflineModel([ToolCall("delete_disk", {"name": "d1"}), "done"]),
        tools=[delete_disk],
    )
    config = RunConfig(workflow_name="ops-flow", group_id="conv-9")
    held: dict[str, Any] = {}

    async def ask() -> str:
        result = await Runner.run(agent, "clean up", run_config=config)
        state = result.to_state()
        for item in result.interruptions:
            state.approve(item)
        held["state"] = state
        return "approval given"

    async def resume() -> str:
        result = await Runner.run(agent, held["state"], run_config=config)
        return result.final_output

    async def pipeline(run, _):
        await run.step("ask", ask)
        return await run.step("resume", resume)

    assert await tide.run("wf", pipeline, run_id=new_run_id()) == "done"
    ask_span, resume_span = otel.one("step ask"), otel.one("step resume")
    # every span of the resumed run (no trace-start callback) is under the resume step
    for span in _agents_spans(otel):
        own = resume_span if span.start_time >= resume_span.start_time else ask_span
        assert _under(otel, span, own), span.name
    assert any(_under(otel, s, resume_span) for s in otel.named("execute_tool delete_disk"))
    roots = [s for s in _agents_spans(otel) if otel.parent(s) in (ask_span, resume_span)]
    assert {otel.parent(s).name for s in roots} == {"step ask", "step resume"}
    for root in roots:
        assert _attrs(root)[sc.GEN_AI_CONVERSATION_ID] == "conv-9"


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
        self.open[span.span_id] = (own, otel_context.attach(otel_trace.set_span_in_context(own)))

    def on_span_end(self, span: Any) -> None:
        own, token = self.open.pop(span.span_id)
        otel_context.detach(token)
        own.end()

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


@pytest.mark.parametrize("with_intruder", [False, True])
async def test_step_inside_a_tool_nests_under_the_tool_span(
    tide, otel: Telemetry, with_intruder: bool
):
    intruder = Intruder(otel.tracer)
    if with_intruder:  # registered before ours: it runs first and changes the current span
        agents.set_trace_processors([intruder, *agents_processors()])

    async def pipeline(run, _):
        @function_tool
        async def file_ticket(title: str) -> str:
            """File a ticket."""
            ticket = await run.step(
                "ticket",
                lambda: {"id": "T-1", "title": title},
                side_effects=["tickets.create"],
                idempotency_key=f"{run.run_id}:ticket",
            )
            return ticket["id"]

        agent = Agent(
            name="writer",
            model=OfflineModel([ToolCall("file_ticket", {"title": "go"}), "filed"]),
            tools=[file_ticket],
        )
        result = await run.step("draft", lambda: Runner.run(agent, "write"))
        return result.final_output

    assert await tide.run("wf", pipeline, run_id=new_run_id()) == "filed"
    draft, ticket = otel.one("step draft"), otel.one("step ticket")
    tool = otel.one("execute_tool file_ticket")
    assert ticket.parent.span_id == tool.context.span_id
    assert _attrs(ticket)[sc.TIDEBASE_STEP_PARENT] == "draft"
    for span in _agents_spans(otel):
        assert span.parent.span_id not in intruder.ids, span.name
        assert _under(otel, span, draft), span.name
    if with_intruder:
        assert intruder.ids


def agents_processors() -> list[TracingProcessor]:
    from tidebase_otel.agents import _current_processors

    return _current_processors() or []


async def test_concurrent_runs_with_agents_never_cross(make_client, otel: Telemetry):
    @function_tool
    async def slow_echo(text: str) -> str:
        """Echo after yielding to the event loop, so concurrent runs interleave."""
        await asyncio.sleep(0.005)
        return text

    async def pipeline(run, input):
        i = input["i"]
        agent = Agent(
            name=f"agent-{i}",
            model=OfflineModel([ToolCall("slow_echo", {"text": f"x{i}"}), f"done {i}"]),
            tools=[slow_echo],
        )
        result = await run.step("work", lambda: Runner.run(agent, f"run {i}"))
        return result.final_output

    tide = make_client()
    run_ids = [new_run_id() for _ in range(6)]
    results = await asyncio.gather(
        *(tide.run("wf", pipeline, run_id=r, input={"i": i}) for i, r in enumerate(run_ids))
    )
    assert results == [f"done {i}" for i in range(6)]
    steps = {_attrs(s)[sc.TIDEBASE_RUN_ID]: s for s in otel.step_spans()}
    for span in _agents_spans(otel):
        agent_name = _attrs(span).get(sc.GEN_AI_AGENT_NAME)
        owners = [rid for rid, step in steps.items() if _under(otel, span, step)]
        assert len(owners) == 1, span.name
        if agent_name:
            assert owners == [run_ids[int(agent_name.split("-")[1])]]


def test_instrument_installs_one_agents_processor_and_keeps_others():
    from tidebase_otel.agents import OTelAgentsProcessor, _current_processors

    class Other(Intruder):
        def __init__(self) -> None:
            pass

    other = Other()
    agents.set_trace_processors([other])
    telemetry = Telemetry()
    try:
        tidebase_otel.instrument(tracer_provider=telemetry.tracer_provider)
        try:
            procs = _current_processors()
            assert [type(p) for p in procs[:1]] == [OTelAgentsProcessor]  # first in line
            assert procs[1:] == [other]
        finally:
            tidebase_otel.uninstrument()
        assert _current_processors() == [other]
        # a processor the user registered is reused, not doubled, and stays afterwards
        mine = OTelAgentsProcessor()
        agents.add_trace_processor(mine)
        tidebase_otel.instrument()
        try:
            assert _current_processors() == [other, mine]
        finally:
            tidebase_otel.uninstrument()
        assert _current_processors() == [other, mine]
    finally:
        agents.set_trace_processors([])
        telemetry.shutdown()
