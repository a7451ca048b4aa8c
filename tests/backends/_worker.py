"""A worker process for the real-backend tests: `python tests/backends/_worker.py ...`.

It runs the research pipeline of `tidebase.demo` (offline model, real `Runner.run`) as a
deployed worker would, with tidebase_otel turned on the way a user turns it on:

--metrics env     only ``tidebase_otel.configure()``: the caller sets
                  ``OTEL_METRICS_EXPORTER=prometheus`` and ``OTEL_EXPORTER_PROMETHEUS_PORT``
--metrics server  ``tidebase_otel.prometheus.start_metrics_server(port)``
--metrics asgi    an ASGI app under uvicorn with ``Route("/metrics", metrics_app())``, the
                  lines ``tidebase serve`` mounts
--metrics none    metrics are not exposed (``OTEL_METRICS_EXPORTER=none``)

Traces follow the standard ``OTEL_*`` variables through ``configure()``
(``OTEL_TRACES_EXPORTER=none`` turns them off).

--crash {hold,kill}  after the pipeline's ticket step in attempt 1: ``kill`` flushes the spans
                  that ended and SIGKILLs this process (as the demo does); ``hold`` writes
                  ``--ready-file`` and blocks forever, so the test can wait until Prometheus
                  has scraped this process before it SIGKILLs it
--ops             after the pipeline, also run two small ``ops-checks`` runs that fail: a
                  retried step, a write that fails (parked in manual review), a failed step

Without --crash the process runs (or resumes: it waits for a dead worker's lease) the
pipeline, writes ``--ready-file`` and, with --linger, keeps serving its metrics until SIGTERM,
as a long-lived worker does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import tidebase_otel
from tidebase.aio import AsyncTidebase
from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, choose_models
from tidebase.errors import RunLeased, StepNeedsReview

OPS_WORKFLOW = "ops-checks"
OPS_MODEL = "gpt-4.1-mini"
OPS_USAGE = {"input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.00096}


def _write(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)


async def _serve_asgi(port: int) -> Any:
    """The metrics route exactly as ``tidebase serve`` mounts it, under uvicorn."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tidebase_otel.prometheus import metrics_app

    app = Starlette(routes=[Route("/metrics", metrics_app(), methods=["GET"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, task


def _turn_on_telemetry(args: argparse.Namespace) -> None:
    if args.metrics == "env":
        if "prometheus" not in os.environ.get("OTEL_METRICS_EXPORTER", ""):
            raise SystemExit("--metrics env needs OTEL_METRICS_EXPORTER=prometheus")
    elif args.metrics in ("server", "asgi"):
        from tidebase_otel.prometheus import meter_provider

        meter_provider(service_name=args.service)
        if args.metrics == "server":
            from tidebase_otel.prometheus import start_metrics_server

            start_metrics_server(args.metrics_port)
    else:
        os.environ["OTEL_METRICS_EXPORTER"] = "none"
    tidebase_otel.configure(service_name=args.service)
    tidebase_otel.instrument()


def _flush_traces() -> None:
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(5000)


def _shutdown_telemetry() -> None:
    from opentelemetry import metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


async def _resume(tide: AsyncTidebase, pipeline: Any, args: argparse.Namespace) -> Any:
    for _ in range(600):
        try:
            return await tide.run(
                WORKFLOW, pipeline, run_id=args.run_id, input={"topic": args.topic}
            )
        except RunLeased:  # a dead worker's lease has not expired yet
            await asyncio.sleep(0.2)
    raise SystemExit("the dead worker's lease never expired")


async def _ops_checks(tide: AsyncTidebase, run_id: str) -> None:
    """Two runs that go wrong the ways the dashboard's failure panels show."""

    async def parked(run: Any, _input: Any) -> None:
        tries = {"n": 0}

        async def fetch() -> str:
            tries["n"] += 1
            if tries["n"] == 1:
                raise ConnectionError("transient: the upstream reset the connection")
            await run.usage_record(kind="llm", provider="openai", model=OPS_MODEL, **OPS_USAGE)
            return "fetched"

        await run.step("fetch", fetch, retries=1, retry_delay=0.01)

        def publish() -> None:
            raise RuntimeError("the mail server refused the message")

        await run.step("publish", publish, side_effects=["email.send"])

    async def failing(run: Any, _input: Any) -> None:
        def validate() -> None:
            raise ValueError("the report has no sources")

        await run.step("validate", validate)

    for name, fn in ((f"{run_id}-parked", parked), (f"{run_id}-failed", failing)):
        try:
            await tide.run(OPS_WORKFLOW, fn, run_id=name)
        except (RuntimeError, ValueError, StepNeedsReview):
            pass  # the failures are the point


async def _main(args: argparse.Namespace) -> int:
    _turn_on_telemetry(args)
    asgi = await _serve_asgi(args.metrics_port) if args.metrics == "asgi" else None
    tickets = TicketSystem(Path(args.tickets))

    def on_ticket(run: Any, _ticket: Any) -> None:
        if args.crash is None or run.attempt != 1:
            return
        _flush_traces()
        if args.crash == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        _write(args.ready_file, {"pid": os.getpid(), "state": "holding"})
        threading.Event().wait()  # blocks the whole process until the test SIGKILLs it

    tide = AsyncTidebase(args.url)
    try:
        result = await _resume(tide, build_pipeline(choose_models(), tickets, on_ticket), args)
        if args.ops:
            await _ops_checks(tide, args.run_id)
    finally:
        await tide.close()
    _flush_traces()
    _write(args.ready_file, {"pid": os.getpid(), "state": "done", "words": len(result.split())})
    if args.linger:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    if asgi is not None:
        server, task = asgi
        server.should_exit = True
        await task
    _shutdown_telemetry()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="tests/backends/_worker.py")
    parser.add_argument("--url", required=True, help="Postgres URL (direct mode)")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--tickets", required=True, help="the ticket system's JSON-lines file")
    parser.add_argument("--service", default="research-worker", help="service.name")
    parser.add_argument("--metrics", choices=("env", "server", "asgi", "none"), default="none")
    parser.add_argument("--metrics-port", type=int, default=0, help="server and asgi modes")
    parser.add_argument("--crash", choices=("hold", "kill"))
    parser.add_argument("--ops", action="store_true")
    parser.add_argument("--ready-file")
    parser.add_argument("--linger", action="store_true", help="serve until SIGTERM")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
