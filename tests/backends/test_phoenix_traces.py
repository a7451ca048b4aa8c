"""Arize Phoenix, a real OTLP trace store, receives the research pipeline's spans from two worker
processes (attempt 1 SIGKILLed inside the writer's agent run, attempt 2 resuming), exported with
``tidebase_otel.configure()`` over OTLP/HTTP; the test reads both traces back through Phoenix's
REST API, following the links that ``tidebase runs show`` prints with ``TIDEBASE_TRACE_URL``,
and finds the run by its ``tidebase.run.id`` tag as one does in Jaeger.

Phoenix keeps parents, attributes (with their types) and statuses; it drops OTLP span links and
span kinds, so the replay links (``executed_by``, ``previous_attempt``) are checked against the
ids tidebase stored in Postgres instead (and byte-exact over OTLP in tests/test_otel_pipeline.py).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import new_run_id

from tidebase.demo.pipeline import WORKFLOW
from tidebase.demo.trace_tree import SpanRecord, _Describer, render_attempt
from tidebase_otel import _semconv as sc

from ._backends import Phoenix
from ._workers import Workers, worker_env

pytestmark = pytest.mark.backends

TOPIC = "durable agents"
JAEGER_TRACE_URL = "http://127.0.0.1:16686/trace/{trace_id}"  # for the report: the docs' template
CONTENT_ATTRS = (sc.GEN_AI_INPUT_MESSAGES, sc.GEN_AI_OUTPUT_MESSAGES, sc.GEN_AI_TOOL_CALL_ARGUMENTS)


class Trace:
    """One trace as Phoenix returns it: spans by id, children by parent id."""

    def __init__(self, spans: list[dict[str, Any]]) -> None:
        self.spans = spans
        self.by_id = {s["context"]["span_id"]: s for s in spans}
        self.kids: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for span in sorted(spans, key=lambda s: s["start_time"]):
            self.kids[span["parent_id"]].append(span)

    def named(self, name: str) -> dict[str, Any]:
        (span,) = [s for s in self.spans if s["name"] == name]
        return span

    def children(self, span: dict[str, Any]) -> list[dict[str, Any]]:
        return self.kids[span["context"]["span_id"]]

    def names(self, span: dict[str, Any]) -> list[str]:
        return [s["name"] for s in self.children(span)]


async def _db_ids(url: str, run_id: str) -> tuple[list[asyncpg.Record], dict[str, tuple]]:
    conn = await asyncpg.connect(url)
    try:
        attempts = await conn.fetch(
            "SELECT attempt, status, trace_id, span_id FROM run_attempts WHERE run_id = $1 "
            "ORDER BY attempt",
            run_id,
        )
        steps = await conn.fetch(
            "SELECT name, trace_id, span_id FROM steps WHERE run_id = $1", run_id
        )
    finally:
        await conn.close()
    return list(attempts), {r["name"]: (r["trace_id"], r["span_id"]) for r in steps}


async def _runs_show(db: str, run_id: str, trace_url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidebase.cli", "runs", "show", run_id,
        env=worker_env(TIDEBASE_URL=db, TIDEBASE_TRACE_URL=trace_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def _fetch_trace(link: str, expected: set[str], timeout: float = 60) -> Trace:
    """GETs a printed link until Phoenix has ingested every expected span name."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            response = await client.get(link)
            spans = response.json()["data"] if response.status_code == 200 else []
            if expected <= {s["name"] for s in spans} or time.monotonic() > deadline:
                return Trace(spans)
            await asyncio.sleep(0.3)


async def test_phoenix_receives_both_attempts_with_parents_and_attributes(
    phoenix: Phoenix,
    fresh_db_url: str,
    workers: Workers,
    tmp_path: Path,
    report_dir: Path | None,
):
    project = f"tidebase-{uuid.uuid4().hex[:8]}"
    run_id = new_run_id()
    env = worker_env(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=phoenix.url,
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    args = ["--url", fresh_db_url, "--run-id", run_id, "--topic", TOPIC]
    args += ["--tickets", str(tmp_path / "tickets.jsonl"), "--service", "research-worker"]
    first = await workers.start(*args, "--crash", "kill", env=env)
    assert await asyncio.wait_for(first.wait(), 120) == -signal.SIGKILL
    second = await workers.start(*args, env=env)
    assert await asyncio.wait_for(second.wait(), 120) == 0

    # ---- deep links: `tidebase runs show` prints one per attempt; follow them into Phoenix
    template = f"{phoenix.url}/v1/projects/{project}/spans?trace_id={{trace_id}}&limit=1000"
    shown = await _runs_show(fresh_db_url, run_id, template)
    attempts, stored = await _db_ids(fresh_db_url, run_id)
    links = re.findall(r"#(\d+)\s+(\w+)\s+trace ([0-9a-f]{32})  (\S+)", shown)
    assert [(int(n), t) for n, _, t, _ in links] == [
        (a["attempt"], a["trace_id"]) for a in attempts
    ]
    assert [url for *_, url in links] == [template.format(trace_id=a["trace_id"]) for a in attempts]
    one = await _fetch_trace(links[0][3], {"step research", "step create_ticket"})
    two = await _fetch_trace(links[1][3], {f"run {WORKFLOW}", "step draft", "turn 2"})

    _check_attempt_one(one, attempts[0], stored)
    _check_attempt_two(two, attempts, stored, run_id)

    # ---- found by its tag, as in Jaeger's search: both attempts' traces
    tagged = phoenix.spans(project, attribute=f"{sc.TIDEBASE_RUN_ID}:{run_id}")
    assert {s["context"]["trace_id"] for s in tagged} == {a["trace_id"] for a in attempts}
    assert {s["name"] for s in tagged} >= {f"run {WORKFLOW}", "step research", "step draft"}
    for span in one.spans + two.spans:
        for attr in CONTENT_ATTRS:  # message content stays off unless opted in
            assert attr not in span["attributes"], (span["name"], attr)

    if report_dir is not None:
        (report_dir / "trace-tree.txt").write_text(_render(project, phoenix, attempts, one, two))
        jaeger = await _runs_show(fresh_db_url, run_id, JAEGER_TRACE_URL)
        assert jaeger.count(JAEGER_TRACE_URL.split("{")[0]) == len(attempts)
        (report_dir / "runs-show.txt").write_text(jaeger)


def _check_attempt_one(one: Trace, attempt: asyncpg.Record, stored: dict[str, tuple]) -> None:
    """The killed worker exported the spans that had ended; the open ones died with it."""
    names = {s["name"] for s in one.spans}
    assert f"run {WORKFLOW}" not in names and "step draft" not in names
    assert "invoke_agent writer" not in names  # still open at the SIGKILL
    research = one.named("step research")
    assert research["attributes"][sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert research["parent_id"] == attempt["span_id"]  # the run span, lost in the crash
    assert (research["context"]["trace_id"], research["context"]["span_id"]) == stored["research"]
    assert one.names(research) == ["invoke_workflow Agent workflow"]
    (workflow,) = one.children(research)
    (agent,) = one.children(workflow)
    assert agent["name"] == "invoke_agent researcher"
    (turn,) = one.children(agent)
    (chat,) = one.children(turn)
    assert chat["name"] == "chat offline-scripted"
    assert chat["attributes"][sc.GEN_AI_USAGE_INPUT_TOKENS] > 0
    ticket = one.named("step create_ticket")
    # its parent, the tool call span (and the writer's run above it), was open at the SIGKILL
    assert ticket["parent_id"] not in one.by_id
    assert "execute_tool create_ticket" not in names
    assert ticket["attributes"][sc.TIDEBASE_STEP_SIDE_EFFECTS] == ["tickets.create"]
    assert ticket["attributes"][sc.TIDEBASE_STEP_PARENT] == "draft"
    assert (ticket["context"]["trace_id"], ticket["context"]["span_id"]) == stored["create_ticket"]


def _check_attempt_two(
    two: Trace, attempts: list[asyncpg.Record], stored: dict[str, tuple], run_id: str
) -> None:
    run = two.named(f"run {WORKFLOW}")
    assert run["parent_id"] is None
    assert run["context"]["span_id"] == attempts[1]["span_id"]
    attrs = run["attributes"]
    assert attrs[sc.TIDEBASE_RUN_ID] == run_id
    assert attrs[sc.TIDEBASE_RUN_ATTEMPT] == 2  # ints stay ints
    assert attrs[sc.TIDEBASE_RUN_STATUS] == "completed"
    assert attrs[sc.TIDEBASE_WORKFLOW] == WORKFLOW
    assert run["status_code"] == "UNSET"

    assert two.names(run) == ["step research", "step draft"]
    research, draft = two.children(run)
    assert research["attributes"][sc.TIDEBASE_STEP_REPLAYED] is True  # bools stay bools
    assert research["attributes"][sc.TIDEBASE_STEP_OUTCOME] == "replayed"
    assert research["attributes"][sc.TIDEBASE_REPLAY_INPUT_TOKENS_AVOIDED] > 0
    assert isinstance(research["attributes"][sc.TIDEBASE_REPLAY_COST_AVOIDED_USD], float)
    assert draft["attributes"][sc.TIDEBASE_STEP_OUTCOME] == "completed"
    assert (draft["context"]["trace_id"], draft["context"]["span_id"]) == stored["draft"]
    for span in (research, draft):
        assert span["attributes"][sc.TIDEBASE_RUN_ID] == run_id

    # draft -> invoke_workflow -> invoke_agent writer -> turn 1 -> chat, execute_tool
    #       -> step create_ticket (replayed); turn 2 -> chat
    (workflow,) = two.children(draft)
    assert workflow["name"] == "invoke_workflow Agent workflow"
    (agent,) = two.children(workflow)
    assert agent["name"] == "invoke_agent writer"
    assert agent["attributes"][sc.GEN_AI_AGENT_NAME] == "writer"
    assert two.names(agent) == ["turn 1", "turn 2"]
    turn_1, turn_2 = two.children(agent)
    assert two.names(turn_1) == ["chat offline-scripted", "execute_tool create_ticket"]
    tool = two.children(turn_1)[1]
    assert tool["attributes"][sc.GEN_AI_TOOL_NAME] == "create_ticket"
    (ticket,) = two.children(tool)
    assert ticket["name"] == "step create_ticket"
    assert ticket["attributes"][sc.TIDEBASE_STEP_REPLAYED] is True
    assert two.names(turn_2) == ["chat offline-scripted"]
    for chat in (two.children(turn_1)[0], two.children(turn_2)[0]):
        assert chat["attributes"][sc.GEN_AI_OPERATION_NAME] == "chat"
        assert chat["attributes"][sc.GEN_AI_REQUEST_MODEL] == "offline-scripted"
        assert chat["attributes"][sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    assert all(s["context"]["trace_id"] == attempts[1]["trace_id"] for s in two.spans)


def _record(span: dict[str, Any], process: str) -> SpanRecord:
    def ns(stamp: str) -> int:
        from datetime import datetime

        return int(datetime.fromisoformat(stamp).timestamp() * 1e9)

    return SpanRecord(
        name=span["name"],
        trace_id=span["context"]["trace_id"],
        span_id=span["context"]["span_id"],
        parent_id=span["parent_id"],
        start_ns=ns(span["start_time"]),
        end_ns=ns(span["end_time"]),
        attributes=span["attributes"],
        error=span["status_code"] == "ERROR",
        process=process,
    )


def _render(
    project: str, phoenix: Phoenix, attempts: list[asyncpg.Record], one: Trace, two: Trace
) -> str:
    """Both attempts' trees as read back from Phoenix (the demo's renderer)."""
    records = [_record(s, "worker 1") for s in one.spans] + [
        _record(s, "worker 2") for s in two.spans
    ]
    by_trace = {a["trace_id"]: a["attempt"] for a in attempts}
    run_spans = {a["span_id"]: f"run {WORKFLOW}" for a in attempts}
    describer = _Describer(records, by_trace, run_spans)
    lines = [f"# Traces read back from Phoenix ({phoenix.url}, project {project})", ""]
    for attempt, trace in zip(attempts, (one, two), strict=True):
        lines.append(
            f"attempt {attempt['attempt']} ({attempt['status']}), trace {attempt['trace_id']}"
        )
        own = [r for r in records if r.trace_id == attempt["trace_id"]]
        lines += render_attempt(own, describer, run_spans)
        lines.append("")
        assert len(own) == len(trace.spans)
    return "\n".join(lines)
