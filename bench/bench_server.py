"""Server mode vs direct mode: the same SDK workloads through `tidebase serve` and to Postgres.

    python bench/bench_server.py [--repeat 3] [--database-url URL] [--relaxed-durability]

Workloads (pure steps, small JSON outputs):
  first     one run executes 200 steps (then "crashes", so the next attempt can replay them)
  replay    the next attempt of that run: 200 steps replayed from checkpoints, run completed
  parallel  20 runs x 20 steps, all runs concurrently

The server runs as its own process (`python -m tidebase.server`), as in production, on a free
loopback port; both modes use the same throwaway embedded Postgres (or --database-url). Each
figure is the best of --repeat runs; direct and server measurements alternate so that machine
noise hits both. Not a timed test: it prints figures and the targets.

Both checkpoint settings are measured: the default (a step's checkpoint is committed before
`run.step` returns: one round trip per pure step) and pipelined checkpoints (pure steps'
checkpoints written in the background in batches; see `tidebase.checkpoint_pipeline`).

--relaxed-durability sets synchronous_commit=off on the benchmark database (a commit no longer
waits for its WAL flush): figures without the disk's fsync latency, to show what the HTTP layer
itself costs. Never a production setting for Tidebase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

from tidebase.aio import AsyncTidebase
from tidebase.embedded import start_embedded

STEPS = 200
RUNS, RUN_STEPS = 20, 20


class Crash(Exception):
    """Ends the first attempt after its steps, so the next attempt replays them."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ, TIDEBASE_DATABASE_URL=database_url)
    env.pop("TIDEBASE_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidebase.server", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within 60 s")


def _step_fn(i: int) -> Callable[[], dict[str, int]]:
    return lambda: {"i": i, "square": i * i}


async def first_and_replay(tide: AsyncTidebase) -> tuple[float, float]:
    """Steps/s of a first execution of 200 steps, and of the attempt that replays them."""
    run_id = f"run_{uuid.uuid4().hex}"
    crash = True

    async def workflow(run, input):
        for i in range(STEPS):
            await run.step(f"step-{i}", _step_fn(i), input={"i": i})
        if crash:
            raise Crash()
        return "done"

    started = time.perf_counter()
    try:
        await tide.run("bench-serial", workflow, run_id=run_id)
    except Crash:
        pass
    first = STEPS / (time.perf_counter() - started)
    crash = False
    started = time.perf_counter()
    await tide.run("bench-serial", workflow, run_id=run_id)
    replay = STEPS / (time.perf_counter() - started)
    return first, replay


async def parallel(tide: AsyncTidebase) -> float:
    """Steps/s of 20 runs x 20 steps executing concurrently."""

    async def workflow(run, input):
        for i in range(RUN_STEPS):
            await run.step(f"step-{i}", _step_fn(i), input={"i": i})
        return "done"

    started = time.perf_counter()
    await asyncio.gather(*(tide.run("bench-parallel", workflow) for _ in range(RUNS)))
    return RUNS * RUN_STEPS / (time.perf_counter() - started)


async def measure(
    url: str, pipelined: bool, repeat: int, record: Callable[[str, float], None]
) -> None:
    async with AsyncTidebase(url, pipeline_checkpoints=pipelined) as tide:
        await first_and_replay(tide)  # warm-up: connections, prepared statements
        for _ in range(repeat):
            first, replay = await first_and_replay(tide)
            record("first", first)
            record("replay", replay)
            record("parallel", await parallel(tide))


async def relax_durability(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()


SETTINGS = {
    False: "checkpoint committed before run.step returns (default)",
    True: "pipelined checkpoints (AsyncTidebase(pipeline_checkpoints=True))",
}


def report(results: dict[tuple[str, bool], dict[str, list[float]]]) -> None:
    labels = {
        "first": f"first execution, 1 run x {STEPS}",
        "replay": f"replay, 1 run x {STEPS}",
        "parallel": f"concurrent, {RUNS} runs x {RUN_STEPS}",
    }
    for pipelined, title in SETTINGS.items():
        direct_results, server_results = (
            results[("direct", pipelined)],
            results[("server", pipelined)],
        )
        print()
        print(title)
        print(f"  {'workload':<34}{'direct':>12}{'server':>12}{'ratio':>8}")
        for key, label in labels.items():
            direct = max(direct_results[key])
            server = max(server_results[key])
            print(f"  {label:<34}{direct:>10.0f}/s{server:>10.0f}/s{server / direct:>8.2f}")
        pairs = zip(server_results["first"], direct_results["first"], strict=True)
        median = statistics.median(s / d for s, d in pairs)
        first = max(server_results["first"])
        ratio = first / max(direct_results["first"])
        print(
            f"  (steps per second, best of the repeats; median server/direct ratio of first "
            f"execution: {median:.2f})"
        )
        print(
            f"  target: server first execution >= 1000 steps/s: {first:.0f} "
            f"({'met' if first >= 1000 else 'NOT met'}); server >= 0.5 x direct: {ratio:.2f} "
            f"({'met' if ratio >= 0.5 else 'NOT met'})"
        )
    default_first = max(results[("server", False)]["first"])
    pipelined_first = max(results[("server", True)]["first"])
    print()
    print(
        f"server mode, first execution: pipelined / default = "
        f"{pipelined_first / default_first:.2f}x"
    )


async def run_bench(database_url: str, server_url: str, repeat: int) -> None:
    results: dict[tuple[str, bool], dict[str, list[float]]] = {
        (mode, pipelined): {} for mode in ("direct", "server") for pipelined in SETTINGS
    }

    def recorder(mode: str, pipelined: bool) -> Callable[[str, float], None]:
        return lambda key, value: results[(mode, pipelined)].setdefault(key, []).append(value)

    urls = {"direct": database_url, "server": server_url}
    plan: list[tuple[str, bool]] = []
    for _ in range(repeat):
        for pipelined in SETTINGS:
            plan += [("direct", pipelined), ("server", pipelined)]
    for mode, pipelined in plan:
        setting = "pipelined" if pipelined else "default"
        print(f"  measuring {mode} mode ({setting})...", file=sys.stderr)
        await measure(urls[mode], pipelined, 1, recorder(mode, pipelined))
    report(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("TIDEBASE_BENCH_DATABASE_URL"))
    parser.add_argument("--relaxed-durability", action="store_true")
    args = parser.parse_args()
    database_url = args.database_url or start_embedded(
        Path(tempfile.mkdtemp(prefix="tidebase-bench-")) / "pg", throwaway=True
    )
    if args.relaxed_durability:
        asyncio.run(relax_durability(database_url))
        print("NOTE: synchronous_commit=off on the benchmark database (not durable)")
    # Apply migrations once before the server starts, so neither side pays for it in a timing.
    asyncio.run(_migrate(database_url))
    proc, server_url = start_server(database_url)
    print(
        f"direct mode: {database_url.split('@')[-1]}\nserver mode: {server_url} "
        f"(python -m tidebase.server, separate process); cores: {os.cpu_count()}"
    )
    try:
        asyncio.run(run_bench(database_url, server_url, args.repeat))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _migrate(database_url: str) -> None:
    async with AsyncTidebase(database_url):
        pass


if __name__ == "__main__":
    main()
