"""Tests for the scripted offline model: real ``Runner`` runs, no network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    Runner,
    function_tool,
    set_trace_processors,
)
from agents.tracing import Span, Trace, TracingProcessor
from openai.types.responses import ResponseFunctionToolCall

from tidebase.demo.offline_model import (
    ModelRequest,
    OfflineModel,
    OfflineModelProvider,
    ScriptExhaustedError,
    ToolCall,
    handoff_call,
    last_item_is_tool_output,
)


class SpanCollector(TracingProcessor):
    """Keeps finished spans in memory so tests can inspect what the model traced."""

    def __init__(self) -> None:
        self.spans: list[Span[Any]] = []

    def on_trace_start(self, trace: Trace) -> None:
        pass

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass

    def of_type(self, kind: str) -> list[Span[Any]]:
        return [s for s in self.spans if s.span_data.type == kind]


@pytest.fixture
def collector() -> Iterator[SpanCollector]:
    """Replace the default (networked) OpenAI exporter with an in-memory collector."""
    processor = SpanCollector()
    set_trace_processors([processor])
    yield processor
    set_trace_processors([])


calls_made: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Return the weather for a city."""
    calls_made.append(city)
    return f"sunny in {city}"


async def test_tool_call_then_final_text(collector: SpanCollector) -> None:
    calls_made.clear()
    model = OfflineModel([ToolCall("get_weather", {"city": "Paris"}), "It is sunny in Paris."])
    agent = Agent(name="weather", model=model, tools=[get_weather])

    result = await Runner.run(agent, "What's the weather in Paris?")

    assert result.final_output == "It is sunny in Paris."
    assert calls_made == ["Paris"]
    assert model.calls == 2
    assert model.remaining_turns == 0
    # The second call saw the tool's output as its last input item.
    assert last_item_is_tool_output(model.requests[1])
    assert model.requests[1].last_item["output"] == "sunny in Paris"
    assert model.requests[0].tool_names == ["get_weather"]

    spans = collector.of_type("response")
    assert len(spans) == 2
    assert all(s.span_data.usage["requests"] == 1 for s in spans)
    # Sensitive data is included by default: the response object is on the span.
    assert spans[0].span_data.response is not None
    assert spans[0].span_data.response.model == "gpt-4.1-mini"


async def test_usage_is_realistic_and_deterministic(collector: SpanCollector) -> None:
    async def run_once() -> Any:
        model = OfflineModel(
            [ToolCall("get_weather", {"city": "Rome"}), "Sunny."],
            cached_input_tokens=5,
            reasoning_tokens=3,
        )
        agent = Agent(name="weather", instructions="Be brief.", model=model, tools=[get_weather])
        return await Runner.run(agent, "Weather in Rome?")

    first, second = await run_once(), await run_once()
    usage = first.context_wrapper.usage
    assert usage.requests == 2
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 10
    assert usage.output_tokens_details.reasoning_tokens == 6
    # The second request carries the first one's output, so it is bigger.
    entries = usage.request_usage_entries
    assert len(entries) == 2 and entries[1].input_tokens > entries[0].input_tokens
    # Totals equal the sum of the raw responses' usage.
    assert sum(r.usage.input_tokens for r in first.raw_responses) == usage.input_tokens
    assert sum(r.usage.output_tokens for r in first.raw_responses) == usage.output_tokens
    # Deterministic: same script, same numbers and ids.
    assert second.context_wrapper.usage == usage
    assert [r.response_id for r in second.raw_responses] == [
        r.response_id for r in first.raw_responses
    ]


async def test_handoff_between_two_agents(collector: SpanCollector) -> None:
    billing_model = OfflineModel(["Your invoice is on its way."])
    billing = Agent(name="Billing agent", model=billing_model)
    triage_model = OfflineModel([handoff_call(billing)])
    triage = Agent(name="Triage", model=triage_model, handoffs=[billing])

    result = await Runner.run(triage, "I need my invoice")

    assert result.final_output == "Your invoice is on its way."
    assert result.last_agent is billing
    assert triage_model.calls == 1 and billing_model.calls == 1
    assert triage_model.requests[0].handoff_tool_names == ["transfer_to_billing_agent"]
    handoffs = collector.of_type("handoff")
    assert [(s.span_data.from_agent, s.span_data.to_agent) for s in handoffs] == [
        ("Triage", "Billing agent")
    ]
    assert result.context_wrapper.usage.requests == 2


async def test_rule_script_and_provider(collector: SpanCollector) -> None:
    def rule(request: ModelRequest) -> Any:
        if last_item_is_tool_output(request):
            return f"Done: {request.last_item['output']}"
        return ToolCall("get_weather", {"city": "Lima"})

    model = OfflineModel(rule, model="demo-model")
    agent = Agent(name="weather", tools=[get_weather], model="gpt-4.1")
    config = RunConfig(model_provider=OfflineModelProvider(model))

    first = await Runner.run(agent, "Weather?", run_config=config)
    second = await Runner.run(agent, "Weather again?", run_config=config)

    assert first.final_output == second.final_output == "Done: sunny in Lima"
    assert model.calls == 4  # a rule never runs out


async def test_parallel_calls_and_raw_function_call(collector: SpanCollector) -> None:
    calls_made.clear()
    raw = ResponseFunctionToolCall(
        type="function_call", name="get_weather", call_id="call_raw", arguments='{"city": "Oslo"}'
    )
    model = OfflineModel([[ToolCall("get_weather", {"city": "Bern"}), raw], "Both sunny."])
    result = await Runner.run(Agent(name="w", model=model, tools=[get_weather]), "Weather?")
    assert result.final_output == "Both sunny."
    assert sorted(calls_made) == ["Bern", "Oslo"]


async def test_streamed_run_reports_usage(collector: SpanCollector) -> None:
    model = OfflineModel([ToolCall("get_weather", {"city": "Kyiv"}), "Sunny in Kyiv."])
    agent = Agent(name="weather", model=model, tools=[get_weather])

    result = Runner.run_streamed(agent, "Weather in Kyiv?")
    raw_types: list[str] = []
    text = ""
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                text += event.data.delta

    assert result.is_complete
    assert result.final_output == "Sunny in Kyiv."
    assert text == "Sunny in Kyiv."
    assert raw_types.count("response.completed") == 2
    assert "response.function_call_arguments.delta" in raw_types
    usage = result.context_wrapper.usage
    assert usage.requests == 2
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert all(s.span_data.usage["requests"] == 1 for s in collector.of_type("response"))
    assert model.requests[0].streamed


async def test_generation_span_kind(collector: SpanCollector) -> None:
    model = OfflineModel(["hi"], model="gpt-4o-mini", span_kind="generation")
    await Runner.run(Agent(name="a", model=model), "hello")

    assert collector.of_type("response") == []
    (span,) = collector.of_type("generation")
    assert span.span_data.model == "gpt-4o-mini"
    assert isinstance(span.span_data.model_config, dict)
    assert span.span_data.usage["requests"] == 1
    assert span.span_data.usage["input_tokens"] > 0
    assert span.span_data.output[0]["content"][0]["text"] == "hi"


async def test_no_sensitive_data_keeps_usage_only(collector: SpanCollector) -> None:
    model = OfflineModel(["secret answer"])
    config = RunConfig(trace_include_sensitive_data=False)
    await Runner.run(Agent(name="a", model=model), "secret question", run_config=config)

    (span,) = collector.of_type("response")
    assert span.span_data.response is None
    assert span.span_data.input is None
    assert span.span_data.usage["output_tokens"] > 0
    assert "secret" not in json.dumps(span.export())


async def test_script_exhausted_raises(collector: SpanCollector) -> None:
    model = OfflineModel([ToolCall("get_weather", {"city": "Nice"})])
    with pytest.raises(ScriptExhaustedError):
        await Runner.run(Agent(name="w", model=model, tools=[get_weather]), "Weather?")
    assert model.calls == 2
    (failed,) = [s for s in collector.of_type("response") if s.error is not None]
    assert failed.error["message"] == "Error getting response"
