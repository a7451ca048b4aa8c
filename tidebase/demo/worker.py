"""One attempt of the demo pipeline in its own process: `python -m tidebase.demo.worker`.

With --crash-after-ticket the process kills itself with SIGKILL right after the ticket step is
recorded, in the middle of the writer's agent run: a real crash, not an exception.

With --spans-file / --metrics-file (or OTEL_EXPORTER_OTLP_ENDPOINT set) the attempt is traced
with tidebase_otel (see `tidebase.demo.trace_tree`); right before the SIGKILL the worker flushes
what its exporters hold, so the demo can show the spans that had ended.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from tidebase.aio import AsyncTidebase
from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, choose_models
from tidebase.demo.progress import ProgressObserver


def _telemetry(args: argparse.Namespace) -> Any:
    if not (args.spans_file or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    try:
        from tidebase.demo.trace_tree import DemoTelemetry
    except ImportError:  # the OpenTelemetry SDK is not installed
        return None
    spans = Path(args.spans_file) if args.spans_file else None
    return DemoTelemetry(f"worker pid {os.getpid()}", span_file=spans)


async def _main(args: argparse.Namespace) -> None:
    prefix = f"  [worker pid {os.getpid()}] "
    telemetry = _telemetry(args)
    metrics_file = Path(args.metrics_file) if args.metrics_file else None

    def on_ticket(run, ticket) -> None:
        if args.crash_after_ticket and run.attempt == 1:
            print(
                f"{prefix}ticket {ticket['id']} filed; now killing this worker with SIGKILL "
                "in the middle of the writer's agent run",
                flush=True,
            )
            if telemetry is not None:
                telemetry.flush(metrics_file)
            os.kill(os.getpid(), signal.SIGKILL)

    tide = AsyncTidebase(args.url, observers=[ProgressObserver(prefix=prefix)])
    pipeline = build_pipeline(choose_models(), TicketSystem(Path(args.tickets)), on_ticket)
    try:
        await tide.run(WORKFLOW, pipeline, run_id=args.run_id, input={"topic": args.topic})
    finally:
        await tide.close()
        if telemetry is not None:
            telemetry.flush(metrics_file)
            telemetry.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidebase.demo.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--tickets", required=True)
    parser.add_argument("--crash-after-ticket", action="store_true")
    parser.add_argument("--spans-file", help="write the attempt's spans here (JSON lines)")
    parser.add_argument("--metrics-file", help="write the attempt's metric totals here (JSON)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
