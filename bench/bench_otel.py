"""What tidebase_otel costs a run: steps/s with it on against off, measured in the same run.

    python bench/bench_otel.py [--steps 200] [--runs 10] [--rounds 5] [--repeat 5]

"On" is the production set-up: `tidebase_otel.instrument()` into an SDK TracerProvider whose
BatchSpanProcessor exports over OTLP/HTTP, and a MeterProvider whose periodic reader exports
the metrics the same way (every ``--metric-interval-ms``; the SDK default is 60 s, so 1 s is
pessimistic). The OTLP receiver is a separate process, as a real collector is: it reads every
request and keeps the trace payloads, which it decodes only after the measurement to count the
spans it received (so a dropped span shows). "Off" is the same client with nothing instrumented.

Each round measures off, on and "no export" back to back (rotating which goes first) on three
workloads:
one run of N trivial pure steps (the worst case: a step is one database round trip), R
concurrent runs of N/R steps each, and one run of N/4 steps that each wait W ms on I/O (still
far shorter than any LLM call). A measurement runs the workload ``--repeat`` times in a row.
An "on" measurement gets fresh providers and ends by shutting them down inside the timed
region, so it pays for exporting every span and metric it produced and an "off" measurement
never shares the process with a busy exporter thread. Reported: median steps/s of each side,
the median of the per-round ratios on/off (target: >= 0.95) with their range, the same ratio
for "no export" (on, but the BatchSpanProcessor hands its batches to a no-op exporter: the gap
between the two is what exporting spans costs, the rest is tidebase_otel and the SDK's span and
metric work), the time telemetry adds per step, and this process's CPU time per step (all
threads: a steadier figure than wall time on a shared machine, whose noise the ratio ranges
show). Last, the exporter's CPU per step span set against an off step of each length: a floor
under what exporting one span per step can cost a run, whatever tidebase_otel does.

Then, without a database: what the observer costs per step in the hooks exactly as
`tidebase.aio` calls them, split into our own code (no-op OpenTelemetry providers), the SDK's
spans and the SDK's metrics, hot (steps back to back) and cold (after 5 ms idle, as when steps
wait on I/O: caches are cold, and the same work costs several times more); and the exporter's
CPU per span (OTLP protobuf encoding, paid on a thread of the same process). Last, the cost of
the Agents SDK processor per Agents span, from bench_agents_processor. Not a test: it prints
numbers. ``--only steps|observer|agents`` runs one part.

Uses TIDEBASE_URL when it is a postgresql:// URL, else a throwaway embedded Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import tidebase_otel
from tidebase.aio import AsyncTidebase
from tidebase.embedded import configured_database_url, start_embedded
from tidebase.hooks import AttemptInfo, RunObserver, StepInfo, _start_attempt

sys.path.insert(0, str(Path(__file__).parent))
import bench_agents_processor  # a sibling script

WORKFLOW = "bench-otel"


# ---------------------------------------------------------------------------------- receiver
def serve_receiver() -> None:
    """The receiver process (``--receiver``): prints its port, then serves until stdin closes.

    POST: reads the body, answers 200, counts requests and bytes, keeps trace payloads.
    GET /stats: the counts as JSON, with the number of spans in the kept trace payloads.
    """
    import threading

    stats = {"requests": 0, "bytes": 0}
    traces: list[bytes] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                stats["requests"] += 1
                stats["bytes"] += len(body)
                if self.path.endswith("/v1/traces"):
                    traces.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            with lock:
                spans = 0
                for body in traces:
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans += len(scope.spans)
                payload = json.dumps({**stats, "spans": spans}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # the parent closes our stdin (or dies): stop
    server.shutdown()


class Receiver:
    """Runs `serve_receiver` in a child process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receiver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=60) as response:
            return json.loads(response.read())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


# ---------------------------------------------------------------------------------- workloads
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

    await tide.run(WORKFLOW, pipeline, run_id=f"run_{uuid.uuid4().hex}")


class Workload:
    def __init__(self, title: str, runs: int, steps_per_run: int, work_s: float = 0.0):
        self.title = title
        self.runs = runs  # concurrent runs
        self.steps_per_run = steps_per_run
        self.work_s = work_s

    @property
    def steps(self) -> int:
        return self.runs * self.steps_per_run

    async def __call__(self, tide: AsyncTidebase) -> None:
        await asyncio.gather(
            *(one_run(tide, self.steps_per_run, self.work_s) for _ in range(self.runs))
        )


class Telemetry:
    """Fresh SDK providers exporting to the receiver, instrumented; `close` flushes it all.

    With ``export_spans=False`` the BatchSpanProcessor hands its batches to a no-op exporter
    instead of OTLP: the same run with everything but the span export, to show that share.
    """

    def __init__(self, args: argparse.Namespace, endpoint: str, export_spans: bool = True) -> None:
        sampler = None
        if args.sample_ratio is not None:  # what the README recommends for many trivial steps
            sampler = ParentBased(TraceIdRatioBased(args.sample_ratio))
        self.tracer_provider = TracerProvider(sampler=sampler)
        span_exporter = (
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
            if export_spans
            else bench_agents_processor.NoopExporter()
        )
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(
                span_exporter,
                schedule_delay_millis=args.bsp_delay_ms,
                max_export_batch_size=args.bsp_batch,
                max_queue_size=max(args.bsp_queue, args.bsp_batch),
            )
        )
        self.meter_provider = MeterProvider(
            metric_readers=[
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
                    export_interval_millis=args.metric_interval_ms,
                )
            ]
        )
        tidebase_otel.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def close(self) -> None:
        tidebase_otel.uninstrument()
        self.tracer_provider.shutdown()  # exports what is still queued
        self.meter_provider.shutdown()  # a last collection and export


async def timed(
    tide: AsyncTidebase, workload: Workload, repeat: int, telemetry: Telemetry | None
) -> tuple[float, float]:
    """Steps/s of `repeat` runs of the workload (with telemetry: including its final flush),
    and the CPU time of this process (all threads: the exporters too) per step in us."""
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        for _ in range(repeat):
            await workload(tide)
    finally:
        if telemetry is not None:
            telemetry.close()
    steps = workload.steps * repeat
    cpu_us = (time.process_time() - cpu_start) / steps * 1e6
    return steps / (time.perf_counter() - start), cpu_us


async def measure_workloads(args: argparse.Namespace, receiver: Receiver) -> None:
    url = configured_database_url() or start_embedded(
        Path(tempfile.mkdtemp(prefix="tidebase-bench-")) / "pg", throwaway=True
    )
    tide = AsyncTidebase(url)
    workloads = {
        "single": Workload(f"1 run x {args.steps} pure steps", 1, args.steps),
        "concurrent": Workload(
            f"{args.runs} concurrent runs x {max(1, args.steps // args.runs)} steps",
            args.runs,
            max(1, args.steps // args.runs),
        ),
        "io": Workload(
            f"1 run x {max(1, args.steps // 4)} steps of {args.work_ms:g} ms I/O",
            1,
            max(1, args.steps // 4),
            args.work_ms / 1000,
        ),
    }
    # (workload, variant) -> per round (steps/s, CPU us per step)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {
        (name, variant): [] for name in workloads for variant in VARIANTS
    }
    spans_sent = 0
    try:
        await tide.store()
        warm_up = Workload("warm-up", 2, 20)
        for variant in VARIANTS:
            await timed(tide, warm_up, 2, telemetry_for(variant, args, receiver))
        spans_sent += 2 * warm_up.runs * (1 + warm_up.steps_per_run)
        for round_number in range(args.rounds):
            # Rotate which variant goes first, so none always runs on a fresher machine.
            shift = round_number % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]
            for name, workload in workloads.items():
                for variant in order:
                    telemetry = telemetry_for(variant, args, receiver)
                    results[(name, variant)].append(
                        await timed(tide, workload, args.repeat, telemetry)
                    )
                    if variant == ON:
                        spans_sent += args.repeat * workload.runs * (1 + workload.steps_per_run)
    finally:
        await tide.close()

    sampling = "" if args.sample_ratio is None else f"sampling {args.sample_ratio:g} of runs; "
    print(
        f"tidebase_otel on vs off, median of {args.rounds} rounds (a measurement is "
        f"{args.repeat} x the workload; on = BatchSpanProcessor(schedule_delay={args.bsp_delay_ms}"
        f" ms, max_export_batch_size={args.bsp_batch}, max_queue_size="
        f"{max(args.bsp_queue, args.bsp_batch)}) + OTLP/HTTP to a receiver process, OTLP "
        f"metrics every {args.metric_interval_ms} ms, all flushed inside the timing; {sampling}"
        "'no export': the same with the span exporter replaced by a no-op)"
    )
    print(
        f"  {'workload':<34} {'off':>7} {'on':>7} steps/s  ratio on/off (min-max)   "
        "no export   wall +us/step   CPU us/step off -> on"
    )
    off_step_us: dict[str, float] = {}
    for name, workload in workloads.items():
        off, on_, quiet = (results[(name, v)] for v in VARIANTS)
        # Rounds pair measurements taken back to back: the ratio of each pair cancels slow
        # drifts (other processes, the database) that medians of each side keep.
        ratios = [b[0] / a[0] for a, b in zip(off, on_, strict=True)]
        quiet_ratios = [b[0] / a[0] for a, b in zip(off, quiet, strict=True)]
        off_rate = statistics.median(r for r, _ in off)
        on_rate = statistics.median(r for r, _ in on_)
        off_cpu = statistics.median(c for _, c in off)
        on_cpu = statistics.median(c for _, c in on_)
        off_step_us[name] = 1e6 / off_rate
        print(
            f"  {workload.title:<34} {off_rate:7.0f} {on_rate:7.0f}          "
            f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
            f"     {statistics.median(quiet_ratios):.3f}"
            f"   {(1 / on_rate - 1 / off_rate) * 1e6:+8.1f}      "
            f"{off_cpu:6.1f} -> {on_cpu:6.1f} (+{on_cpu - off_cpu:.1f})"
        )
    stats = receiver.stats()
    print(
        f"  receiver got {stats['requests']} OTLP requests, {stats['bytes'] / 1024:.0f} KiB, "
        f"{stats['spans']} spans" + (f" (sent {spans_sent})" if not sampling else "")
    )
    encode_us = otlp_encode_us()
    print(
        f"  the OTLP exporter spends {encode_us:.1f} us of CPU (holding the GIL) encoding each "
        f"step span: {encode_us / off_step_us['single'] * 100:.1f}% of a trivial step "
        f"({off_step_us['single']:.0f} us off), {encode_us / off_step_us['io'] * 100:.1f}% of "
        f"a {args.work_ms:g} ms one ({off_step_us['io']:.0f} us off)"
    )


OFF, ON, NO_EXPORT = "off", "on", "no export"
VARIANTS = [OFF, ON, NO_EXPORT]


def telemetry_for(variant: str, args: argparse.Namespace, receiver: Receiver) -> Telemetry | None:
    if variant == OFF:
        return None
    return Telemetry(args, receiver.endpoint, export_spans=variant == ON)


def otlp_encode_us() -> float:
    """CPU microseconds the OTLP exporter spends per step span (protobuf encoding of a batch
    of 512, the BatchSpanProcessor's default; paid on its thread, under the GIL)."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tidebase_otel.observer import TidebaseObserver

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    observer = TidebaseObserver(provider, otel_metrics.NoOpMeterProvider())
    attempt = observer.attempt(AttemptInfo(f"run_{0:032x}", WORKFLOW, 1))
    for i in range(512):
        step = attempt.step(
            StepInfo(f"run_{0:032x}", WORKFLOW, 1, f"s{i}", "0" * 64, (), None, None, 0, None)
        )
        step.finished("completed", duration_s=1e-4)
    attempt.finished("completed")
    batch = [span for span in memory.get_finished_spans() if span.name.startswith("step ")]
    encode_spans(batch).SerializeToString()  # warm
    start = time.process_time()
    for _ in range(5):
        encode_spans(batch).SerializeToString()
    return (time.process_time() - start) / (5 * len(batch)) * 1e6


# ---------------------------------------------------------------------------------- no database
async def _observer_step_cost(
    observers: list[RunObserver], runs: int, steps: int, idle_s: float = 0.0
) -> float:
    """CPU microseconds per step spent in the hook calls `tidebase.aio` makes for a run of
    pure steps. With `idle_s`, the event loop waits that long before each step, as in a run
    whose steps wait on I/O: other processes run meanwhile, so the step starts with cold
    caches."""
    spent = 0
    for r in range(runs):
        info = AttemptInfo(run_id=f"run_{r:032x}", workflow=WORKFLOW)
        tracker = _start_attempt(observers, info)
        info.attempt = 1
        tracker.begun(info)
        with tracker.active():
            for i in range(steps):
                step_info = StepInfo(
                    run_id=info.run_id,
                    workflow=WORKFLOW,
                    attempt=1,
                    name=f"s{i}",
                    input_hash="0" * 64,
                    side_effects=(),
                    idempotency_key=None,
                    replay=None,
                    retries=0,
                    parent=None,
                )
                if idle_s:
                    await asyncio.sleep(idle_s)
                start = time.thread_time_ns()
                step = tracker.step(step_info)
                with step.running(1):
                    pass
                await step.settle(1)
                _ = step.span_ref  # stored with the checkpoint
                step.finished("completed", duration_s=1e-4)
                spent += time.thread_time_ns() - start
        tracker.finished("completed")
    return spent / (runs * steps) / 1000


def observer_cost(rounds: int) -> None:
    """Per step, what our code, the SDK's spans and the SDK's metrics add (hot and cold)."""
    import agents
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace

    from tidebase_otel.observer import TidebaseObserver

    agents.set_trace_processors([])

    def batch_provider() -> TracerProvider:
        provider = TracerProvider()
        provider.add_span_processor(
            BatchSpanProcessor(bench_agents_processor.NoopExporter(), max_queue_size=65536)
        )
        return provider

    def observer(tracer_provider: Any, meter_provider: Any) -> list[RunObserver]:
        # With an Agents processor, as instrument() sets it up when openai-agents is installed.
        processor = tidebase_otel.OTelAgentsProcessor(tracer_provider=tracer_provider)
        return [TidebaseObserver(tracer_provider, meter_provider, agents_processor=processor)]

    variants = {
        "no observer": [],
        "our code (no-op OTel providers)": observer(
            otel_trace.NoOpTracerProvider(), otel_metrics.NoOpMeterProvider()
        ),
        "+ SDK spans (BatchSpanProcessor)": observer(
            batch_provider(), otel_metrics.NoOpMeterProvider()
        ),
        "+ SDK metrics (= instrument())": observer(
            batch_provider(), MeterProvider(metric_readers=[InMemoryMetricReader()])
        ),
    }
    hot: dict[str, list[float]] = {name: [] for name in variants}
    cold: dict[str, list[float]] = {name: [] for name in variants}
    for observers in variants.values():  # warm up
        asyncio.run(_observer_step_cost(observers, 5, 200))
    for _ in range(rounds):
        for name, observers in variants.items():
            hot[name].append(asyncio.run(_observer_step_cost(observers, 10, 200)))
            cold[name].append(asyncio.run(_observer_step_cost(observers, 1, 60, 0.005)))

    encode_us = otlp_encode_us()

    print(
        f"Observer without a database: CPU us per executed step in the hooks (median of "
        f"{rounds} rounds; cold = 5 ms idle before each step, as in a run that waits on I/O)"
    )
    print(f"  {'':34} {'hot':>7} {'cold':>7}")
    previous: tuple[float, float] | None = None
    for name in variants:
        h, c = statistics.median(hot[name]), statistics.median(cold[name])
        added = "" if previous is None else f"   (+{h - previous[0]:.1f} / +{c - previous[1]:.1f})"
        print(f"  {name:34} {h:7.1f} {c:7.1f}{added}")
        previous = (h, c)
    print(
        f"  and on the exporter's thread, {encode_us:.1f} us per step span to encode it as "
        "OTLP protobuf (plus ~1 ms per request of 512 spans)"
    )


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
    parser.add_argument("--repeat", type=int, default=5, help="workload runs per measurement")
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--metric-interval-ms", type=int, default=1000)
    # The SDK's defaults (as OTEL_BSP_SCHEDULE_DELAY, _MAX_EXPORT_BATCH_SIZE, _MAX_QUEUE_SIZE).
    parser.add_argument("--bsp-delay-ms", type=int, default=5000)
    parser.add_argument("--bsp-batch", type=int, default=512)
    parser.add_argument("--bsp-queue", type=int, default=2048)
    parser.add_argument(
        "--sample-ratio",
        type=float,
        default=None,
        help="sample this share of runs (ParentBased(TraceIdRatioBased)); default: all",
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("steps", "observer", "agents"), default=None)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver()
        return
    if args.only in (None, "steps"):
        receiver = Receiver()
        try:
            asyncio.run(measure_workloads(args, receiver))
        finally:
            receiver.close()
    if args.only in (None, "observer"):
        observer_cost(args.rounds)
    if args.only in (None, "agents"):
        agents_processor_cost(args.traces, args.rounds)


if __name__ == "__main__":
    main()
