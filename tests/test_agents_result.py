"""Tests for recording an Agents SDK run result as JSON and replaying it."""

from __future__ import annotations

import dataclasses
import enum
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, function_tool, set_trace_processors
from agents.usage import Usage
from pydantic import BaseModel

from tidebase._agents_result import (
    ReplayedRunResult,
    decode_run_result,
    encode_run_result,
    is_run_result,
)
from tidebase.demo.offline_model import OfflineModel, ToolCall, handoff_call

ROOT = Path(__file__).resolve().parents[1]


class Verdict(BaseModel):
    """A structured agent output."""

    label: str
    score: float
    tags: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Route:
    name: str
    points: list[Point]


class Color(enum.Enum):
    RED = "red"


@function_tool
def lookup(term: str) -> str:
    """Look a term up."""
    return f"{term}: found"


@pytest.fixture(autouse=True)
def _no_trace_export() -> None:
    set_trace_processors([])  # the default exporter needs network


def round_trip(result: Any) -> ReplayedRunResult:
    """Encode, pass through JSON text (as Postgres would), decode."""
    return decode_run_result(json.loads(json.dumps(encode_run_result(result))))


def run_python(code: str, stdin: str = "") -> str:
    """Run ``code`` in a fresh interpreter from the repo root; return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_same_usage(replayed: Any, live: Any) -> None:
    for attr in ("requests", "input_tokens", "output_tokens", "total_tokens"):
        assert getattr(replayed, attr) == getattr(live, attr), attr
    assert replayed.input_tokens_details.cached_tokens == live.input_tokens_details.cached_tokens
    assert (
        replayed.output_tokens_details.reasoning_tokens
        == live.output_tokens_details.reasoning_tokens
    )


async def test_str_output_and_usage_round_trip() -> None:
    model = OfflineModel(
        [ToolCall("lookup", {"term": "tide"}), "Tides are caused by the moon."],
        cached_input_tokens=4,
        reasoning_tokens=2,
    )
    agent = Agent(name="Researcher", model=model, tools=[lookup])
    live = await Runner.run(agent, "What causes tides?")

    assert is_run_result(live)
    replayed = round_trip(live)

    assert replayed.replayed is True
    assert replayed.new_items == []
    assert replayed.final_output == live.final_output == "Tides are caused by the moon."
    assert replayed.final_output_as(str, raise_if_incorrect_type=True) == live.final_output
    usage = replayed.context_wrapper.usage
    assert isinstance(usage, Usage)
    assert usage == live.context_wrapper.usage  # including details and per-request entries
    assert_same_usage(usage, live.context_wrapper.usage)
    assert usage.requests == 2 and usage.input_tokens_details.cached_tokens == 8
    assert replayed.last_agent_name == "Researcher"
    assert replayed.last_agent is not None and replayed.last_agent.name == live.last_agent.name
    assert replayed.last_agent.model == "gpt-4.1-mini"
    assert [r.usage for r in replayed.raw_responses] == [r.usage for r in live.raw_responses]
    assert [r.response_id for r in replayed.raw_responses] == [
        r.response_id for r in live.raw_responses
    ]
    assert replayed.last_response_id == live.last_response_id
    # Adding replayed usage to a running total works like live usage.
    total = Usage()
    total.add(replayed.context_wrapper.usage)
    assert total.total_tokens == live.context_wrapper.usage.total_tokens


async def test_pydantic_output_type_round_trip() -> None:
    verdict = Verdict(label="ok", score=0.75, tags=["a", "b"])
    model = OfflineModel([verdict])
    agent = Agent(name="Judge", model=model, output_type=Verdict)
    live = await Runner.run(agent, "Judge this")
    assert isinstance(live.final_output, Verdict)

    data = json.loads(json.dumps(encode_run_result(live)))
    assert data["final_output"]["type"] == f"{__name__}:Verdict"
    replayed = decode_run_result(data)

    assert isinstance(replayed.final_output, Verdict)
    assert replayed.final_output == live.final_output
    assert replayed.output_type_restored
    assert replayed.final_output_as(Verdict, raise_if_incorrect_type=True).score == 0.75
    assert_same_usage(replayed.context_wrapper.usage, live.context_wrapper.usage)
    assert model.calls == 1  # replay never called the model again


async def test_handoff_records_last_agent() -> None:
    billing = Agent(name="Billing", model=OfflineModel(["Paid."]))
    triage = Agent(name="Triage", model=OfflineModel([handoff_call(billing)]), handoffs=[billing])
    live = await Runner.run(triage, "invoice?")
    replayed = round_trip(live)
    assert replayed.last_agent_name == "Billing"
    assert replayed.context_wrapper.usage == live.context_wrapper.usage


async def test_streamed_result_round_trip() -> None:
    agent = Agent(name="Streamer", model=OfflineModel(["streamed answer"]))
    live = Runner.run_streamed(agent, "hi")
    with pytest.raises(ValueError, match="completes"):
        encode_run_result(live)
    async for _ in live.stream_events():
        pass

    replayed = round_trip(live)
    assert replayed.streamed and replayed.is_complete
    assert replayed.final_output == "streamed answer"
    assert replayed.context_wrapper.usage == live.context_wrapper.usage
    assert replayed.context_wrapper.usage.requests == 1
    assert [event async for event in replayed.stream_events()] == []


@pytest.mark.parametrize(
    ("output", "expected_type"),
    [
        ({"a": [1, 2.5, None, True]}, dict),
        ([1, "two"], list),
        (None, type(None)),
        (Route("r", [Point(1, 2)]), Route),
        (Color.RED, Color),
    ],
)
async def test_other_output_kinds(output: Any, expected_type: type) -> None:
    live = await Runner.run(Agent(name="a", model=OfflineModel(["x"])), "hi")
    live.final_output = output
    replayed = round_trip(live)
    assert type(replayed.final_output) is expected_type
    assert replayed.final_output == output


async def test_unencodable_output_names_its_type() -> None:
    live = await Runner.run(Agent(name="a", model=OfflineModel(["x"])), "hi")
    live.final_output = {1, 2}
    with pytest.raises(TypeError, match="builtins:set"):
        encode_run_result(live)
    live.final_output = (1, 2)  # would silently come back as a list
    with pytest.raises(TypeError, match="builtins:tuple"):
        encode_run_result(live)


async def test_unimportable_model_falls_back_to_dict() -> None:
    class Local(BaseModel):
        value: int

    live = await Runner.run(
        Agent(name="a", model=OfflineModel([Local(value=3)]), output_type=Local), "hi"
    )
    replayed = round_trip(live)
    assert replayed.final_output == {"value": 3}
    assert replayed.output_type_restored is False
    with pytest.raises(TypeError):
        replayed.final_output_as(Local, raise_if_incorrect_type=True)
    # Re-recording a fallback keeps the original type information.
    again = encode_run_result(replayed)
    assert again["final_output"]["type"].endswith("Local")
    assert again["final_output"]["kind"] == "pydantic"


async def test_replayed_result_re_encodes() -> None:
    live = await Runner.run(
        Agent(
            name="a",
            model=OfflineModel([Verdict(label="x", score=1, tags=[])]),
            output_type=Verdict,
        ),
        "hi",
    )
    once = round_trip(live)
    assert is_run_result(once)
    twice = round_trip(once)
    assert twice.final_output == live.final_output
    assert twice.context_wrapper.usage == live.context_wrapper.usage


def test_rejects_foreign_data() -> None:
    with pytest.raises(ValueError, match="format"):
        decode_run_result({"final_output": "x"})
    with pytest.raises(TypeError):
        encode_run_result("not a result")
    assert not is_run_result("x")


def test_is_run_result_does_not_import_agents() -> None:
    code = (
        "import sys; from tidebase._agents_result import is_run_result; "
        "assert is_run_result(object()) is False; "
        "assert 'agents' not in sys.modules; print('ok')"
    )
    assert run_python(code).strip() == "ok"


async def test_decode_without_agents_installed() -> None:
    live = await Runner.run(Agent(name="a", model=OfflineModel(["hello"])), "hi")
    payload = json.dumps(encode_run_result(live))
    expected = live.context_wrapper.usage
    code = (
        "import json, sys\n"
        "for name in ('agents', 'agents.usage', 'agents.items'):\n"
        "    sys.modules[name] = None  # makes `import agents...` raise ImportError\n"
        "from tidebase._agents_result import decode_run_result\n"
        "r = decode_run_result(json.loads(sys.stdin.read()))\n"
        "u = r.context_wrapper.usage\n"
        "print(json.dumps([r.final_output, u.requests, u.input_tokens, u.output_tokens,\n"
        "    u.total_tokens, u.input_tokens_details.cached_tokens,\n"
        "    u.output_tokens_details.reasoning_tokens, r.raw_responses[0].usage.total_tokens]))\n"
    )
    assert json.loads(run_python(code, stdin=payload)) == [
        "hello",
        expected.requests,
        expected.input_tokens,
        expected.output_tokens,
        expected.total_tokens,
        0,
        0,
        expected.total_tokens,
    ]
