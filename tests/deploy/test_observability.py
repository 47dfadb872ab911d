"""Prometheus scrape configuration and rules, Alertmanager configuration, the Grafana dashboard and provisioning.

Every metric the dashboard and the rules query exists: driftloop's own are read from the code's registries,
Triton's and the Kafka exporter's are the documented names. ``promtool`` and ``amtool`` (Debian's ``prometheus`` /
``prometheus-alertmanager``) check the files and every dashboard query; ``promtool test rules`` runs the alert
rules' unit tests (tests/deploy/rules/*.test.yml). On Kubernetes the Prometheus Operator gets the same rules (a
PrometheusRule generated from the rules file) and PodMonitors that label the targets as the rules expect; a plain
Prometheus gets them from the pods' annotations.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundation.health import METRICS_PATH
from foundation.paths import REPO_ROOT
from tests.deploy import prometheus_rule
from tests.deploy.kustomize import pod_spec
from tests.deploy.manifests import (
    OVERLAYS,
    all_containers,
    config_env,
    of_kind,
    pod_labels,
    rendered,
    selects,
    workloads,
)
from tests.deploy.support import DEPLOY, ROLE_COMMANDS, health_port, load_yaml, require_tool

pytestmark = pytest.mark.unit

PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = DEPLOY / "prometheus" / "prometheus-kubernetes.yml"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "driftloop.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"

#: Triton 24.10's metric names (Triton's metrics documentation: counts, latency counters, GPU and CPU gauges).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
}
#: The Kafka exporter's consumer-group metrics (compose's kafka-exporter service).
KAFKA_EXPORTER_METRICS = {
    "kafka_consumergroup_lag",
    "kafka_consumergroup_lag_sum",
    "kafka_consumergroup_current_offset",
}
PROMETHEUS_METRICS = {"up"}
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "irate",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "le",
    "bool",
    "offset",
    "abs",
    "absent",
    "topk",
    "bottomk",
    "label_replace",
    "vector",
    "scalar",
    "time",
}


METRIC_SUFFIXES = {
    "Counter": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Gauge": ("",),
    "Summary": ("_sum", "_count"),
}


def declared_metrics(module: Path) -> set[str]:
    """Sample names of the prometheus_client metrics a module declares (``Gauge("name", ...)`` and the like).

    Read from the source, not imported: the monitor's module imports Evidently, which takes seconds.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in METRIC_SUFFIXES:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                base = first.value.removesuffix("_total") if node.func.id == "Counter" else first.value
                names.update(base + suffix for suffix in METRIC_SUFFIXES[node.func.id])
    return names


def driftloop_metrics() -> set[str]:
    """Every sample name driftloop's code exports: the stream workers' metrics, the skipped-records counter every
    consumer shares, and the monitor's."""
    return stream_metrics() | declared_metrics(REPO_ROOT / "monitoring" / "metrics.py")


#: The modules whose metrics go to prometheus_client's default registry (served by the stream workers and the
#: retraining consumer): the stream workers', the skipped-records counter, the publisher's replica counters.
DEFAULT_REGISTRY_MODULES = ("streams.metrics", "streams.skips", "training.publish")


def stream_metrics() -> set[str]:
    """The metrics declared in :data:`DEFAULT_REGISTRY_MODULES`, read from their source."""
    return set().union(
        *(declared_metrics(REPO_ROOT / (name.replace(".", "/") + ".py")) for name in DEFAULT_REGISTRY_MODULES)
    )


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions and durations left out)."""
    without_labels = re.sub(r"\{[^}]*\}", "", expression)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    without_numbers = re.sub(r"(?<![a-zA-Z0-9_:])\d+(\.\d+)?([eE][-+]?\d+)?", "", without_ranges)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', "", without_numbers)))
    return tokens - PROMQL_WORDS


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def rule_expressions() -> list[tuple[str, str]]:
    return [
        (rule["alert"], rule["expr"])
        for path in RULES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    ]


# Prometheus.


def test_compose_scrape_targets_are_the_compose_services_on_their_health_ports() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = load_yaml(DEPLOY / "compose.yaml")["services"]

    workers = {entry["names"][0]: entry["port"] for entry in jobs["driftloop-workers"]["dns_sd_configs"]}
    assert workers == {role: health_port(role) for role in ROLE_COMMANDS}
    assert jobs["driftloop-workers"].get("metrics_path", "/metrics") == METRICS_PATH
    assert set(workers) <= set(services)
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert "127.0.0.1:8002:8002" in services["triton"]["ports"]
    assert jobs["kafka-exporter"]["static_configs"][0]["targets"] == ["kafka-exporter:9308"]
    assert "kafka-exporter" in services
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert RULES


def test_kubernetes_scrape_config_reads_the_annotations_the_manifests_carry() -> None:
    config = load_yaml(PROMETHEUS_K8S)
    (job,) = config["scrape_configs"]
    relabels = job["relabel_configs"]
    sources = {label for relabel in relabels for label in relabel.get("source_labels", [])}

    for relabel in relabels:
        re.compile(relabel.get("regex", "(.*)"))
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    for workload in rendered("overlays/production"):
        spec = pod_spec(workload)
        if spec is None or workload["kind"] != "Deployment":
            continue
        template = workload["spec"]["template"]["metadata"]
        for annotation in template["annotations"]:
            assert "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation) in sources
        assert template["labels"]["app.kubernetes.io/part-of"] == "driftloop"
        assert template["labels"]["app.kubernetes.io/component"] in {*ROLE_COMMANDS, "triton"}
    assert "__meta_kubernetes_pod_label_app_kubernetes_io_component" in sources


def test_kubernetes_scrape_config_sends_alerts_where_the_monitor_does() -> None:
    config = load_yaml(PROMETHEUS_K8S)
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    monitor_url = config_env(rendered("overlays/production"))["DRIFTLOOP_MONITORING__ALERTMANAGER_URL"]

    assert alertmanagers["static_configs"][0]["targets"] == [monitor_url.split("://", 1)[1]]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


# The Prometheus Operator (deploy/k8s/components/prometheus-operator).


def test_the_prometheus_rule_is_the_rules_file() -> None:
    committed = prometheus_rule.PROMETHEUS_RULE.read_text()

    assert committed == prometheus_rule.generate(prometheus_rule.RULES_FILE.read_text()), (
        f"{prometheus_rule.PROMETHEUS_RULE.name} is stale: run {prometheus_rule.COMMAND}"
    )
    (rule,) = of_kind(rendered("overlays/production"), "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(prometheus_rule.RULES_FILE)["groups"]


def test_a_changed_rules_file_makes_the_prometheus_rule_stale(tmp_path: Path) -> None:
    rules = prometheus_rule.RULES_FILE.read_text().replace("for: 2m", "for: 3m", 1)
    target = tmp_path / "prometheusrule.yaml"
    source = tmp_path / "driftloop.yml"
    source.write_text(rules)

    prometheus_rule.write(source, target)

    assert target.read_text() != prometheus_rule.PROMETHEUS_RULE.read_text()
    assert yaml.safe_load(target.read_text())["spec"]["groups"] == yaml.safe_load(rules)["groups"]
    with pytest.raises(ValueError, match="groups"):
        prometheus_rule.generate("# no rules\n")


def _relabel(pod: dict, relabelings: list[dict]) -> dict[str, str]:
    """The target labels a PodMonitor's relabelings give a pod (replace actions, as the operator passes them on)."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value for key, value in pod.items()}
    labels: dict[str, str] = {}
    for relabel in relabelings:
        assert relabel.get("action", "replace") == "replace"
        value = ";".join(meta.get(source, "") for source in relabel.get("sourceLabels", []))
        match = re.fullmatch(relabel.get("regex", "(.*)"), value)
        if match:
            labels[relabel["targetLabel"]] = match.expand(relabel.get("replacement", r"\1").replace("$1", r"\1"))
    return labels


def test_pod_monitors_scrape_every_worker_and_triton_labelled_as_the_rules_expect() -> None:
    resources = rendered("overlays/production")
    monitors = of_kind(resources, "PodMonitor")
    rule_jobs = set(re.findall(r'job="([^"]+)"', " ".join(expression for _, expression in rule_expressions())))
    scraped: dict[str, dict[str, str]] = {}

    for workload in workloads(resources):
        labels = pod_labels(workload)
        chosen = [m for m in monitors if selects(m["spec"]["selector"], labels)]
        component = labels["app.kubernetes.io/component"]
        if component not in {*ROLE_COMMANDS, "triton"}:
            assert not chosen, component
            continue
        (monitor,) = chosen
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"]: p["containerPort"] for c in all_containers(workload) for p in c.get("ports", [])}
        assert endpoint["path"] == METRICS_PATH
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert ports[endpoint["port"]] == int(annotations["prometheus.io/port"]), component
        scraped[component] = _relabel(labels, endpoint["relabelings"])

    assert scraped == {
        **{role: {"job": "driftloop-workers", "role": role} for role in ROLE_COMMANDS},
        "triton": {"job": "triton", "role": "triton"},
    }
    assert rule_jobs == {"driftloop-workers", "triton"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_production_uses_the_prometheus_operator_and_every_overlay_keeps_the_annotations(overlay: str) -> None:
    resources = rendered(overlay)
    operator_kinds = {r["kind"] for r in resources} & {"PodMonitor", "PrometheusRule"}

    assert operator_kinds == ({"PodMonitor", "PrometheusRule"} if overlay == "overlays/production" else set())
    for workload in workloads(resources):
        if pod_labels(workload)["app.kubernetes.io/component"] in {*ROLE_COMMANDS, "triton"}:
            assert workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_rules_alert_with_severity_and_summary() -> None:
    alerts = [rule for path in RULES for group in load_yaml(path)["groups"] for rule in group["rules"]]

    assert {a["alert"] for a in alerts} >= {
        "DriftloopWorkerDown",
        "DriftloopInferenceLagHigh",
        "DriftloopDeadLetterRateHigh",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]


# Grafana.


def test_dashboard_covers_what_to_watch() -> None:
    used = {name for _, expression in dashboard_expressions() for name in metric_names(expression)}

    assert {"driftloop_events_total", "driftloop_predictions_total"} <= used  # throughput
    assert "driftloop_batch_seconds_bucket" in used  # latency (read to commit)
    assert "kafka_consumergroup_lag" in used  # consumer lag
    assert "driftloop_dead_letters_total" in used  # DLQ rate
    assert {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"} <= used  # Triton
    assert "driftloop_drift_share" in used and "driftloop_live_accuracy" in used  # drift, live accuracy
    versions = [e for _, e in dashboard_expressions() if "nv_inference_count" in e and "version" in e]
    assert versions, "a panel splits inferences by model version"


def test_every_queried_metric_exists() -> None:
    known = driftloop_metrics() | TRITON_METRICS | KAFKA_EXPORTER_METRICS | PROMETHEUS_METRICS

    for title, expression in dashboard_expressions() + rule_expressions():
        unknown = metric_names(expression) - known
        assert not unknown, f"{title}: unknown metrics {sorted(unknown)} in {expression}"


def test_dashboard_is_provisioned_against_the_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    ids = [panel["id"] for panel in dashboard["panels"]]

    assert dashboard["uid"] == "driftloop-overview"
    assert len(ids) == len(set(ids))
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
    compose_env = load_yaml(DEPLOY / "compose.yaml")["services"]["inference"]["environment"]
    assert compose_env["DRIFTLOOP_MONITORING__GENERATOR_URL"].endswith(f"/d/{dashboard['uid']}")


def test_declared_metrics_match_the_registry() -> None:
    """The source reading agrees with prometheus_client's own view of the default registry, whatever else the test
    session imported before: every module that registers there is imported here."""
    from prometheus_client import REGISTRY

    for name in DEFAULT_REGISTRY_MODULES:
        importlib.import_module(name)

    families = {family.name: family.type for family in REGISTRY.collect() if family.name.startswith("driftloop_")}
    declared = stream_metrics()

    assert families
    for name, kind in families.items():
        expected = {"counter": [name + "_total"], "histogram": [name + "_bucket", name + "_count"]}.get(kind, [name])
        assert set(expected) <= declared, name


def test_metric_name_extraction() -> None:
    expression = (
        'sum by (model, version) (rate(nv_inference_queue_duration_us{model="x"}[5m])) '
        "/ clamp_min(sum(rate(nv_inference_request_success[$__rate_interval])), 1e-9) and up == 0"
    )

    assert metric_names(expression) == {"nv_inference_queue_duration_us", "nv_inference_request_success", "up"}


# The real tools (a missing one fails the test with its install command).


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool(tool), *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_compose_configuration_and_the_rules(tmp_path: Path) -> None:
    # The config names its rule files by their path in the container: check a copy pointing at the repository's.
    config = load_yaml(PROMETHEUS)
    config["rule_files"] = [str(path) for path in RULES]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))

    result = _run("promtool", "check", "config", str(copy))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"driftloop:dashboard_query_{i}", "expr": expression.replace("$__rate_interval", "5m")}
        for i, (_, expression) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = _run("promtool", "check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_configuration() -> None:
    result = _run("amtool", "check-config", str(ALERTMANAGER))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_everything_to_a_defined_receiver() -> None:
    config: dict[str, Any] = load_yaml(ALERTMANAGER)
    receivers = {receiver["name"] for receiver in config["receivers"]}

    assert config["route"]["receiver"] in receivers
    assert all(route["receiver"] in receivers for route in config["route"].get("routes", []))
    assert {"model", "kind"} <= set(config["route"]["group_by"]), "drift alerts group per model and drift kind"
