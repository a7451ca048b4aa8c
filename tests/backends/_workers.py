"""Worker processes (`_worker.py`) for the real-backend tests, started and always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "_worker.py"


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker: offline models, no inherited OTEL_* settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "OPENAI_API_KEY"
    }
    env["TIDEBASE_LEASE_MS"] = "1000"  # a dead worker's lease expires quickly
    env.update(extra)
    return env


class Workers:
    """Starts `_worker.py` processes; whatever is still running at the end is killed."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), *args, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
