"""The `tidebase` command: migrate, inspect, resolve and cancel runs, run queue workers and the
reconciler, run the demo, serve the HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from tidebase.contract import RUN_STATUS_FILTERS
from tidebase.errors import TidebaseError


def _store_url() -> str:
    """Where the CLI reads runs: TIDEBASE_URL if it is http(s) or Postgres, else the database."""
    url = os.environ.get("TIDEBASE_URL", "")
    if url.startswith(("http://", "https://")):
        return url
    from tidebase.embedded import resolve_database_url

    return resolve_database_url(announce=True)


async def _open_store(url: str) -> Any:
    from tidebase.aio import AsyncTidebase

    client = AsyncTidebase(url)
    return client, await client.store()


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _summarize_output(output: Any) -> str:
    if isinstance(output, dict) and output.get("__tidebase__") == "agents.run_result":
        final = (output.get("v") or {}).get("final_output") or {}
        return "RunResult: " + _short(final.get("value"), 50)
    if isinstance(output, dict) and "__tidebase__" in output:
        return f"{output['__tidebase__']}: " + _short(output.get("v"), 50)
    return _short(output)


# -- commands --------------------------------------------------------------------------------


def _refuse_server_url(command: str, why: str) -> None:
    """Commands that work on the database itself must not silently use another one."""
    url = os.environ.get("TIDEBASE_URL", "")
    has_db = os.environ.get("TIDEBASE_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url.startswith(("http://", "https://")) and not has_db:
        raise TidebaseError(
            f"`tidebase {command}` works on the database, but TIDEBASE_URL points at a server "
            f"({url.split('@')[-1]}); {why}. Set DATABASE_URL to run it against a database."
        )


async def _migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from tidebase import migrate
    from tidebase.embedded import redact_url, resolve_database_url

    _refuse_server_url("migrate", "the server applies migrations at start")
    url = resolve_database_url(announce=True)
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate.apply(conn)
    finally:
        await conn.close()
    if applied:
        for m in applied:
            print(f"applied {m.path.name}")
    else:
        print(f"{redact_url(url)}: schema is up to date")
    return 0


async def _runs_list(args: argparse.Namespace) -> int:
    client, store = await _open_store(_store_url())
    try:
        runs = await store.list_runs(status=args.status, workflow=args.workflow, limit=args.limit)
    finally:
        await client.close()
    if not runs:
        print("no runs")
        return 0
    header = (
        f"{'RUN':<38} {'WORKFLOW':<20} {'STATUS':<13} {'ATT':>3} {'STEPS':>7} "
        f"{'TOKENS':>8} {'COST $':>10}  CREATED"
    )
    print(header)
    for r in runs:
        steps = f"{r['steps_done']}/{r['steps_total']}"
        # The word `--status` takes: a failed run parked on a step shows as manual_review.
        status = "manual_review" if r.get("failure_class") == "manual_review" else r["status"]
        print(
            f"{r['id']:<38} {_short(r['workflow_name'], 20):<20} {status:<13} "
            f"{r['attempt']:>3} {steps:>7} {int(r['tokens']):>8} {float(r['cost_usd']):>10.6f}  "
            f"{str(r['created_at'])[:19]}"
        )
    return 0


async def _runs_show(args: argparse.Namespace) -> int:
    client, store = await _open_store(_store_url())
    try:
        detail = await store.run_detail(args.run_id)
    finally:
        await client.close()
    print(render_run(detail))
    return 0


def render_run(detail: dict[str, Any]) -> str:
    """A human-readable account of a run: attempts, steps, usage totals and state."""
    run = detail["run"]
    lines = [
        f"run       {run['id']}",
        f"workflow  {run['workflow_name']}",
        f"status    {run['status']}"
        + (f" ({run['failure_class']})" if run.get("failure_class") else ""),
        f"attempts  {run['attempt']}",
    ]
    if run.get("error"):
        lines.append(f"error     {_short(run['error'], 100)}")
    trace_url = os.environ.get("TIDEBASE_TRACE_URL")
    lines.append("\nattempts:")
    for a in detail.get("attempts", []):
        trace = a.get("trace_id") or "-"
        link = ""
        if trace_url and a.get("trace_id"):
            link = "  " + trace_url.replace("{trace_id}", trace)
        lines.append(f"  #{a['attempt']:<3} {a['status']:<10} trace {trace}{link}")
    lines.append("\nsteps:")
    usage_by_step: dict[str, list[dict[str, Any]]] = {}
    for u in detail.get("usage", []):
        usage_by_step.setdefault(u.get("step_name") or "", []).append(u)
    final_attempt = run["attempt"]
    resolved = {  # steps an operator completed with `runs resolve --output`
        (e.get("payload") or {}).get("name")
        for e in detail.get("events", [])
        if e.get("type") == "step.resolved"
        and (e.get("payload") or {}).get("resolution") == "output"
    }
    counts = {"executed": 0, "replayed": 0}
    children: dict[str | None, list[dict[str, Any]]] = {}
    names = {s["name"] for s in detail.get("steps", [])}
    for s in detail.get("steps", []):
        parent = s.get("parent_name") if s.get("parent_name") in names else None
        children.setdefault(parent, []).append(s)

    def render_step(s: dict[str, Any], depth: int) -> None:
        indent = "  " * (depth + 1)
        origin = s.get("run_attempt")
        if s["status"] == "completed" and s["name"] in resolved:
            how = "output given by an operator (runs resolve)"
        elif s["status"] == "completed":
            if origin == final_attempt:
                counts["executed"] += 1
                how = f"executed in attempt {origin}"
            else:
                counts["replayed"] += 1
                how = f"executed in attempt {origin}, replayed since"
        else:
            how = s.get("resume_decision") or ""
        tokens = sum(u.get("total_tokens") or 0 for u in usage_by_step.get(s["name"], []))
        tok = f"  {tokens} tokens" if tokens else ""
        lines.append(f"{indent}{s['name']:<{22 - 2 * depth}} {s['status']:<15} {how}{tok}")
        if s["status"] == "completed":
            lines.append(f"{indent}  → {_summarize_output(s.get('output'))}")
        elif s.get("error"):
            lines.append(f"{indent}  ! {_short(s['error'], 90)}")
        for child in children.get(s["name"], []):
            render_step(child, depth + 1)

    for s in children.get(None, []):
        render_step(s, 0)
    executed, replayed = counts["executed"], counts["replayed"]
    lines.append(f"\n  {executed} executed in the last attempt, {replayed} from earlier attempts")
    usage = detail.get("usage", [])
    tokens_in = sum(u.get("input_tokens") or 0 for u in usage)
    tokens_out = sum(u.get("output_tokens") or 0 for u in usage)
    cost = sum(float(u.get("cost_usd") or 0) for u in usage)
    lines.append(
        f"\nusage: {len(usage)} records, {tokens_in} input + {tokens_out} output tokens, "
        f"${cost:.6f}"
    )
    state = detail.get("state")
    lines.append(
        f"state: {_short(state['value'], 100) if state else '-'}"
        + (f" (version {state['version']})" if state else "")
    )
    return "\n".join(lines)


async def _runs_resolve(args: argparse.Namespace) -> int:
    if args.retry == (args.output is not None):
        print(
            "tidebase runs resolve: give exactly one of --retry or --output JSON", file=sys.stderr
        )
        return 2
    output = None
    if args.output is not None:
        try:
            output = json.loads(args.output)
        except ValueError as exc:
            print(f"tidebase runs resolve: --output is not valid JSON: {exc}", file=sys.stderr)
            return 2
    client, store = await _open_store(_store_url())
    try:
        resolved = await store.resolve_step(args.run_id, args.step, retry=args.retry, output=output)
    finally:
        await client.close()
    what = "will execute again" if args.retry else "is completed with the given output"
    when = (
        "when a queue worker picks the run up (it was requeued)"
        if isinstance(resolved, dict) and resolved.get("requeued")
        else "on the next invocation"
    )
    print(f"step {args.step!r} of run {args.run_id} {what} {when}")
    return 0


async def _runs_cancel(args: argparse.Namespace) -> int:
    from tidebase.aio import AsyncTidebase

    client = AsyncTidebase(_store_url())
    try:
        run = await client.cancel(args.run_id, reason=args.reason, actor=args.actor)
    finally:
        await client.close()
    print(f"run {args.run_id} is {run['status']}" + (f": {args.reason}" if args.reason else ""))
    return 0


async def _queues_list(args: argparse.Namespace) -> int:
    client, store = await _open_store(_store_url())
    try:
        queues = await store.list_queues()
    finally:
        await client.close()
    if not queues:
        print("no queues")
        return 0
    print(
        f"{'QUEUE':<24} {'READY':>6} {'QUEUED':>7} {'RUNNING':>8} {'DONE':>6} {'FAILED':>7}  CAPS"
    )
    for q in queues:
        counts, config = q["counts"], q.get("config") or {}
        caps = ", ".join(
            f"{label} {config[key]}"
            for key, label in (("concurrency", "concurrency"), ("ratePerMinute", "per minute"))
            if config.get(key)
        )
        print(
            f"{_short(q['queue'], 24):<24} {q['ready']:>6} {counts.get('queued', 0):>7} "
            f"{counts.get('running', 0):>8} {counts.get('completed', 0):>6} "
            f"{counts.get('failed', 0):>7}  {caps or '-'}"
        )
    return 0


async def _queues_config(args: argparse.Namespace) -> int:
    from tidebase.aio import AsyncTidebase

    client = AsyncTidebase(_store_url())
    try:
        config = await client.configure_queue(
            args.queue, concurrency=args.concurrency, rate_per_minute=args.rate_per_minute
        )
    finally:
        await client.close()
    print(json.dumps(config))
    return 0


def _load_client(target: str) -> Any:
    """The AsyncTidebase named by `module:attr` (its workflows registered on import)."""
    import importlib

    from tidebase.aio import AsyncTidebase

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TidebaseError(f"expected module:attr naming an AsyncTidebase, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TidebaseError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TidebaseError(f"{target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, AsyncTidebase):
        raise TidebaseError(f"{target!r} is not an AsyncTidebase (got {type(obj).__name__})")
    return obj


async def _worker(args: argparse.Namespace) -> int:
    tide = _load_client(args.target)
    if not tide.workflows:
        print(f"tidebase worker: {args.target} has no registered workflows", file=sys.stderr)
        return 2
    print(
        f"tidebase worker: queues {', '.join(args.queue)}, concurrency {args.concurrency}, "
        f"workflows {', '.join(sorted(tide.workflows))} ({tide.mode} mode)",
        file=sys.stderr,
    )
    try:
        await tide.work(args.queue, concurrency=args.concurrency, grace_period=args.grace_period)
    finally:
        await tide.close()
    return 0


async def _reconcile(args: argparse.Namespace) -> int:
    from tidebase.reconciler import Reconciler, ReconcilerSettings
    from tidebase.store.postgres import PostgresStore

    _refuse_server_url("reconcile", "the server reconciles by itself")
    url = os.environ.get("TIDEBASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        from tidebase.embedded import resolve_database_url

        url = resolve_database_url(announce=True)
    store = await PostgresStore.connect(url)
    settings = ReconcilerSettings.from_env()
    reconciler = Reconciler(store, settings)
    try:
        while True:
            summary = await reconciler.tick()
            if args.once:
                print(json.dumps(summary, default=str))
                return 0
            await asyncio.sleep(max(settings.interval_ms, 100) / 1000.0)
    finally:
        await reconciler.close()
        await store.close()


async def _demo(args: argparse.Namespace) -> int:
    from tidebase.demo.run import run_demo

    return await run_demo(args.topic, crash=not args.no_crash)


def _serve(args: argparse.Namespace) -> int:
    from tidebase.server import main as serve_main

    return serve_main(["--host", args.host, "--port", str(args.port)])


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value


def _limit_big(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000000, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 86_400 or value != value:
        raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidebase", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending schema migrations")

    runs = sub.add_parser("runs", help="inspect and resolve runs").add_subparsers(
        dest="runs_command", required=True
    )
    listing = runs.add_parser("list", help="recent runs with status, steps, tokens and cost")
    listing.add_argument(
        "--status",
        choices=RUN_STATUS_FILTERS,
        help="manual_review lists failed runs parked on a step",
    )
    listing.add_argument("--workflow")
    listing.add_argument("--limit", type=_limit, default=50, help="1..1000 (default 50)")
    show = runs.add_parser("show", help="one run: attempts, steps, usage, state")
    show.add_argument("run_id")
    resolve = runs.add_parser("resolve", help="release a step parked in manual review")
    resolve.add_argument("run_id")
    resolve.add_argument("step")
    resolve.add_argument("--retry", action="store_true", help="let the step execute again")
    resolve.add_argument("--output", help="record this JSON as the step's output instead")

    cancel = runs.add_parser("cancel", help="cancel a run for good (workers stop it)")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason")
    cancel.add_argument("--actor", default=os.environ.get("USER") or "cli")

    queues = sub.add_parser("queues", help="list queues and set their caps").add_subparsers(
        dest="queues_command", required=True
    )
    queues.add_parser("list", help="every queue: counts by status and caps")
    qconfig = queues.add_parser("config", help="set a queue's caps (replacing earlier ones)")
    qconfig.add_argument("queue")
    qconfig.add_argument("--concurrency", type=_limit_big, help="max runs running at once")
    qconfig.add_argument("--rate-per-minute", type=_limit_big, help="max claims per minute")

    worker = sub.add_parser("worker", help="run a queue worker for module:attr (an AsyncTidebase)")
    worker.add_argument("target", help="module:attr naming an AsyncTidebase with workflows")
    worker.add_argument("--queue", action="append", required=True, help="repeat for several")
    worker.add_argument("--concurrency", type=_limit, default=1, help="runs at once (default 1)")
    worker.add_argument(
        "--grace-period", type=_seconds, default=30.0, help="seconds to finish work on SIGTERM"
    )

    reconcile = sub.add_parser(
        "reconcile", help="run the reconciler against Postgres (direct mode, no server)"
    )
    reconcile.add_argument("--once", action="store_true", help="one tick, print its summary")

    demo = sub.add_parser("demo", help="run the research pipeline, crash it, resume it")
    demo.add_argument("--topic", default="durable execution for AI agents")
    demo.add_argument("--no-crash", action="store_true", help="run once without the crash")

    serve = sub.add_parser("serve", help="serve the Tidebase HTTP API")
    serve.add_argument("--host", default=os.environ.get("TIDEBASE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("TIDEBASE_PORT", "7373")))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"migrate": _migrate, "demo": _demo, "worker": _worker, "reconcile": _reconcile}
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "runs":
            handler = {
                "list": _runs_list,
                "show": _runs_show,
                "resolve": _runs_resolve,
                "cancel": _runs_cancel,
            }[args.runs_command]
        elif args.command == "queues":
            handler = {"list": _queues_list, "config": _queues_config}[args.queues_command]
        else:
            handler = handlers[args.command]
        return asyncio.run(handler(args))
    except TidebaseError as exc:
        print(f"tidebase: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"tidebase: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
