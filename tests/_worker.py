"""A worker process for crash tests: runs one workflow and logs every step execution.

usage: python tests/_worker.py DB_URL RUN_ID LOG_FILE MODE
MODE: pure (the slow step is pure) | effect (the slow step writes without an idempotency key)
The slow step logs "slow-started", then sleeps SLOW_SECONDS (env, default 30).
Exit codes: 0 done, 3 lease lost, 4 needs review.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tidebase.aio import AsyncTidebase
from tidebase.errors import LeaseLost, StepNeedsReview


def log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(f"{line} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


async def main(url: str, run_id: str, log_path: str, mode: str) -> int:
    slow_seconds = float(os.environ.get("SLOW_SECONDS", "30"))
    tide = AsyncTidebase(url)

    async def pipeline(run, _input):
        def one():
            log(log_path, "executed one")
            return {"one": 1}

        await run.step("one", one)

        async def slow():
            log(log_path, "executed slow")
            log(log_path, "slow-started")
            await asyncio.sleep(slow_seconds)
            return {"slow": os.getpid()}

        if mode == "effect":
            await run.step("slow", slow, side_effects=["ticket.create"])
        else:
            await run.step("slow", slow)

        def two():
            log(log_path, "executed two")
            return 2

        return await run.step("two", two)

    try:
        await tide.run("crash-test", pipeline, run_id=run_id)
    except LeaseLost:
        log(log_path, "lease-lost")
        return 3
    except StepNeedsReview:
        log(log_path, "needs-review")
        return 4
    finally:
        await tide.close()
    log(log_path, "done")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:5])))
