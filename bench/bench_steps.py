"""Step throughput in direct mode against a raw asyncpg baseline measured in the same run.

    python bench/bench_steps.py [--steps 200] [--runs 20] [--rounds 5]

Prints steps/s for: one run of N trivial steps (first execution), the replay of those N steps
after the run begins, R concurrent runs x R steps, and the baseline: a raw asyncpg loop doing
one single-row INSERT per step, each its own transaction. Not a test: machines are noisy, so
it reports the median of several rounds and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from tidebase.aio import AsyncTidebase
from tidebase.embedded import configured_database_url, start_embedded


class _Stop(Exception):
    pass


async def raw_baseline(url: str, steps: int, *, explicit_tx: bool) -> float:
    conn = await asyncpg.connect(url)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_raw (run_id text, name text, output jsonb, "
        "PRIMARY KEY (run_id, name))"
    )
    run_id = uuid.uuid4().hex
    sql = "INSERT INTO bench_raw (run_id, name, output) VALUES ($1, $2, $3::jsonb)"
    start = time.perf_counter()
    for i in range(steps):
        if explicit_tx:
            async with conn.transaction():
                await conn.execute(sql, run_id, f"s{i}", str(i))
        else:
            await conn.execute(sql, run_id, f"s{i}", str(i))
    elapsed = time.perf_counter() - start
    await conn.close()
    return steps / elapsed


async def first_execution_and_replay(tide: AsyncTidebase, steps: int) -> tuple[float, float]:
    run_id = f"run_{uuid.uuid4().hex}"
    timings: dict[str, float] = {}

    async def pipeline(run, _):
        start = time.perf_counter()
        for i in range(steps):
            await run.step(f"s{i}", lambda i=i: i)
        timings[f"attempt{run.attempt}"] = time.perf_counter() - start
        if run.attempt == 1:
            raise _Stop()  # leave the run unfinished so the next attempt replays every step
        return steps

    try:
        await tide.run("bench", pipeline, run_id=run_id)
    except _Stop:
        pass
    await tide.run("bench", pipeline, run_id=run_id)
    return steps / timings["attempt1"], timings["attempt2"]


async def concurrent_runs(tide: AsyncTidebase, runs: int, steps: int) -> float:
    async def pipeline(run, _):
        for i in range(steps):
            await run.step(f"s{i}", lambda i=i: i)

    start = time.perf_counter()
    await asyncio.gather(*(tide.run("bench-concurrent", pipeline) for _ in range(runs)))
    return runs * steps / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    url = configured_database_url() or start_embedded(
        Path(tempfile.mkdtemp(prefix="tidebase-bench-")) / "pg", throwaway=True
    )
    tide = AsyncTidebase(url)
    await tide.store()
    # warm-up: connections, prepared statements
    await first_execution_and_replay(tide, 20)
    await raw_baseline(url, 20, explicit_tx=False)

    results: dict[str, list[float]] = {
        k: [] for k in ("raw", "raw_tx", "first", "replay_ms", "concurrent")
    }
    for _ in range(args.rounds):
        results["raw"].append(await raw_baseline(url, args.steps, explicit_tx=False))
        results["raw_tx"].append(await raw_baseline(url, args.steps, explicit_tx=True))
        first, replay = await first_execution_and_replay(tide, args.steps)
        results["first"].append(first)
        results["replay_ms"].append(replay * 1000)
        results["concurrent"].append(await concurrent_runs(tide, args.runs, args.runs))
    await tide.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"direct mode, {args.steps} steps, median of {args.rounds} rounds")
    print(f"  baseline: raw asyncpg INSERT per step (autocommit)   {med['raw']:8.0f} steps/s")
    print(f"  baseline: raw asyncpg INSERT per step (BEGIN/COMMIT) {med['raw_tx']:8.0f} steps/s")
    print(
        f"  tidebase first execution, one run                   {med['first']:8.0f} steps/s"
        f"   ratio {med['first'] / med['raw']:.2f} x autocommit, "
        f"{med['first'] / med['raw_tx']:.2f} x BEGIN/COMMIT (target >= 0.6)"
    )
    print(
        f"  tidebase replay of {args.steps} steps after begin       "
        f"{med['replay_ms']:8.2f} ms (target < 20 ms)"
    )
    print(
        f"  tidebase {args.runs} concurrent runs x {args.runs} steps         "
        f"{med['concurrent']:8.0f} steps/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
