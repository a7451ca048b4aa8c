"""The provisioned Grafana dashboard's queries, run against a real Prometheus, and rendered.

Grafana substitutes its variables before a query reaches Prometheus; `substitute` does the
same for the ones the dashboard uses (``$workflow`` set to All, ``$__range``). Instant
targets (stat, bar gauge) run as instant queries at the end of the range, range targets (time
series) as range queries over it, as Grafana runs them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._backends import Prometheus

DASHBOARD = Path(__file__).resolve().parents[2] / "collector/grafana/dashboards/tidebase.json"


@dataclass(frozen=True)
class Target:
    panel: str
    panel_type: str
    ref: str
    expr: str
    legend: str
    instant: bool


@dataclass
class Result:
    target: Target
    series: list[dict[str, Any]] = field(default_factory=list)

    def label(self, metric: dict[str, str]) -> str:
        legend = self.target.legend
        if legend in ("", "__auto"):
            return ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
        for key, value in metric.items():
            legend = legend.replace("{{" + key + "}}", value)
        return legend

    def instant_values(self) -> dict[str, float]:
        return {self.label(s["metric"]): float(s["value"][1]) for s in self.series}

    def range_totals(self) -> dict[str, tuple[float, float]]:
        """Per series: the last and the largest finite value over the range."""
        out = {}
        for s in self.series:
            values = [float(v) for _, v in s["values"] if math.isfinite(float(v))]
            if values:
                out[self.label(s["metric"])] = (values[-1], max(values))
        return out


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets(dashboard: dict[str, Any] | None = None) -> Iterator[Target]:
    dashboard = dashboard or load()
    for panel in dashboard["panels"]:
        for t in panel.get("targets", ()):
            yield Target(
                panel["title"],
                panel["type"],
                t["refId"],
                t["expr"],
                t.get("legendFormat", ""),
                bool(t.get("instant")),
            )


def substitute(expr: str, range_: str) -> str:
    """Grafana's variables as Grafana fills them in with ``workflow = All``."""
    return expr.replace("$__range", range_).replace("$workflow", ".*")


def run_all(prometheus: Prometheus, start: float, end: float, range_: str) -> list[Result]:
    """Every target of the dashboard over [start, end]; raises on a PromQL error."""
    results = []
    for t in targets():
        expr = substitute(t.expr, range_)
        if t.instant:
            series = prometheus.query(expr, at=end)
        else:
            # ~200 points, the last one exactly at `end` (as the instant queries are)
            step = max(1.0, (end - start) / 200)
            first = end - step * math.ceil((end - start) / step)
            series = prometheus.query_range(expr, first, end, step)
        results.append(Result(t, series))
    return results


def render(results: list[Result]) -> list[str]:
    """The dashboard as text: each panel's series and values (last / peak for time series)."""
    panels: dict[str, list[Result]] = {}
    for result in results:
        panels.setdefault(result.target.panel, []).append(result)
    lines: list[str] = []
    for title, group in panels.items():
        rows: list[tuple[str, str]] = []
        for result in group:
            if result.target.instant:
                rows += [(k, f"{v:.6g}") for k, v in sorted(result.instant_values().items())]
            else:
                rows += [
                    (k, f"last {last:.6g}  peak {peak:.6g}")
                    for k, (last, peak) in sorted(result.range_totals().items())
                ]
        lines.append(f"{title} [{group[0].target.panel_type}]")
        width = max((len(key) for key, _ in rows), default=0)
        lines += [f"    {key:<{width}}  {value}" for key, value in rows] or ["    (no data)"]
    return lines
