"""The files of collector/: parsed and checked for structure (the collector, Jaeger and Grafana do
not run on these machines), and Prometheus's own checks with Debian's promtool.

Unmarked tests need only PyYAML; the promtool ones are in the `backends` suite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import _dashboard
from ._backends import PrometheusTools

REPO = Path(__file__).resolve().parents[2]
COLLECTOR = REPO / "collector"
COMPOSE = COLLECTOR / "compose.yaml"
OTELCOL = COLLECTOR / "otel-collector.yaml"
PROMETHEUS = COLLECTOR / "prometheus" / "prometheus.yml"
RULES = COLLECTOR / "prometheus" / "rules" / "tidebase.yml"
RULE_TESTS = COLLECTOR / "prometheus" / "tests" / "tidebase.test.yml"
GRAFANA = COLLECTOR / "grafana"

# Metric names as a real scrape shows them (asserted against Prometheus in
# test_prometheus_scrape.py); every PromQL expression may use only these.
EXPOSED_METRICS = {
    "tidebase_usage_tokens_total",
    "tidebase_usage_cost_USD_total",
    "tidebase_replay_tokens_avoided_total",
    "tidebase_replay_cost_avoided_USD_total",
    "tidebase_steps_total",
    "tidebase_runs_total",
    "tidebase_step_duration_seconds_bucket",
    "tidebase_step_duration_seconds_sum",
    "tidebase_step_duration_seconds_count",
    "gen_ai_client_token_usage_bucket",
    "gen_ai_client_token_usage_sum",
    "gen_ai_client_token_usage_count",
}
PROMQL_WORDS = {
    "sum", "increase", "and", "or", "unless", "max_over_time", "histogram_quantile", "vector",
}  # fmt: skip


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _metric_names(expr: str) -> set[str]:
    """Identifiers of `expr` that name metrics (not functions, keywords or labels)."""
    without_matchers = re.sub(r"\{[^}]*\}", "", expr)
    without_strings = re.sub(r'"[^"]*"', "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_offsets = re.sub(r"offset \S+", "", without_ranges)
    without_by = re.sub(r"by \([^)]*\)", "", without_offsets)
    names = set(re.findall(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", without_by))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("tidebase:")}


# ------------------------------------------------------------------------------ every file
def test_every_yaml_and_json_file_parses():
    files = sorted(COLLECTOR.rglob("*.y*ml")) + sorted(COLLECTOR.rglob("*.json"))
    assert len(files) >= 8
    for path in files:
        loaded = json.loads(path.read_text()) if path.suffix == ".json" else _yaml(path)
        assert isinstance(loaded, dict), path


# ------------------------------------------------------------------------------ the collector
def test_collector_config_receives_otlp_and_exports_traces_to_jaeger_metrics_to_prometheus():
    config = _yaml(OTELCOL)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert {"memory_limiter", "batch"} <= set(config["processors"])
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"] and limiter["limit_percentage"] > 0
    exporters = config["exporters"]
    assert exporters["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert exporters["prometheus"]["endpoint"].endswith(":8889")

    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        # the memory limiter first (it must refuse data before anything else holds it),
        # the batch processor last
        assert pipeline["processors"][0] == "memory_limiter"
        assert pipeline["processors"][-1] == "batch"
        for kind in used:
            used[kind] |= set(pipeline[kind])
    for kind, names in used.items():
        assert names == set(config[kind]), f"{kind} defined but unused, or used but undefined"
    assert set(config["service"]["extensions"]) == set(config["extensions"])


# ------------------------------------------------------------------------------ compose
def test_compose_starts_the_stack_with_every_port_on_loopback():
    compose = _yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {
        "postgres", "tidebase", "otel-collector", "jaeger", "prometheus", "grafana",
    }  # fmt: skip
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, host_port, _container = str(port).split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[int(host_port)] = name
    assert published == {
        5432: "postgres",
        7373: "tidebase",
        4317: "otel-collector",
        4318: "otel-collector",
        16686: "jaeger",
        9090: "prometheus",
        3000: "grafana",
    }
    # the ports table of collector/README.md documents exactly these
    readme = (COLLECTOR / "README.md").read_text()
    documented = {
        int(port): service
        for port, service in re.findall(r"^\| 127\.0\.0\.1:(\d+) \| ([\w-]+) \|", readme, re.M)
    }
    assert documented == published

    # every file a service mounts exists, and is the one the configs refer to
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COLLECTOR / source).exists(), f"{name} mounts missing {source}"
    tidebase = services["tidebase"]
    assert (COLLECTOR / tidebase["build"]["context"] / tidebase["build"]["dockerfile"]).exists()
    assert tidebase["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert "postgres:5432" in tidebase["environment"]["DATABASE_URL"]
    collector_mount = services["otel-collector"]["volumes"][0].split(":")
    assert COLLECTOR / collector_mount[0] == COLLECTOR / "./otel-collector.yaml"
    assert services["otel-collector"]["command"] == [f"--config={collector_mount[1]}"]


def test_dockerfile_serves_the_api_on_the_compose_port_with_telemetry():
    dockerfile = (COLLECTOR / "tidebase.Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert cmd[:3] == ["opentelemetry-instrument", "tidebase", "serve"]
    assert cmd[cmd.index("--port") + 1] == "7373"
    # without a distro, opentelemetry-instrument sets up no SDK: nothing would be exported
    assert re.search(r"pip install .*'\.\[otel\]' opentelemetry-distro", dockerfile)
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), source


# ------------------------------------------------------------------------------ Prometheus
def test_prometheus_scrapes_the_collector_and_the_server_and_loads_the_rules():
    config = _yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == ["otel-collector:8889"]
    assert jobs["otel-collector"]["honor_labels"] is True  # one series per process
    assert jobs["tidebase-server"]["static_configs"][0]["targets"] == ["tidebase:7373"]
    assert jobs["tidebase-server"]["metrics_path"] == "/metrics"
    mount = next(v for v in _yaml(COMPOSE)["services"]["prometheus"]["volumes"] if "rules" in v)
    assert mount.split(":")[1] == "/etc/prometheus/rules"
    assert config["rule_files"] == ["rules/*.yml"]  # relative to /etc/prometheus/prometheus.yml


def test_rules_use_only_the_names_prometheus_exposes():
    rules = _yaml(RULES)
    records = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert _metric_names(rule["expr"]) <= EXPOSED_METRICS, rule
            records.add(rule.get("record"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            for used in re.findall(r"tidebase:[a-z0-9_:]+", rule["expr"]):
                assert used in records, f"{rule} uses the unrecorded {used}"
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {
        "TidebaseDailyCostBudgetExceeded",
        "TidebaseCostBurnRateHigh",
        "TidebaseStepsParkedForReview",
    }


# ------------------------------------------------------------------------------ Grafana
def test_grafana_provisioning_points_at_the_stack_and_the_dashboard():
    sources = _yaml(GRAFANA / "provisioning/datasources/tidebase.yml")["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["jaeger"]["type"] == "jaeger"
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    (provider,) = _yaml(GRAFANA / "provisioning/dashboards/tidebase.yml")["providers"]
    volumes = _yaml(COMPOSE)["services"]["grafana"]["volumes"]
    mounted = dict(v.split(":")[:2] for v in volumes if v.startswith("."))
    assert mounted["./grafana/dashboards"] == provider["options"]["path"]
    assert mounted["./grafana/provisioning"] == "/etc/grafana/provisioning"

    dashboard = _dashboard.load()
    used_sources = {
        json.dumps(p["datasource"], sort_keys=True)
        for p in dashboard["panels"]
        if "datasource" in p
    }
    assert used_sources == {json.dumps({"type": "prometheus", "uid": "prometheus"}, sort_keys=True)}


def test_dashboard_json_is_generated_from_dashboard_py():
    done = subprocess.run(
        [sys.executable, str(GRAFANA / "dashboard.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_dashboard_has_the_panels_and_only_exposed_metric_names():
    dashboard = _dashboard.load()
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Tokens by model (per 5m)",
        "Cost by workflow and model",
        "Cost avoided by replay",
        "Runs by status",
        "Steps by outcome",
        "Step duration percentiles (per 5m)",
        "Failed runs and steps (per 5m)",
        "Steps parked for manual review",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    targets = list(_dashboard.targets(dashboard))
    for t in targets:
        assert _metric_names(t.expr) <= EXPOSED_METRICS, (t.panel, t.expr)
        assert 'tidebase_workflow=~"$workflow"' in t.expr, t.panel
    quantiles = [t for t in targets if "histogram_quantile" in t.expr]
    assert quantiles and all("tidebase_step_duration_seconds_bucket" in t.expr for t in quantiles)
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "workflow" and variable["allValue"] == ".*"


# ------------------------------------------------------------------------------ promtool
@pytest.mark.backends
def test_promtool_checks_the_config_and_the_rules(prom_tools: PrometheusTools):
    for argv in (
        [prom_tools.promtool, "check", "config", str(PROMETHEUS)],
        [prom_tools.promtool, "check", "rules", str(RULES)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr


@pytest.mark.backends
def test_promtool_unit_tests_of_the_alerts_pass(prom_tools: PrometheusTools):
    done = subprocess.run(
        [prom_tools.promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
