"""A queue worker app for process tests: `tidebase worker _queue_app:tide --queue Q`.

Env: QUEUE_LOG (file every step execution is logged to), SLOW_SECONDS (how long the slow step
sleeps, default 30). The run input's "mode" picks the slow step: "pure", or "effect" (an external
write without an idempotency key).
"""

from __future__ import annotations

import asyncio
import os

from tidebase.aio import AsyncTidebase

tide = AsyncTidebase()


def log(line: str) -> None:
    with open(os.environ["QUEUE_LOG"], "a") as f:
        f.write(f"{line} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


@tide.workflow("queue-crash")
async def pipeline(run, input):
    slow_seconds = float(os.environ.get("SLOW_SECONDS", "30"))

    def one():
        log("executed one")
        return {"one": 1}

    await run.step("one", one)

    async def slow():
        log("executed slow")
        log("slow-started")
        await asyncio.sleep(slow_seconds)
        log("slow-finished")
        return {"slow": os.getpid()}

    if input.get("mode") == "effect":
        await run.step("slow", slow, side_effects=["ticket.create"])
    else:
        await run.step("slow", slow)

    def two():
        log("executed two")
        return 2

    return await run.step("two", two)
