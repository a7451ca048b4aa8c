"""One attempt of the demo pipeline in its own process: `python -m tidebase.demo.worker`.

With --crash-after-ticket the process kills itself with SIGKILL right after the ticket step is
recorded, in the middle of the writer's agent run: a real crash, not an exception.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from tidebase.aio import AsyncTidebase
from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, choose_models
from tidebase.demo.progress import ProgressObserver


async def _main(args: argparse.Namespace) -> None:
    prefix = f"  [worker pid {os.getpid()}] "

    def on_ticket(run, ticket) -> None:
        if args.crash_after_ticket and run.attempt == 1:
            print(
                f"{prefix}ticket {ticket['id']} filed; now killing this worker with SIGKILL "
                "in the middle of the writer's agent run",
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGKILL)

    tide = AsyncTidebase(args.url, observers=[ProgressObserver(prefix=prefix)])
    pipeline = build_pipeline(choose_models(), TicketSystem(Path(args.tickets)), on_ticket)
    try:
        await tide.run(WORKFLOW, pipeline, run_id=args.run_id, input={"topic": args.topic})
    finally:
        await tide.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidebase.demo.worker")
    parser.add_argument("--url", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--tickets", required=True)
    parser.add_argument("--crash-after-ticket", action="store_true")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
