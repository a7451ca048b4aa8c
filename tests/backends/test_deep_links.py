"""Deep links from the CLI into a trace UI: `tidebase runs show` prints each attempt's trace id
and, with ``TIDEBASE_TRACE_URL`` (a template with ``{trace_id}``), a link per attempt; every run
and step span carries ``tidebase.run.id``, the tag to search by in Jaeger.

The trace ids are the ones tidebase_otel stored with each attempt, checked against the spans the
real OpenTelemetry SDK produced. Following such links into a real trace store is in
test_phoenix_traces.py.
"""

from __future__ import annotations

import asyncio
import re
import sys

from _otel import instrumented
from conftest import new_run_id
from opentelemetry import trace as otel_trace

from tidebase.cli import render_run
from tidebase_otel import _semconv as sc

from ._workers import worker_env

JAEGER = "http://127.0.0.1:16686/trace/{trace_id}"
ATTEMPT_LINE = re.compile(r"^  #(\d+)\s+(\w+)\s+trace (\S+)(?:  (\S+))?$", re.M)


async def _show(pg_url: str, run_id: str, **env: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidebase.cli", "runs", "show", run_id,
        env=worker_env(TIDEBASE_URL=pg_url, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def _two_attempts(tide, run_id: str) -> list:
    """Attempt 1 fails in a step (pure: it is retried next time), attempt 2 completes."""
    calls = {"n": 0}

    async def flaky(run, _input):
        await run.step("fetch", lambda: {"page": 1})

        def parse():
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("the page was truncated")
            return "parsed"

        return await run.step("parse", parse)

    with instrumented() as otel:
        try:
            await tide.run("deep-links", flaky, run_id=run_id)
        except ValueError:
            pass
        assert await tide.run("deep-links", flaky, run_id=run_id) == "parsed"
        return otel.spans()


async def test_runs_show_prints_a_trace_link_per_attempt(tide, pg_url: str):
    run_id = new_run_id()
    spans = await _two_attempts(tide, run_id)
    run_spans = sorted(
        (s for s in spans if s.name == "run deep-links"),
        key=lambda s: s.attributes[sc.TIDEBASE_RUN_ATTEMPT],
    )
    trace_ids = [otel_trace.format_trace_id(s.context.trace_id) for s in run_spans]
    assert len(set(trace_ids)) == 2  # each attempt is its own trace

    linked = await _show(pg_url, run_id, TIDEBASE_TRACE_URL=JAEGER)
    assert ATTEMPT_LINE.findall(linked) == [
        ("1", "failed", trace_ids[0], JAEGER.format(trace_id=trace_ids[0])),
        ("2", "completed", trace_ids[1], JAEGER.format(trace_id=trace_ids[1])),
    ]
    plain = await _show(pg_url, run_id)
    assert ATTEMPT_LINE.findall(plain) == [
        ("1", "failed", trace_ids[0], ""),
        ("2", "completed", trace_ids[1], ""),
    ]

    # What Jaeger's tag search finds: every run and step span of both attempts.
    tidebase_spans = [s for s in spans if s.name.startswith(("run ", "step "))]
    assert len(tidebase_spans) == 2 + 4  # two run spans; fetch, parse (failed) + both again
    assert {s.attributes[sc.TIDEBASE_RUN_ID] for s in tidebase_spans} == {run_id}


def test_an_attempt_without_a_trace_gets_no_link(monkeypatch):
    """Attempts that ran without tidebase_otel have no trace id: no broken link is printed."""
    monkeypatch.setenv("TIDEBASE_TRACE_URL", JAEGER)
    detail = {
        "run": {"id": "run_x", "workflow_name": "w", "status": "completed", "attempt": 2},
        "attempts": [
            {"attempt": 1, "status": "abandoned", "trace_id": None},
            {"attempt": 2, "status": "completed", "trace_id": "ab" * 16},
        ],
        "steps": [],
        "usage": [],
        "state": None,
    }
    assert ATTEMPT_LINE.findall(render_run(detail)) == [
        ("1", "abandoned", "-", ""),
        ("2", "completed", "ab" * 16, JAEGER.format(trace_id="ab" * 16)),
    ]
