"""Metrics mirror the usage ledger: one set of points per new ledger row, none for a replay or a
duplicate; costs from cost_usd or the user's price table; record_agents_usage writes each Agents
model call to the ledger of its step, once, and never on top of usage recorded by hand."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator

import asyncpg
import pytest
from _otel import Telemetry, instrumented
from agents import Agent, Runner, function_tool
from conftest import new_run_id

from tidebase.aio import RunContext
from tidebase.demo.offline_model import OfflineModel, ToolCall
from tidebase_otel import PriceTable
from tidebase_otel import _semconv as sc
from tidebase_otel.instrumentation import _current
from tidebase_otel.prices import ModelPrice

TYPE = sc.GEN_AI_TOKEN_TYPE

# record_agents_usage writes a step's Agents usage when the step function returns and relies on
# tidebase awaiting `StepTracker.settle` before the checkpoint is written; without that the
# writes race with the end of the run (see tidebase_otel.ledger).
AIO_AWAITS_SETTLE = ".settle(" in inspect.getsource(RunContext)
needs_settle = pytest.mark.xfail(
    not AIO_AWAITS_SETTLE,
    reason="tidebase.aio does not await StepTracker.settle yet",
    strict=False,
)


async def ledger(pg_url: str, run_id: str) -> list[dict]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM usage_records WHERE run_id = $1 ORDER BY created_at", run_id
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def drain() -> None:
    installed = _current()
    if installed is not None and installed.ledger is not None:
        await installed.ledger.drain()


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


# ----------------------------------------------------------------------------- ledger mirror
async def test_points_once_per_new_ledger_row_and_none_for_replays(tide, pg_url: str):
    run_id = new_run_id()

    async def pipeline(run, _):
        async def call_model() -> str:
            await run.usage_record(provider="openai", model="m1", input_tokens=100,
                                   output_tokens=20, cost_usd=0.5)  # fmt: skip
            await run.usage_record(kind="search", provider="serp", cost_usd=0.01, quantity=1)
            return "ok"

        await run.step("ask", call_model)
        # outside a step: the n-th record of an attempt has a deterministic key
        await run.usage_record(provider="openai", model="m2", input_tokens=7, output_tokens=3)
        if run.attempt == 1:
            raise RuntimeError("crash after the step")
        return "done"

    with instrumented(prices={"m2": (1.0, 2.0)}) as otel:
        with pytest.raises(RuntimeError):
            await tide.run("wf", pipeline, run_id=run_id)
        first_in = otel.metric_sum(sc.METRIC_TIDEBASE_TOKENS, **{TYPE: "input"})
        assert first_in == 107
        assert await tide.run("wf", pipeline, run_id=run_id) == "done"
        rows = await ledger(pg_url, run_id)
        assert len(rows) == 3  # the replayed step and the re-run `run:1` record wrote nothing

        assert otel.metric_sum(sc.METRIC_TIDEBASE_TOKENS, **{TYPE: "input"}) == sum(
            r["input_tokens"] or 0 for r in rows
        )
        assert otel.metric_sum(sc.METRIC_TIDEBASE_TOKENS, **{TYPE: "output"}) == sum(
            r["output_tokens"] or 0 for r in rows
        )
        assert otel.metric_count(sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE) == 4  # 2 rows x in/out
        # cost: cost_usd where recorded (0.5 + 0.01), else the price table (m2: 7 in, 3 out)
        expected_m2 = (7 * 1.0 + 3 * 2.0) / 1e6
        assert otel.metric_sum(sc.METRIC_TIDEBASE_COST) == pytest.approx(0.51 + expected_m2)
        # ...and the ledger holds the same cost: a record without cost_usd is priced from the
        # table before it is written (it was stored unpriced, so metrics and ledger differed).
        m2_row = next(r for r in rows if r["model"] == "m2")
        assert float(m2_row["cost_usd"]) == pytest.approx(expected_m2)
        assert float(sum(r["cost_usd"] or 0 for r in rows)) == pytest.approx(
            otel.metric_sum(sc.METRIC_TIDEBASE_COST)
        )
        assert otel.metric_sum(
            sc.METRIC_TIDEBASE_COST, **{sc.TIDEBASE_USAGE_KIND: "search"}
        ) == pytest.approx(0.01)
        # the replay of "ask" did not spend again what it spent in attempt 1
        assert otel.metric_sum(sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED) == pytest.approx(0.51)
        assert otel.metric_sum(sc.METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED, **{TYPE: "input"}) == 100
        point = next(
            p
            for p in otel.metric_points(sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE)
            if p.attributes[sc.GEN_AI_REQUEST_MODEL] == "m1"
        )
        assert dict(point.attributes) == {
            sc.TIDEBASE_WORKFLOW: "wf",
            sc.GEN_AI_PROVIDER_NAME: "openai",
            sc.GEN_AI_REQUEST_MODEL: "m1",
            sc.GEN_AI_OPERATION_NAME: "chat",
            TYPE: "input",
        }


async def test_no_price_no_cost_point_but_tokens_counted(tide, monkeypatch, pg_url: str):
    monkeypatch.delenv(sc.ENV_PRICES, raising=False)
    run_id = new_run_id()

    async def pipeline(run, _):
        await run.usage_record(provider="openai", model="unpriced", input_tokens=5)
        return 1

    with instrumented() as otel:
        await tide.run("wf", pipeline, run_id=run_id)
        assert otel.metric_sum(sc.METRIC_TIDEBASE_TOKENS) == 5
        assert otel.metric_points(sc.METRIC_TIDEBASE_COST) == []
    (row,) = await ledger(pg_url, run_id)
    assert row["cost_usd"] is None  # unpriced stays unpriced: no invented cost


def test_price_table_env_code_and_provider_keys(monkeypatch):
    monkeypatch.setenv(
        sc.ENV_PRICES,
        json.dumps({"m": {"input": 1, "output": 2}, "azure/m": [10, 20], "only-env": [3, 3]}),
    )
    table = PriceTable.resolve({"m": (5, 6)})  # code wins over the environment, per model
    assert table.cost("m", 1_000_000, 0) == 5
    assert table.cost("m", 0, 1_000_000, provider="azure") == 20  # provider/model entry wins
    assert table.cost("only-env", 1_000_000, 1_000_000) == 6
    assert table.cost("other", 10, 10) is None
    assert table.cost("m", None, None) is None
    assert PriceTable({"x": ModelPrice(0.4, 1.6)}).cost("x", 500_000, 500_000) == 1.0
    monkeypatch.setenv(sc.ENV_PRICES, "not json")
    assert len(PriceTable.from_env()) == 0  # ignored with a warning, never an error
    with pytest.raises(ValueError):
        PriceTable({"m": {"input": -1, "output": 1}})
    with pytest.raises(ValueError):
        PriceTable({"m": (1, 2, 3)})


# ----------------------------------------------------------------------------- record_agents_usage
@pytest.fixture
def recording() -> Iterator[Telemetry]:
    with instrumented(record_agents_usage=True, prices={"gpt-4.1-mini": (0.4, 1.6)}) as t:
        yield t


@needs_settle
async def test_record_agents_usage_writes_each_model_call_once(
    tide, pg_url: str, recording: Telemetry
):
    run_id = new_run_id()
    model = OfflineModel(
        [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 3, "b": 3}), "6"]
    )
    agent = Agent(name="calc", model=model, tools=[add])

    async def pipeline(run, _):
        result = await run.step("compute", lambda: Runner.run(agent, "sum"))
        if run.attempt == 1:
            raise RuntimeError("crash after the step")
        u = result.context_wrapper.usage
        return {"in": u.input_tokens, "out": u.output_tokens, "requests": u.requests}

    with pytest.raises(RuntimeError):
        await tide.run("wf", pipeline, run_id=run_id)
    totals = await tide.run("wf", pipeline, run_id=run_id)  # "compute" replays
    await drain()
    rows = await ledger(pg_url, run_id)
    assert len(rows) == totals["requests"] == 3 == model.calls
    assert all(r["step_name"] == "compute" and r["kind"] == "llm" for r in rows)
    assert all(r["label"] == sc.LEDGER_LABEL_AGENTS for r in rows)
    assert all(r["record_key"].startswith("user:agents:trace_") for r in rows)
    assert all(r["model"] == "gpt-4.1-mini" and r["provider"] == "openai" for r in rows)
    assert sum(r["input_tokens"] for r in rows) == totals["in"]
    assert sum(r["output_tokens"] for r in rows) == totals["out"]
    expected_cost = (totals["in"] * 0.4 + totals["out"] * 1.6) / 1e6
    assert float(sum(r["cost_usd"] for r in rows)) == pytest.approx(expected_cost)
    metadata = rows[0]["metadata"]
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert metadata["agent"] == "calc" and metadata["requests"] == 1

    otel = recording
    assert otel.metric_sum(sc.METRIC_TIDEBASE_TOKENS, **{TYPE: "input"}) == totals["in"]
    assert otel.metric_sum(sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE, **{TYPE: "output"}) == totals["out"]
    assert otel.metric_sum(sc.METRIC_TIDEBASE_COST) == pytest.approx(expected_cost)
    assert otel.metric_sum(sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED) == pytest.approx(expected_cost)


@needs_settle
async def test_record_agents_usage_streamed_and_nested_steps(
    tide, pg_url: str, recording: Telemetry
):
    run_id = new_run_id()

    async def pipeline(run, _):
        @function_tool
        async def lookup(q: str) -> str:
            """Look something up (a step with its own agent run)."""

            async def inner() -> str:
                sub = Agent(name="sub", model=OfflineModel(["fact"]))
                return (await Runner.run(sub, q)).final_output

            return await run.step("lookup", inner)

        agent = Agent(
            name="main", model=OfflineModel([ToolCall("lookup", {"q": "x"}), "done"]),
            tools=[lookup],
        )  # fmt: skip

        async def consume() -> str:
            streamed = Runner.run_streamed(agent, "go")
            async for _ in streamed.stream_events():
                pass
            return streamed.final_output

        return await run.step("main", consume)

    assert await tide.run("wf", pipeline, run_id=run_id) == "done"
    await drain()
    rows = await ledger(pg_url, run_id)
    # two model calls of "main" (streamed) and one of "sub", each charged to its own step
    assert sorted(r["step_name"] for r in rows) == ["lookup", "main", "main"]
    assert recording.metric_sum(sc.METRIC_TIDEBASE_TOKENS) == sum(
        r["input_tokens"] + r["output_tokens"] for r in rows
    )


@needs_settle
async def test_hand_recorded_llm_usage_wins_over_record_agents_usage(
    tide, pg_url: str, recording: Telemetry
):
    run_id = new_run_id()

    async def pipeline(run, _):
        async def by_hand() -> str:
            result = await Runner.run(Agent(name="a", model=OfflineModel(["ok"])), "hi")
            u = result.context_wrapper.usage
            await run.usage_record(  # kind defaults to "llm"
                provider="openai", model="gpt-4.1-mini",
                input_tokens=u.input_tokens, output_tokens=u.output_tokens,
            )  # fmt: skip
            return result.final_output

        async def other_kind() -> str:
            await run.usage_record(kind="search", provider="serp", quantity=1, cost_usd=0.01)
            return (
                await Runner.run(Agent(name="b", model=OfflineModel(["ok"])), "hi")
            ).final_output

        await run.step("by_hand", by_hand)
        return await run.step("other_kind", other_kind)

    await tide.run("wf", pipeline, run_id=run_id)
    await drain()
    rows = await ledger(pg_url, run_id)
    by_step: dict[str, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step_name"], []).append(r)
    # the step that recorded its LLM usage by hand gets no automatic record: no double count
    assert [r["label"] for r in by_step["by_hand"]] == [None]
    # a hand record of another kind does not switch the automatic records off
    assert sorted(r["kind"] for r in by_step["other_kind"]) == ["llm", "search"]


async def test_model_calls_outside_steps_are_not_recorded(tide, pg_url: str, recording):
    run_id = new_run_id()

    async def pipeline(run, _):
        return (await Runner.run(Agent(name="a", model=OfflineModel(["ok"])), "hi")).final_output

    assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
    await drain()
    assert await ledger(pg_url, run_id) == []


async def test_the_cost_metric_is_the_ledgers_cost_at_the_extremes(tide, pg_url: str):
    """A table price the ledger cannot store (>= $1e9) leaves the row unpriced and makes no
    cost point; a price below the ledger's 10 decimals is rounded the same on both sides."""
    run_id = new_run_id()

    async def pipeline(run, _):
        await run.usage_record(model="big", input_tokens=2 * 10**15)  # $2e9
        for _ in range(20):
            await run.usage_record(model="tiny", input_tokens=1)  # $1e-11 each
        await run.usage_record(model="tiny", input_tokens=123_456_789)
        return "ok"

    with instrumented(prices={"big": (1.0, 0.0), "tiny": (1e-5, 0.0)}) as otel:
        assert await tide.run("wf", pipeline, run_id=run_id) == "ok"
        rows = await ledger(pg_url, run_id)
        assert next(r for r in rows if r["model"] == "big")["cost_usd"] is None
        assert otel.metric_sum(sc.METRIC_TIDEBASE_COST, **{sc.GEN_AI_REQUEST_MODEL: "big"}) == 0
        stored = sum(float(r["cost_usd"] or 0) for r in rows)
        assert otel.metric_sum(sc.METRIC_TIDEBASE_COST) == pytest.approx(stored, abs=1e-15)
