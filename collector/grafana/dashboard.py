"""Builds ``collector/grafana/dashboards/tidebase.json``, the provisioned Tidebase dashboard.

    python collector/grafana/dashboard.py           # (re)write the JSON
    python collector/grafana/dashboard.py --check   # exit 1 if the JSON is not up to date

The PromQL lives here, readable; the JSON is generated from it and committed (Grafana's
provisioning reads the JSON). Metric names are the ones Prometheus really shows for
tidebase_otel's instruments (checked against a real scrape by ``tests/backends``):
``tidebase_usage_tokens_total``, ``tidebase_usage_cost_USD_total``, ``tidebase_steps_total``,
``tidebase_runs_total``, ``tidebase_step_duration_seconds_bucket``,
``tidebase_replay_tokens_avoided_total``, ``tidebase_replay_cost_avoided_USD_total``.

Counts over a window use `window_increase`, not ``increase()`` alone: tidebase's counters appear
with their first value, and ``increase()`` never counts a series' first sample, so a short-lived
worker's usage would vanish from the dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "tidebase.json"
UID = "tidebase-overview"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
JAEGER_URL = "http://127.0.0.1:16686"

# Grafana variables: the dashboard's time range, and the workflows picked at the top.
RANGE = "$__range"
WINDOW = "5m"  # the bucket of the time-series panels ("per 5 min")
WORKFLOW_MATCHER = 'tidebase_workflow=~"$workflow"'

# Run statuses and step outcomes that are failures (README: Telemetry, spans).
# `leased` (another worker holds the run) is a refusal while a run is being resumed, not a failure.
OK_RUN_STATUSES = "completed|already_completed|leased"
FAILED_STEP_OUTCOMES = "failed|lease_lost|interrupted|cancelled"


def selector(metric: str, *matchers: str) -> str:
    """``metric{tidebase_workflow=~"$workflow", ...}``."""
    return f"{metric}{{{', '.join((WORKFLOW_MATCHER, *matchers))}}}"


def window_increase(series: str, window: str) -> str:
    """How much each counter series grew within ``window``, counting new series from zero.

    Series that existed ``window`` ago: ``increase()``. Series born within the window (a new
    process, whose counter appeared with its first value): their whole value.
    """
    return (
        f"(increase({series}[{window}]) and {series} offset {window})"
        f" or (max_over_time({series}[{window}]) unless {series} offset {window})"
    )


def sum_by(labels: str, inner: str) -> str:
    return f"sum by ({labels}) ({inner})" if labels else f"sum({inner})"


def target(expr: str, legend: str = "", *, instant: bool, ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "range": not instant,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }


class Layout:
    """Hands out grid positions left to right, top to bottom (24 columns)."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def new_row(self) -> dict[str, int]:
        self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": 0, "y": self.y, "w": 24, "h": 1}
        self.y += 1
        return pos

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def row(layout: Layout, title: str) -> dict[str, Any]:
    return {
        "type": "row",
        "id": layout.id(),
        "title": title,
        "collapsed": False,
        "gridPos": layout.new_row(),
        "panels": [],
    }


def stat(
    layout: Layout, title: str, expr: str, unit: str, description: str, *, red_above: float | None
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above})
    return {
        "type": "stat",
        "id": layout.id(),
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(6, 4),
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 4 if unit == "currencyUSD" else 0,
                "noValue": "0",
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries(
    layout: Layout,
    title: str,
    targets: list[dict[str, Any]],
    unit: str,
    description: str,
    *,
    width: int = 12,
    stacked: bool = False,
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "id": layout.id(),
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(width, 8),
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "bars" if stacked else "line",
                    "fillOpacity": 60 if stacked else 10,
                    "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
                    "showPoints": "never",
                    "lineWidth": 1,
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["sum", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def bars(
    layout: Layout, title: str, expr: str, legend: str, unit: str, description: str
) -> dict[str, Any]:
    return {
        "type": "bargauge",
        "id": layout.id(),
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(8, 8),
        "targets": [target(expr, legend, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 4 if unit == "currencyUSD" else None,
                "min": 0,
                "color": {"mode": "palette-classic"},
            },
            "overrides": [],
        },
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def text(layout: Layout, title: str, content: str, width: int = 8) -> dict[str, Any]:
    return {
        "type": "text",
        "id": layout.id(),
        "title": title,
        "gridPos": layout.place(width, 8),
        "options": {"mode": "markdown", "content": content},
    }


# ------------------------------------------------------------------------------ the queries
TOKENS = "tidebase_usage_tokens_total"
COST = "tidebase_usage_cost_USD_total"
TOKENS_AVOIDED = "tidebase_replay_tokens_avoided_total"
COST_AVOIDED = "tidebase_replay_cost_avoided_USD_total"
STEPS = "tidebase_steps_total"
RUNS = "tidebase_runs_total"
DURATION_BUCKET = "tidebase_step_duration_seconds_bucket"


def in_range(metric: str, by: str = "", *matchers: str) -> str:
    """Total growth of `metric` over the dashboard's time range, summed by `by`."""
    return sum_by(by, window_increase(selector(metric, *matchers), RANGE))


def per_window(metric: str, by: str, *matchers: str) -> str:
    """Growth per `WINDOW`, for time series."""
    return sum_by(by, window_increase(selector(metric, *matchers), WINDOW))


def duration_quantile(q: float, by: str, window: str) -> str:
    buckets = window_increase(
        selector(DURATION_BUCKET, 'tidebase_step_outcome="completed"'), window
    )
    return f"histogram_quantile({q}, {sum_by(', '.join(filter(None, ('le', by))), buckets)})"


FIND_A_RUN = f"""\
**A run's traces.** Each attempt of a run is its own trace; the run span and every step span
carry the tag `tidebase.run.id`.

* Jaeger: [Search]({JAEGER_URL}/search) → Tags `tidebase.run.id=RUN_ID`
* Grafana: Explore → Jaeger → Search, same tag
* `TIDEBASE_TRACE_URL='{JAEGER_URL}/trace/{{trace_id}}' tidebase runs show RUN_ID`
  prints a link per attempt

**Parked steps.** `tidebase runs list --status manual_review` lists the runs waiting for an
operator; `tidebase runs resolve RUN_ID STEP --retry` (or `--output JSON`) releases one.
"""


def build() -> dict[str, Any]:
    """The dashboard, as Grafana's JSON model."""
    layout = Layout()
    panels: list[dict[str, Any]] = [row(layout, "Spend")]
    panels += [
        stat(
            layout,
            "Cost",
            in_range(COST),
            "currencyUSD",
            "Cost in USD of the usage recorded in the ledger in the time range (a record's "
            "cost_usd, else the configured price table).",
            red_above=None,
        ),
        stat(
            layout,
            "Cost avoided by replay",
            in_range(COST_AVOIDED),
            "currencyUSD",
            "Cost recorded during the original execution of steps that replayed after a crash "
            "or a retry instead of running again.",
            red_above=None,
        ),
        stat(
            layout,
            "Tokens",
            in_range(TOKENS),
            "short",
            "Input and output tokens recorded in the ledger in the time range.",
            red_above=None,
        ),
        stat(
            layout,
            "Steps parked for manual review",
            in_range(STEPS, "", 'tidebase_step_outcome="manual_review"'),
            "short",
            "Steps with side effects that failed or were interrupted and wait for an operator "
            "(tidebase runs list --status manual_review).",
            red_above=1,
        ),
        timeseries(
            layout,
            f"Tokens by model (per {WINDOW})",
            [
                target(
                    per_window(TOKENS, "gen_ai_request_model, gen_ai_token_type"),
                    "{{gen_ai_request_model}} {{gen_ai_token_type}}",
                    instant=False,
                )
            ],
            "short",
            f"Tokens recorded in each {WINDOW} window, by model and direction.",
            width=16,
            stacked=True,
        ),
        bars(
            layout,
            "Cost by workflow and model",
            in_range(COST, "tidebase_workflow, gen_ai_request_model"),
            "{{tidebase_workflow}} · {{gen_ai_request_model}}",
            "currencyUSD",
            "Cost in USD in the time range, by workflow and model.",
        ),
        timeseries(
            layout,
            f"Cost by workflow and model (per {WINDOW})",
            [
                target(
                    per_window(COST, "tidebase_workflow, gen_ai_request_model"),
                    "{{tidebase_workflow}} · {{gen_ai_request_model}}",
                    instant=False,
                )
            ],
            "currencyUSD",
            f"Cost in USD in each {WINDOW} window.",
            width=16,
            stacked=True,
        ),
        bars(
            layout,
            "Cost avoided by replay, by workflow and model",
            in_range(COST_AVOIDED, "tidebase_workflow, gen_ai_request_model"),
            "{{tidebase_workflow}} · {{gen_ai_request_model}}",
            "currencyUSD",
            "What resumes did not spend again: the recorded cost of the steps that replayed.",
        ),
        timeseries(
            layout,
            f"Tokens avoided by replay (per {WINDOW})",
            [
                target(
                    per_window(TOKENS_AVOIDED, "tidebase_workflow, gen_ai_token_type"),
                    "{{tidebase_workflow}} {{gen_ai_token_type}}",
                    instant=False,
                )
            ],
            "short",
            "Tokens recorded during the original execution of steps that replayed.",
            width=16,
            stacked=True,
        ),
    ]
    panels.append(row(layout, "Runs and steps"))
    panels += [
        bars(
            layout,
            "Runs by status",
            in_range(RUNS, "tidebase_run_status"),
            "{{tidebase_run_status}}",
            "short",
            "Run attempts that ended in the time range, by status (an attempt killed mid-run "
            "never ends and is not counted; its resume is).",
        ),
        bars(
            layout,
            "Steps by outcome",
            in_range(STEPS, "tidebase_step_outcome"),
            "{{tidebase_step_outcome}}",
            "short",
            "Steps by outcome in the time range; `retried` counts failed tries that were tried "
            "again.",
        ),
        bars(
            layout,
            "Step duration p95 by workflow",
            duration_quantile(0.95, "tidebase_workflow", RANGE),
            "{{tidebase_workflow}}",
            "s",
            "95th percentile of the duration of completed (executed, not replayed) steps in the "
            "time range, all tries included.",
        ),
        timeseries(
            layout,
            f"Step duration percentiles (per {WINDOW})",
            [
                target(duration_quantile(q, "", WINDOW), label, instant=False, ref=ref)
                for q, label, ref in ((0.5, "p50", "A"), (0.9, "p90", "B"), (0.99, "p99", "C"))
            ],
            "s",
            "Percentiles of the duration of completed steps (from the histogram buckets).",
            width=24,
        ),
    ]
    panels.append(row(layout, "Failures and manual review"))
    panels += [
        timeseries(
            layout,
            f"Failed runs and steps (per {WINDOW})",
            [
                target(
                    per_window(
                        RUNS,
                        "tidebase_workflow, tidebase_run_status",
                        f'tidebase_run_status!~"{OK_RUN_STATUSES}"',
                    ),
                    "run {{tidebase_run_status}} · {{tidebase_workflow}}",
                    instant=False,
                    ref="A",
                ),
                target(
                    per_window(
                        STEPS,
                        "tidebase_workflow, tidebase_step_outcome",
                        f'tidebase_step_outcome=~"{FAILED_STEP_OUTCOMES}|manual_review"',
                    ),
                    "step {{tidebase_step_outcome}} · {{tidebase_workflow}}",
                    instant=False,
                    ref="B",
                ),
            ],
            "short",
            "Run attempts that ended in failure and steps that failed, were interrupted or "
            "were parked for manual review.",
            width=16,
            stacked=True,
        ),
        text(layout, "Find a run", FIND_A_RUN),
        bars(
            layout,
            "Failed and parked steps by workflow",
            in_range(
                STEPS,
                "tidebase_workflow, tidebase_step_outcome",
                f'tidebase_step_outcome=~"{FAILED_STEP_OUTCOMES}|manual_review"',
            ),
            "{{tidebase_workflow}} · {{tidebase_step_outcome}}",
            "short",
            "Steps that failed or wait in manual review, in the time range.",
        ),
        bars(
            layout,
            "Failed runs by workflow",
            in_range(
                RUNS,
                "tidebase_workflow, tidebase_run_status",
                f'tidebase_run_status!~"{OK_RUN_STATUSES}"',
            ),
            "{{tidebase_workflow}} · {{tidebase_run_status}}",
            "short",
            "Run attempts that ended in failure in the time range.",
        ),
    ]
    workflows = f"label_values({STEPS}, tidebase_workflow)"
    return {
        "uid": UID,
        "title": "Tidebase: runs, tokens and cost",
        "description": "Tidebase's OpenTelemetry metrics (tidebase_otel) in Prometheus.",
        "tags": ["tidebase", "opentelemetry", "llm-cost"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "title": "Traces in Jaeger",
                "type": "link",
                "url": f"{JAEGER_URL}/search",
                "targetBlank": True,
                "icon": "external link",
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "workflow",
                    "label": "Workflow",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": workflows,
                    "query": {"query": workflows, "refId": "workflow"},
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "refresh": 2,
                    "sort": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    args = parser.parse_args(argv)
    wanted = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != wanted:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(wanted)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
