"""The Grafana dashboard in deploy/ only charts metrics Tempost (or the Temporal SDK) exports."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.metricnames import metric_names, unknown_names

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json"


def test_every_panel_queries_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["panels"] and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for panel in doc["panels"]:
        for target in panel["targets"]:
            assert metric_names(target["expr"]), panel["title"]
            assert not unknown_names(target["expr"]), f"{panel['title']}: not exported"
