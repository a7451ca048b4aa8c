"""The research pipeline of the design, crashed for real and resumed, seen through OpenTelemetry.

Attempt 1 runs in a worker process (`python -m tidebase.demo.worker`) that exports over
OTLP/HTTP to a local receiver (decoded with opentelemetry-proto) and is SIGKILLed inside the
writer's agent run, right after the ticket step. Attempt 2 runs here, instrumented into the
in-memory SDK. Real `Runner.run` with the scripted offline model, real embedded Postgres.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from _otel import OtlpReceiver, Telemetry, instrumented
from conftest import new_run_id
from opentelemetry import trace as otel_trace
from opentelemetry.trace import StatusCode

from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, offline_models
from tidebase.errors import RunLeased
from tidebase_otel import _semconv as sc

CONTENT_ATTRS = (
    sc.GEN_AI_INPUT_MESSAGES,
    sc.GEN_AI_OUTPUT_MESSAGES,
    sc.GEN_AI_SYSTEM_INSTRUCTIONS,
    sc.GEN_AI_TOOL_CALL_ARGUMENTS,
    sc.GEN_AI_TOOL_CALL_RESULT,
)
# Every metric attribute tidebase_otel may use: none of them identifies a run or a step.
TOPIC = "durable agents"
ALLOWED_METRIC_ATTRS = {
    sc.TIDEBASE_WORKFLOW,
    sc.TIDEBASE_STEP_OUTCOME,
    sc.TIDEBASE_RUN_STATUS,
    sc.TIDEBASE_USAGE_KIND,
    sc.GEN_AI_PROVIDER_NAME,
    sc.GEN_AI_REQUEST_MODEL,
    sc.GEN_AI_TOKEN_TYPE,
    sc.GEN_AI_OPERATION_NAME,
}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _hex(span) -> tuple[str, str]:
    ctx = span.context
    return otel_trace.format_trace_id(ctx.trace_id), otel_trace.format_span_id(ctx.span_id)


def _attrs(span) -> dict:
    return dict(span.attributes or {})


async def _crash_attempt_one(
    pg_url: str, run_id: str, tickets: Path, receiver: OtlpReceiver
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k != "OPENAI_API_KEY"  # offline, our exporter only
    }
    env.update(
        TIDEBASE_LEASE_MS="1000",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRIC_EXPORT_INTERVAL="600000",  # only the explicit flush before the kill
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidebase.demo.worker",
        "--url",
        pg_url,
        "--run-id",
        run_id,
        "--topic",
        TOPIC,
        "--tickets",
        str(tickets),
        "--crash-after-ticket",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(process.wait(), 120) == -9  # SIGKILL, mid agent run


async def _resume(tide, run_id: str, tickets: TicketSystem) -> str:
    pipeline = build_pipeline(offline_models(), tickets)
    for _ in range(100):
        try:
            return await tide.run(WORKFLOW, pipeline, run_id=run_id, input={"topic": TOPIC})
        except RunLeased:  # the dead worker's lease has not expired yet
            await asyncio.sleep(0.2)
    raise AssertionError("the dead worker's lease never expired")


async def test_crash_and_resume_span_tree_links_and_metrics_equal_the_ledger(
    tide, pg_url: str, receiver: OtlpReceiver, tmp_path: Path
):
    run_id = new_run_id()
    tickets = TicketSystem(tmp_path / "tickets.jsonl")

    # ---- attempt 1: a worker process, SIGKILLed inside the draft step's agent run
    await _crash_attempt_one(pg_url, run_id, tickets.path, receiver)
    first = receiver.spans()
    assert {s.service_name for s in first} == {"tidebase-demo"}
    names = sorted(s.name for s in first)
    # spans that ended before the kill were exported; the run span, the draft step and the
    # writer's agent run were still open and are lost, as with any crash
    assert "step research" in names and "step create_ticket" in names
    assert not any(n.startswith("run ") or n == "step draft" for n in names)
    assert "invoke_agent researcher" in names and "invoke_agent writer" not in names
    first_by_name = {s.name: s for s in first}
    research_1 = first_by_name["step research"]
    ticket_1 = first_by_name["step create_ticket"]
    assert research_1.attributes[sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert research_1.attributes[sc.TIDEBASE_RUN_ATTEMPT] == 1
    assert ticket_1.attributes[sc.TIDEBASE_STEP_SIDE_EFFECTS] == ("tickets.create",)
    assert ticket_1.attributes[sc.TIDEBASE_STEP_PARENT] == "draft"
    assert len({s.trace_id for s in first}) == 1

    # ---- attempt 2: here, in memory
    with instrumented() as otel:
        post = await _resume(tide, run_id, tickets)
        assert "checkpoints" in post
        spans = otel.spans()
        await _check_attempt_two_tree(otel, run_id, research_1, ticket_1, pg_url)
        await _check_metrics_equal_ledger(otel, receiver, run_id, pg_url)
    assert len(tickets.tickets()) == 1  # the ticket step replayed
    for span in spans:
        for attr in CONTENT_ATTRS:
            assert attr not in _attrs(span), (span.name, attr)
    for span in first:
        for attr in CONTENT_ATTRS:
            assert attr not in span.attributes, (span.name, attr)


async def _check_attempt_two_tree(
    otel: Telemetry, run_id: str, research_1, ticket_1, pg_url: str
) -> None:
    runs = [s for s in otel.run_spans() if _attrs(s).get(sc.TIDEBASE_RUN_STATUS) == "completed"]
    (run_span,) = runs
    assert run_span.name == f"run {WORKFLOW}"
    assert _attrs(run_span)[sc.TIDEBASE_RUN_ATTEMPT] == 2
    tree = [s for s in otel.spans() if s.context.trace_id == run_span.context.trace_id]
    assert run_span.context.trace_id != int(research_1.trace_id, 16)  # its own trace

    # run -> research (replayed), draft (executed)
    top = otel.children(run_span)
    assert [s.name for s in top] == ["step research", "step draft"]
    research_2, draft = top
    assert _attrs(research_2)[sc.TIDEBASE_STEP_REPLAYED] is True
    assert _attrs(research_2)[sc.TIDEBASE_STEP_OUTCOME] == "replayed"
    assert _attrs(research_2)[sc.TIDEBASE_REPLAY_INPUT_TOKENS_AVOIDED] > 0
    assert _attrs(draft)[sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert draft.status.status_code == StatusCode.UNSET

    # the replays link to the spans of attempt 1 that executed them (exported by the worker)
    (link,) = research_2.links
    assert (
        otel_trace.format_trace_id(link.context.trace_id),
        otel_trace.format_span_id(link.context.span_id),
    ) == (research_1.trace_id, research_1.span_id)

    # draft -> invoke_workflow -> invoke_agent writer -> turn 1 -> chat, execute_tool
    #       -> step create_ticket (replayed, under its tool span); turn 2 -> chat
    (workflow,) = otel.children(draft)
    assert workflow.name == "invoke_workflow Agent workflow"
    assert (
        _attrs(draft)[sc.TIDEBASE_AGENTS_TRACE_ID] == _attrs(workflow)[sc.TIDEBASE_AGENTS_TRACE_ID]
    )
    (agent,) = otel.children(workflow)
    assert agent.name == "invoke_agent writer"
    turns = otel.children(agent)
    assert [t.name for t in turns] == ["turn 1", "turn 2"]
    turn1 = [s.name for s in otel.children(turns[0])]
    assert turn1 == ["chat offline-scripted", "execute_tool create_ticket"]
    tool = otel.children(turns[0])[1]
    (ticket_2,) = otel.children(tool)
    assert ticket_2.name == "step create_ticket"
    assert _attrs(ticket_2)[sc.TIDEBASE_STEP_REPLAYED] is True
    (link,) = ticket_2.links
    assert otel_trace.format_span_id(link.context.span_id) == ticket_1.span_id
    assert [s.name for s in otel.children(turns[1])] == ["chat offline-scripted"]
    chats = [s for s in tree if s.name == "chat offline-scripted"]
    assert all(_attrs(c)[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0 for c in chats)

    # the run span links to attempt 1's run span, whose context tidebase stored
    conn = await asyncpg.connect(pg_url)
    try:
        attempts = await conn.fetch(
            "SELECT attempt, trace_id, span_id FROM run_attempts WHERE run_id = $1 "
            "ORDER BY attempt",
            run_id,
        )
        steps = await conn.fetch(
            "SELECT name, trace_id, span_id FROM steps WHERE run_id = $1", run_id
        )
    finally:
        await conn.close()
    assert attempts[0]["trace_id"] == research_1.trace_id
    (link,) = run_span.links
    assert otel_trace.format_span_id(link.context.span_id) == attempts[0]["span_id"]
    assert (attempts[1]["trace_id"], attempts[1]["span_id"]) == _hex(run_span)
    stored = {r["name"]: (r["trace_id"], r["span_id"]) for r in steps}
    assert stored["research"] == (research_1.trace_id, research_1.span_id)
    assert stored["create_ticket"] == (ticket_1.trace_id, ticket_1.span_id)
    assert stored["draft"] == _hex(draft)


async def _check_metrics_equal_ledger(
    otel: Telemetry, receiver: OtlpReceiver, run_id: str, pg_url: str
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        ledger = await conn.fetchrow(
            "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c, "
            "count(*) AS n FROM usage_records WHERE run_id = $1",
            run_id,
        )
        research = await conn.fetchrow(
            "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c "
            "FROM usage_records WHERE run_id = $1 AND step_name = 'research'",
            run_id,
        )
    finally:
        await conn.close()
    assert ledger["n"] == 2  # research (attempt 1) and draft (attempt 2), once each

    def total(name: str, **attrs) -> float:  # both processes: OTLP from 1, memory from 2
        return receiver.metric_total(name, **attrs) + otel.metric_sum(name, **attrs)

    tokens = sc.METRIC_TIDEBASE_TOKENS
    histogram = sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE
    typ = sc.GEN_AI_TOKEN_TYPE
    assert total(tokens, **{typ: "input"}) == ledger["i"]
    assert total(tokens, **{typ: "output"}) == ledger["o"]
    assert total(histogram, **{typ: "input"}) == ledger["i"]
    assert total(histogram, **{typ: "output"}) == ledger["o"]
    assert total(sc.METRIC_TIDEBASE_COST) == pytest.approx(float(ledger["c"]), abs=1e-9)
    # attempt 1 recorded research's usage; attempt 2 replayed it and recorded none of it again
    assert receiver.metric_total(tokens, **{typ: "input"}) == research["i"]
    assert otel.metric_sum(tokens, **{typ: "input"}) == ledger["i"] - research["i"]
    avoided = sc.METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED
    assert otel.metric_sum(avoided, **{typ: "input"}) == research["i"]
    assert otel.metric_sum(avoided, **{typ: "output"}) == research["o"]
    assert otel.metric_sum(sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED) == pytest.approx(
        float(research["c"]), abs=1e-9
    )
    point = otel.metric_points(histogram)[0]
    assert point.attributes[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert point.attributes[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert point.attributes[sc.GEN_AI_REQUEST_MODEL] == "offline-scripted"

    # steps by outcome: attempt 1 completed research + create_ticket (draft died with it);
    # attempt 2 replayed two and completed draft. Runs: only attempt 2 ended.
    outcome = sc.TIDEBASE_STEP_OUTCOME
    assert total(sc.METRIC_TIDEBASE_STEPS, **{outcome: "completed"}) == 3
    assert total(sc.METRIC_TIDEBASE_STEPS, **{outcome: "replayed"}) == 2
    assert total(sc.METRIC_TIDEBASE_RUNS, **{sc.TIDEBASE_RUN_STATUS: "completed"}) == 1

    # low cardinality: no run ids, step ids or step names anywhere in the metrics
    for (_, attr_set), _value in receiver.metric_sums().items():
        assert {k for k, _ in attr_set} <= ALLOWED_METRIC_ATTRS
    data = otel.reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    assert set(p.attributes) <= ALLOWED_METRIC_ATTRS, metric.name
                    assert run_id not in repr(dict(p.attributes))


def test_the_demo_says_whether_its_otlp_export_arrived(receiver, monkeypatch):
    """With a collector it says the spans were exported; with none it says the export failed
    (it claimed success either way) and gives up within its short timeout."""
    import socket
    import time

    from tidebase.demo.trace_tree import DemoTelemetry

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TIMEOUT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    for endpoint, expected in ((receiver.endpoint, "also exported"), (closed, "failed: 1 spans")):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        telemetry = DemoTelemetry("test")
        try:
            telemetry.tracer_provider.get_tracer("t").start_span("s").end()
            started = time.monotonic()
            telemetry.flush()
            assert time.monotonic() - started < 10  # not the exporters' 10 s, twice
            note = telemetry.otlp_note()
            assert note is not None and expected in note and endpoint in note, note
        finally:
            telemetry.close()
    assert receiver.traces  # the first one really arrived


def test_the_demo_says_the_export_failed_when_only_its_metrics_are_refused(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tidebase.demo.trace_tree import DemoTelemetry

    class TracesOnly(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200 if self.path.endswith("/v1/traces") else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), TracesOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = DemoTelemetry("test")
    try:
        telemetry.meter_provider.get_meter("m").create_counter("c").add(1)
        telemetry.tracer_provider.get_tracer("t").start_span("s").end()
        telemetry.flush()
        note = telemetry.otlp_note()
        assert note is not None and "failed: 0 spans, 1 metric batches" in note, note
    finally:
        telemetry.close()
        server.shutdown()
