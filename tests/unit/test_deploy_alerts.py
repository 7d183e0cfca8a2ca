"""The Prometheus alert rules only read series Tempost, the Temporal SDK or Prometheus itself export."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.metricnames import metric_names, unknown_names

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_rule_reads_exported_metrics() -> None:
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert metric_names(rule["expr"]), rule["alert"]
        assert not unknown_names(rule["expr"]), f"{rule['alert']}: {unknown_names(rule['expr'])} not exported"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]


def test_the_check_catches_a_misspelt_metric() -> None:
    assert unknown_names("max(tempost_queue_oldest_second) > 1") == {"tempost_queue_oldest_second"}
    assert unknown_names("rate(temporal_activity_schedule_to_start_latency_seconds_bucket[5m])")
    assert not unknown_names('sum(up{job="tempost-worker"}) == 0')


def test_the_issue_s_alerts_are_there() -> None:
    exprs = " ".join(r["expr"] for r in _rules())
    for metric in (
        "tempost_queue_oldest_seconds",
        "tempost_queue_delivery_duration_seconds_count",
        "tempost_webhook_oldest_seconds",
        "tempost_webhook_results_total",
        "tempost_queue_lost_workflows_recovered_total",
        "tempost_queue_workflow_start_errors_total",
    ):
        assert metric in exprs, metric
    assert 'up{job="tempost-worker"}' in exprs


def test_job_labels_are_scrape_jobs_and_rules_are_loaded() -> None:
    prometheus = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    jobs = {c["job_name"] for c in prometheus["scrape_configs"]}
    for rule in _rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']}: no scrape job {job!r}"
    assert "/etc/prometheus/alerts.yaml" in prometheus["rule_files"]


def test_every_alert_is_explained_in_the_operations_guide() -> None:
    guide = OPERATIONS.read_text()
    for rule in _rules():
        assert f"`{rule['alert']}`" in guide, rule["alert"]
