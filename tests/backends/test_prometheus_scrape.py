"""Debian's Prometheus scrapes worker processes running the research pipeline through a real
crash (SIGKILL inside the writer's agent run) and resume; PromQL through its HTTP API returns
exactly the usage ledger's totals, and every query of the provisioned dashboard and every rule
of collector/prometheus/rules evaluates against that data.

A fleet of three workers, each exposing /metrics one of the three ways tidebase_otel offers:

1. attempt 1 of the run: ``configure()`` with ``OTEL_METRICS_EXPORTER=prometheus`` (no code);
   SIGKILLed mid-run. Prometheus counts only what it scraped, so the test kills it only once
   Prometheus has scraped it after its last usage record, which is what a real deployment
   relies on (an increment made after the last scrape dies with the process, like an
   unexported OTLP point).
2. attempt 2 (the resume) in a long-lived worker: ``start_metrics_server()``.
3. another pipeline run plus runs that fail and park a step for manual review, in a worker
   that serves ``Route("/metrics", metrics_app())`` under uvicorn, as ``tidebase serve`` does.

Every process is its own target (instance), so the killed worker's counters stay in
Prometheus after it died and `sum(last_over_time(...))` adds up all processes exactly.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import yaml
from conftest import new_run_id

from . import _dashboard
from ._backends import Prometheus, PrometheusTools, free_port
from ._workers import Workers, worker_env

pytestmark = pytest.mark.backends

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "collector/prometheus/rules/tidebase.yml"
TOPIC = "durable agents"
WINDOW = "15m"  # longer than the test: every series was born inside it


def _rules_every_second(tmp_path: Path) -> Path:
    """The rules file as shipped, evaluated every second instead of every minute."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    path = tmp_path / "tidebase-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


async def _until(what: str, check: Any, timeout: float = 90) -> Any:
    """Polls `check()` (blocking calls run on a thread) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def _ready(path: Path, process: asyncio.subprocess.Process, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    ready = anyio.Path(path)
    while time.monotonic() < deadline:
        if await ready.exists():
            return json.loads(await ready.read_text())
        if process.returncode is not None:
            raise AssertionError(f"worker exited with {process.returncode} before {path.name}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker never wrote {path.name}")


async def _ledger(url: str) -> dict[str, Any]:
    """The usage ledger of the test database, summed (the test's database is its own)."""
    conn = await asyncpg.connect(url)
    try:
        total = await conn.fetchrow(
            "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c, "
            "count(*) AS n FROM usage_records"
        )
        by_model = await conn.fetch(
            "SELECT model, sum(input_tokens + output_tokens) AS t, sum(cost_usd) AS c "
            "FROM usage_records GROUP BY model"
        )
        by_workflow = await conn.fetch(
            "SELECT r.workflow_name AS w, sum(u.cost_usd) AS c FROM usage_records u "
            "JOIN runs r ON r.id = u.run_id GROUP BY r.workflow_name"
        )
    finally:
        await conn.close()
    return {
        "input": int(total["i"]),
        "output": int(total["o"]),
        "cost": float(total["c"]),
        "records": int(total["n"]),
        "tokens_by_model": {r["model"]: int(r["t"]) for r in by_model},
        "cost_by_model": {r["model"]: float(r["c"]) for r in by_model},
        "cost_by_workflow": {r["w"]: float(r["c"]) for r in by_workflow},
    }


async def _step_usage(url: str, run_id: str, step: str) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c "
            "FROM usage_records WHERE run_id = $1 AND step_name = $2",
            run_id,
            step,
        )
    finally:
        await conn.close()
    return {"input": int(row["i"]), "output": int(row["o"]), "cost": float(row["c"])}


async def test_prometheus_scrapes_a_crashed_and_resumed_pipeline_and_equals_the_ledger(
    prom_tools: PrometheusTools,
    fresh_db_url: str,
    workers: Workers,
    tmp_path: Path,
    report_dir: Path | None,
):
    ports = [free_port() for _ in range(3)]
    instances = [f"127.0.0.1:{p}" for p in ports]
    prometheus = await asyncio.to_thread(
        Prometheus, prom_tools, tmp_path / "prometheus", instances, [_rules_every_second(tmp_path)]
    )
    started = time.time()
    run_id = new_run_id()
    try:
        await _scenario(prometheus, fresh_db_url, workers, tmp_path, run_id, ports)
        await _check_totals(prometheus, fresh_db_url, run_id, instances[0])
        await _check_dashboard(prometheus, fresh_db_url, run_id, started, report_dir)
        await _check_rules(prometheus, fresh_db_url)
    finally:
        await workers.close()
        await asyncio.to_thread(prometheus.stop)


async def _scenario(
    prometheus: Prometheus, db: str, workers: Workers, tmp_path: Path, run_id: str, ports: list[int]
) -> None:
    other_run = new_run_id()
    tickets = tmp_path / "tickets.jsonl"
    common = ["--url", db, "--topic", TOPIC, "--tickets", str(tickets)]

    # ---- worker 1: attempt 1, metrics through configure() and the environment alone
    ready_1 = tmp_path / "worker-1.json"
    env_1 = worker_env(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(ports[0]),
    )
    first = await workers.start(
        "--run-id", run_id, *common, "--metrics", "env", "--crash", "hold",
        "--ready-file", str(ready_1), env=env_1,
    )  # fmt: skip
    assert (await _ready(ready_1, first))["state"] == "holding"
    held_at = time.time()
    # Prometheus must scrape the worker after its last record before it dies (a real
    # deployment loses what was recorded after the last scrape).
    await _until(
        "Prometheus to scrape worker 1", lambda: _scraped_since(prometheus, ports[0], held_at)
    )
    first.send_signal(signal.SIGKILL)  # mid agent run: the draft step never completes
    assert await first.wait() == -signal.SIGKILL

    # ---- worker 2: the resume, start_metrics_server(); worker 3: the rest of the fleet
    ready_2, ready_3 = tmp_path / "worker-2.json", tmp_path / "worker-3.json"
    env = worker_env(OTEL_TRACES_EXPORTER="none")
    second = await workers.start(
        "--run-id", run_id, *common, "--metrics", "server", "--metrics-port", str(ports[1]),
        "--ready-file", str(ready_2), "--linger", env=env,
    )  # fmt: skip
    third = await workers.start(
        "--run-id", other_run, "--url", db, "--topic", "checkpoints",
        "--tickets", str(tmp_path / "tickets-3.jsonl"), "--metrics", "asgi",
        "--metrics-port", str(ports[2]), "--ops", "--ready-file", str(ready_3), "--linger",
        env=env,
    )  # fmt: skip
    assert (await _ready(ready_2, second))["state"] == "done"
    assert (await _ready(ready_3, third))["state"] == "done"
    done_at = time.time()
    assert len([line for line in tickets.read_text().splitlines() if line]) == 1
    await _until(
        "Prometheus to scrape workers 2 and 3 once they were done",
        lambda: all(_scraped_since(prometheus, port, done_at) for port in ports[1:]),
    )


def _scraped_since(prometheus: Prometheus, port: int, since: float) -> bool:
    """Whether Prometheus's latest scrape of the worker on `port` began after `since`, and
    succeeded (a scrape collects everything the process recorded before it began)."""
    target = f'up{{instance="127.0.0.1:{port}"}}'
    # timestamp() of a bare selector is the sample's own time: when the scrape began
    started = prometheus.value(f"timestamp({target})")
    return started is not None and started > since and prometheus.value(target) == 1


async def _check_totals(prometheus: Prometheus, db: str, run_id: str, killed: str) -> None:
    ledger = await _ledger(db)
    assert ledger["records"] == 5  # run 1: research (attempt 1), draft (2); run 2: 2; ops: 1

    def last(metric: str, matchers: str = "") -> str:
        return f"last_over_time({metric}{matchers}[{WINDOW}])"

    tokens = prometheus.values_by(
        f"sum by (gen_ai_token_type) ({last('tidebase_usage_tokens_total')})", "gen_ai_token_type"
    )
    assert tokens == {"input": ledger["input"], "output": ledger["output"]}
    cost = prometheus.value(f"sum({last('tidebase_usage_cost_USD_total')})")
    assert cost == pytest.approx(ledger["cost"], rel=1e-12)
    by_model = prometheus.values_by(
        f"sum by (gen_ai_request_model) ({last('tidebase_usage_tokens_total')})",
        "gen_ai_request_model",
    )
    assert by_model == ledger["tokens_by_model"]
    by_workflow = prometheus.values_by(
        f"sum by (tidebase_workflow) ({last('tidebase_usage_cost_USD_total')})",
        "tidebase_workflow",
    )
    assert by_workflow == pytest.approx(ledger["cost_by_workflow"], rel=1e-12)
    # the GenAI token histogram: one point per ledger record and direction, same sums
    histogram = prometheus.values_by(
        f"sum by (gen_ai_token_type) ({last('gen_ai_client_token_usage_sum')})",
        "gen_ai_token_type",
    )
    assert histogram == {"input": ledger["input"], "output": ledger["output"]}
    assert prometheus.value(f"sum({last('gen_ai_client_token_usage_count')})") == 2 * 5

    # the killed worker: its target is down, what Prometheus scraped before the kill stays
    research = await _step_usage(db, run_id, "research")
    assert prometheus.value(f'up{{instance="{killed}"}}') == 0
    on_killed = f'{{instance="{killed}"}}'
    killed_tokens = f"sum({last('tidebase_usage_tokens_total', on_killed)})"
    assert prometheus.value(killed_tokens) == research["input"] + research["output"]
    # the resume replayed research: counted as avoided, never as spent again
    avoided = prometheus.values_by(
        f"sum by (gen_ai_token_type) ({last('tidebase_replay_tokens_avoided_total')})",
        "gen_ai_token_type",
    )
    assert avoided == {"input": research["input"], "output": research["output"]}
    avoided_cost = prometheus.value(f"sum({last('tidebase_replay_cost_avoided_USD_total')})")
    assert avoided_cost == pytest.approx(research["cost"], rel=1e-12)


# What the scenario did, as the dashboard's "in range" panels must show it.
EXPECTED_STEPS = {
    # run 1: research + create_ticket (attempt 1), draft (attempt 2); run 2: all three; ops: 1
    "completed": 7,
    "replayed": 2,  # research and create_ticket, in the resume
    "retried": 1,
    "manual_review": 1,
    "failed": 1,
}
EXPECTED_RUNS = {"completed": 2, "failed": 2}  # plus `leased`: refusals while the lease lived


async def _check_dashboard(
    prometheus: Prometheus, db: str, run_id: str, started: float, report_dir: Path | None
) -> None:
    ledger = await _ledger(db)
    research = await _step_usage(db, run_id, "research")
    results = await asyncio.to_thread(
        _dashboard.run_all, prometheus, started - 60, time.time(), WINDOW
    )
    assert len(results) == len(list(_dashboard.targets())) >= 15
    for result in results:  # every query ran (an error raises in run_all) and found data
        target = result.target
        assert result.series, f"no data for {target.panel} ({target.ref}): {target.expr}"
        finite = (
            result.instant_values().values()
            if target.instant
            else [v for v, _ in result.range_totals().values()]
        )
        assert any(math.isfinite(v) for v in finite), (target.panel, result.series)

    panels = {(r.target.panel, r.target.ref): r for r in results}

    def single(panel: str) -> float:
        (value,) = panels[(panel, "A")].instant_values().values()
        return value

    assert single("Cost") == pytest.approx(ledger["cost"], rel=1e-12)
    assert single("Tokens") == ledger["input"] + ledger["output"]
    assert single("Cost avoided by replay") == pytest.approx(research["cost"], rel=1e-12)
    assert single("Steps parked for manual review") == 1
    cost_bars = panels[("Cost by workflow and model", "A")].instant_values()
    assert sum(cost_bars.values()) == pytest.approx(ledger["cost"], rel=1e-12)
    assert set(cost_bars) == {
        "research-pipeline · offline-scripted",
        "ops-checks · gpt-4.1-mini",
    }
    steps = panels[("Steps by outcome", "A")].instant_values()
    assert steps == EXPECTED_STEPS
    runs = panels[("Runs by status", "A")].instant_values()
    assert {k: v for k, v in runs.items() if k != "leased"} == EXPECTED_RUNS
    parked = panels[("Failed and parked steps by workflow", "A")].instant_values()
    assert parked == {"ops-checks · manual_review": 1, "ops-checks · failed": 1}
    tokens_by_model = panels[("Tokens by model (per 5m)", "A")].range_totals()
    assert {k.rsplit(" ", 1)[0] for k in tokens_by_model} == set(ledger["tokens_by_model"])

    # The workflow variable's query, as Grafana runs it (label_values -> the series API).
    values = prometheus.api("label/tidebase_workflow/values", **{"match[]": "tidebase_steps_total"})
    assert set(values) == {"research-pipeline", "ops-checks"}

    if report_dir is not None:
        lines = [
            f'# Dashboard "{_dashboard.load()["title"]}": every panel\'s queries against '
            f"Prometheus {prometheus.url} ($workflow=All, $__range={WINDOW})",
            "",
            *_dashboard.render(results),
        ]
        (report_dir / "dashboard.txt").write_text("\n".join(lines) + "\n")


async def _check_rules(prometheus: Prometheus, db: str) -> None:
    ledger = await _ledger(db)

    def recorded() -> float | None:
        return prometheus.value("tidebase:usage_cost_usd:increase1d")

    await _until(
        "the recording rules to see every worker",
        lambda: (v := recorded()) is not None and math.isclose(v, ledger["cost"], rel_tol=1e-12),
    )

    def parked_alert() -> list[dict[str, Any]]:
        return [
            a
            for a in prometheus.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "TidebaseStepsParkedForReview"
        ]

    (alert,) = await _until("the manual-review alert", parked_alert)
    assert alert["labels"]["tidebase_workflow"] == "ops-checks"
    assert alert["state"] == "firing"  # no `for:`: a parked step needs an operator now
    assert "tidebase runs list --status manual_review" in alert["annotations"]["description"]

    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 10
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    by_name = {rule["name"]: rule for rule in rules}
    assert by_name["TidebaseDailyCostBudgetExceeded"]["state"] == "inactive"  # cents, not $50
    assert prometheus.value("tidebase:cost_budget_usd:1d") == 50
    steps = prometheus.values_by(
        'tidebase:steps:increase1h{tidebase_workflow="ops-checks"}', "tidebase_step_outcome"
    )
    assert steps == {"retried": 1, "completed": 1, "manual_review": 1, "failed": 1}
