"""`tidebase demo`: run the research pipeline, kill it mid-run, resume it, show what happened."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tidebase.aio import AsyncTidebase
from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, choose_models
from tidebase.demo.progress import ProgressObserver
from tidebase.embedded import configured_database_url, default_data_dir, resolve_database_url
from tidebase.errors import RunLeased

DEMO_LEASE_MS = 2000  # short, so the demo does not wait a minute for the dead worker's lease


def _heading(text: str) -> None:
    print(f"\n== {text}")


async def run_demo(topic: str, *, crash: bool = True) -> int:
    url = resolve_database_url(announce=False)
    where = "configured" if configured_database_url() else f"embedded, data in {default_data_dir()}"
    print(f"tidebase demo: Postgres {where}")
    models = choose_models()
    print(
        "models: "
        + (
            "scripted offline model (no OPENAI_API_KEY set)"
            if models.offline
            else "OpenAI gpt-4.1-mini (OPENAI_API_KEY is set)"
        )
    )
    run_id = f"run_{uuid.uuid4().hex}"
    ticket_dir = Path(tempfile.gettempdir()) / "tidebase-demo"
    ticket_dir.mkdir(exist_ok=True)
    tickets = TicketSystem(ticket_dir / f"tickets-{run_id}.jsonl")
    env = {**os.environ, "TIDEBASE_LEASE_MS": str(DEMO_LEASE_MS)}

    _heading(f"attempt 1 of {run_id}, in a worker process")
    child = [
        sys.executable,
        "-m",
        "tidebase.demo.worker",
        "--url",
        url,
        "--run-id",
        run_id,
        "--topic",
        topic,
        "--tickets",
        str(tickets.path),
    ]
    if crash:
        child.append("--crash-after-ticket")
    telemetry_files = _telemetry_files(run_id)
    if telemetry_files is not None:
        child += [
            "--spans-file",
            str(telemetry_files[0]),
            "--metrics-file",
            str(telemetry_files[1]),
        ]
    process = await asyncio.create_subprocess_exec(*child, env=env)
    code = await process.wait()
    if code == -9:
        print(
            "  worker died (SIGKILL) inside the draft step: research had finished, the "
            "ticket was filed, the writer had not"
        )
    elif code != 0:
        print(f"  worker exited with status {code}")
        return 1

    tide = AsyncTidebase(url, lease_ms=DEMO_LEASE_MS, observers=[ProgressObserver()])
    telemetry = _start_telemetry() if telemetry_files is not None else None
    try:
        if crash:
            await _show_checkpoints(tide, run_id)
            _heading(f"attempt 2: invoke the pipeline again with the same run id ({run_id})")
        fresh = choose_models()  # new model objects: their call counters start at zero
        pipeline = build_pipeline(fresh, tickets)
        post = await _run_when_lease_free(tide, pipeline, run_id, topic)
        await _summary(tide, run_id, fresh, tickets, post)
        if telemetry is not None and telemetry_files is not None:
            await _show_telemetry(tide, run_id, telemetry, *telemetry_files)
    finally:
        await tide.close()
        if telemetry is not None:
            telemetry.close()
    return 0


def _telemetry_files(run_id: str) -> tuple[Path, Path] | None:
    """Where the worker writes its spans and metric totals; None without the OTel SDK."""
    try:
        import tidebase.demo.trace_tree  # noqa: F401
    except ImportError:
        print("(install tidebase[otel] to see the OpenTelemetry traces and metrics)")
        return None
    folder = Path(tempfile.mkdtemp(prefix="tidebase-demo-telemetry-"))
    return folder / f"spans-{run_id}.jsonl", folder / f"metrics-{run_id}.json"


def _start_telemetry() -> Any:
    from tidebase.demo.trace_tree import DemoTelemetry

    return DemoTelemetry(f"demo pid {os.getpid()}")


async def _show_telemetry(
    tide: AsyncTidebase, run_id: str, telemetry: Any, spans_file: Path, metrics_file: Path
) -> None:
    from tidebase.demo.trace_tree import add_totals, read_spans, read_totals, render_report

    telemetry.flush()
    detail = await tide.get_run(run_id)
    lines = render_report(
        detail["attempts"],
        read_spans(spans_file) + telemetry.spans(),
        add_totals(read_totals(metrics_file), telemetry.totals()),
        detail["usage"],
        WORKFLOW,
        telemetry.otlp_note(),
    )
    print("\n".join(lines))


async def _run_when_lease_free(tide: AsyncTidebase, pipeline: Any, run_id: str, topic: str) -> str:
    while True:
        try:
            return await tide.run(WORKFLOW, pipeline, run_id=run_id, input={"topic": topic})
        except RunLeased as exc:
            print(
                f"  the dead worker's lease is still live (held by {exc.owner}); "
                "waiting for it to expire"
            )
            await asyncio.sleep(DEMO_LEASE_MS / 2000)


async def _show_checkpoints(tide: AsyncTidebase, run_id: str) -> None:
    detail = await tide.get_run(run_id)
    _heading("what Postgres holds after the crash")
    for step in detail["steps"]:
        print(f"  step {step['name']:<14} {step['status']}")
    print("  step draft          (nothing: it never completed)")


async def _summary(
    tide: AsyncTidebase, run_id: str, models: Any, tickets: TicketSystem, post: str
) -> None:
    detail = await tide.get_run(run_id)
    _heading("summary")
    steps = {s["name"]: s for s in detail["steps"]}
    for name in ("research", "create_ticket", "draft"):
        step = steps[name]
        executed_in = step["run_attempt"]
        how = (
            "replayed in attempt 2"
            if executed_in == 1 and detail["run"]["attempt"] == 2
            else f"executed in attempt {executed_in}"
        )
        print(f"  {name:<14} {step['status']}, {how}")
    if models.offline:
        print(
            f"  researcher model calls in attempt 2: {models.researcher.calls} "
            "(the researcher agent was not called again)"
        )
        print(f"  writer model calls in attempt 2:     {models.writer.calls}")
    print(
        f"  tickets in the ticket system: {len(tickets.tickets())} "
        "(the tool's step replayed; no duplicate ticket)"
    )
    total_in = sum(u["input_tokens"] or 0 for u in detail["usage"])
    total_out = sum(u["output_tokens"] or 0 for u in detail["usage"])
    cost = sum(float(u["cost_usd"] or 0) for u in detail["usage"])
    print("  usage ledger (each record written once):")
    for u in detail["usage"]:
        print(
            f"    {u['step_name'] or '-':<10} {u['model']:<18} {u['input_tokens']:>6} in "
            f"{u['output_tokens']:>6} out  ${float(u['cost_usd'] or 0):.6f}"
        )
    print(f"    total      {'':<18} {total_in:>6} in {total_out:>6} out  ${cost:.6f}")
    print(f"  run status: {detail['run']['status']} after {detail['run']['attempt']} attempts")
    _heading("the post")
    print(post)
    print(f"\ninspect it: tidebase runs show {run_id}")
