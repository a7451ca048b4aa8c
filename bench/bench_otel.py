"""What tidebase_otel costs a run: steps/s with it on against off, measured in the same run.

    python bench/bench_otel.py [--steps 200] [--runs 10] [--rounds 5]

"On" is the production set-up: `tidebase_otel.instrument()` into an SDK TracerProvider whose
BatchSpanProcessor exports over OTLP/HTTP to a local receiver (a real HTTP server on 127.0.0.1
that reads every request), and a MeterProvider whose periodic reader exports the metrics the
same way. "Off" is the same client with nothing instrumented. Each round measures off and on
back to back (alternating which goes first), on three workloads: one run of N trivial pure
steps (the worst case: a step is one database round trip), R concurrent runs of N/R steps each,
and one run of steps that each wait W ms on I/O (still far shorter than any LLM call); the
median of the rounds is reported with the ratio (target: on/off >= 0.95). Then the cost of the
Agents SDK processor per Agents span, from bench_agents_processor. Not a test: it prints numbers.

Uses TIDEBASE_URL when it is a postgresql:// URL, else a throwaway embedded Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import tidebase_otel
from tidebase.aio import AsyncTidebase
from tidebase.embedded import configured_database_url, start_embedded

sys.path.insert(0, str(Path(__file__).parent))
import bench_agents_processor  # a sibling script


class Receiver:
    """A local OTLP/HTTP endpoint that reads each request fully and answers 200."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests += 1
                receiver.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()


async def one_run(tide: AsyncTidebase, steps: int, work_s: float = 0.0) -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(work_s)
        return i

    async def pipeline(run: Any, _: Any) -> int:
        for i in range(steps):
            if work_s:
                await run.step(f"s{i}", lambda i=i: work(i))
            else:
                await run.step(f"s{i}", lambda i=i: i)
        return steps

    await tide.run("bench-otel", pipeline, run_id=f"run_{uuid.uuid4().hex}")


async def single(tide: AsyncTidebase, steps: int, work_s: float = 0.0) -> float:
    start = time.perf_counter()
    await one_run(tide, steps, work_s)
    return steps / (time.perf_counter() - start)


async def concurrent(tide: AsyncTidebase, steps: int, runs: int) -> float:
    per_run = max(1, steps // runs)
    start = time.perf_counter()
    await asyncio.gather(*(one_run(tide, per_run) for _ in range(runs)))
    return per_run * runs / (time.perf_counter() - start)


async def measure_workloads(args: argparse.Namespace, receiver: Receiver) -> None:
    url = configured_database_url() or start_embedded(
        Path(tempfile.mkdtemp(prefix="tidebase-bench-")) / "pg", throwaway=True
    )
    tide = AsyncTidebase(url)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
    )
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics"),
                export_interval_millis=1000,
            )
        ]
    )

    def on() -> None:
        tidebase_otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    results: dict[str, list[float]] = {
        f"{w} {s}": [] for w in ("single", "concurrent", "io") for s in ("off", "on")
    }
    io_steps = max(1, args.steps // 4)
    try:
        await tide.store()
        for instrumented in (False, True):  # warm up both paths
            if instrumented:
                on()
            await single(tide, 20)
            await concurrent(tide, 20, args.runs)
            tidebase_otel.uninstrument()
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for instrumented in order:
                label = "on" if instrumented else "off"
                if instrumented:
                    on()
                try:
                    results[f"single {label}"].append(await single(tide, args.steps))
                    results[f"concurrent {label}"].append(
                        await concurrent(tide, args.steps, args.runs)
                    )
                    results[f"io {label}"].append(await single(tide, io_steps, args.work_ms / 1000))
                finally:
                    tidebase_otel.uninstrument()
    finally:
        await tide.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()

    print(
        f"tidebase_otel on vs off: {args.rounds} rounds, median steps/s "
        f"(on = BatchSpanProcessor + OTLP/HTTP to {receiver.endpoint}, periodic OTLP metrics)"
    )
    for workload, title in (
        ("single", f"1 run x {args.steps} pure steps"),
        ("concurrent", f"{args.runs} concurrent runs x {max(1, args.steps // args.runs)} steps"),
        ("io", f"1 run x {io_steps} steps of {args.work_ms:g} ms I/O"),
    ):
        off = statistics.median(results[f"{workload} off"])
        on_ = statistics.median(results[f"{workload} on"])
        print(f"  {title:<36} off {off:8.0f}  on {on_:8.0f}  ratio on/off {on_ / off:.3f}")
    print(f"  receiver got {receiver.requests} OTLP requests, {receiver.bytes / 1024:.0f} KiB")


def agents_processor_cost(traces: int, rounds: int) -> None:
    import agents

    agents.set_trace_processors([])
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(bench_agents_processor.NoopExporter(), max_queue_size=65536)
    )
    empty = bench_agents_processor.EmptyProcessor()
    ours = tidebase_otel.OTelAgentsProcessor(tracer_provider=provider)
    for processor in (empty, ours):
        bench_agents_processor.measure(processor, 200)
    base, mine = [], []
    for _ in range(rounds):
        base.append(bench_agents_processor.measure(empty, traces))
        mine.append(bench_agents_processor.measure(ours, traces))
    provider.shutdown()
    b, m = statistics.median(base), statistics.median(mine)
    print(
        f"Agents SDK processor: {m - b:.2f} us per Agents span on top of an empty processor "
        f"({m:.2f} vs {b:.2f} us; {traces} traces x {bench_agents_processor.SPANS_PER_TRACE} "
        "spans, median of rounds; see bench/bench_agents_processor.py for the breakdown)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--traces", type=int, default=2000)
    args = parser.parse_args()
    receiver = Receiver()
    try:
        asyncio.run(measure_workloads(args, receiver))
    finally:
        receiver.close()
    agents_processor_cost(args.traces, args.rounds)


if __name__ == "__main__":
    main()
