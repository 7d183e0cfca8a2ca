"""Which metric names a PromQL expression may use: Tempost's own, the Temporal SDK's, Prometheus's `up`.

The Grafana dashboard and the alert rules are checked with it, so neither charts or alerts on a series no
process exports (a typo or a renamed metric would otherwise show as an empty panel or a silent alert).
"""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

import activities.metrics  # noqa: F401 - registers the delivery metrics
import activities.suppressing  # noqa: F401
import activities.webhooks  # noqa: F401
import api.metrics  # noqa: F401
import worker.sweeper  # noqa: F401 - registers the lost-workflow counter

# The Temporal SDK's metrics a Tempost worker exports on worker.sdk_metrics_listen (durations in seconds),
# as scraped from a worker that ran a delivery; tests/integration/test_metrics.py checks they still are.
SDK_METRICS = frozenset(
    {
        "temporal_activity_execution_latency",
        "temporal_activity_schedule_to_start_latency",
        "temporal_activity_succeed_endtoend_latency",
        "temporal_activity_task_received",
        "temporal_long_request",
        "temporal_long_request_latency",
        "temporal_num_pollers",
        "temporal_request",
        "temporal_request_latency",
        "temporal_sticky_cache_hit",
        "temporal_sticky_cache_size",
        "temporal_worker_start",
        "temporal_worker_task_slots_available",
        "temporal_worker_task_slots_used",
        "temporal_workflow_completed",
        "temporal_workflow_endtoend_latency",
        "temporal_workflow_task_execution_latency",
        "temporal_workflow_task_queue_poll_succeed",
        "temporal_workflow_task_replay_latency",
        "temporal_workflow_task_schedule_to_start_latency",
    }
)
# Series Prometheus itself makes for every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})

_SUFFIX = re.compile(r"_(bucket|count|sum|total)$")


def exported_names() -> set[str]:
    """Base names of Tempost's own metrics (counters and histograms without their series suffixes)."""
    return {m.name for m in REGISTRY.collect()}


def metric_names(expr: str) -> set[str]:
    """The Tempost, Temporal SDK and Prometheus series names an expression reads."""
    names = set(re.findall(r"\b((?:tempost|temporal)_[a-z0-9_]+)", expr))
    names |= {n for n in PROMETHEUS_SERIES if re.search(rf"\b{n}\s*\{{", expr)}
    return names


def unknown_names(expr: str) -> set[str]:
    """Names in the expression no process exports; empty when every one is real."""
    tempost = exported_names()
    unknown = set()
    for name in metric_names(expr):
        if name in PROMETHEUS_SERIES:
            continue
        if name.startswith("temporal_"):
            # Counters keep their name (no _total) in the SDK's exporter; histograms have the suffixes.
            if name not in SDK_METRICS and _SUFFIX.sub("", name) not in SDK_METRICS:
                unknown.add(name)
        elif _SUFFIX.sub("", name) not in tempost and name not in tempost:
            unknown.add(name)
    return unknown
