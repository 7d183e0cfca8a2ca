"""The Grafana dashboard in deploy/ only charts metrics Tempost (or the Temporal SDK) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import activities.metrics  # noqa: F401 - registers the delivery metrics
import activities.suppressing  # noqa: F401
import activities.webhooks  # noqa: F401
import api.metrics  # noqa: F401
import worker.sweeper  # noqa: F401 - registers the lost-workflow counter

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json"


def test_every_panel_queries_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exported = {m.name for m in REGISTRY.collect()}
    # A histogram or counter is exported under its base name; queries use the _bucket/_count/_total forms.
    assert doc["panels"] and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for panel in doc["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\b((?:tempost|temporal)_[a-z0-9_]+)", target["expr"]))
            assert names, panel["title"]
            for name in names:
                if name.startswith("temporal_"):
                    continue  # the SDK's own, from worker.sdk_metrics_listen
                base = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert base in exported, f"{panel['title']}: {name} is not exported"
