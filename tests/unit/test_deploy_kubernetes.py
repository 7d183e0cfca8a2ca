"""The Kubernetes manifests validate against the Kubernetes schemas, offline, and keep their promises."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from domain.config import Config
from domain.durations import parse_duration

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
VERSION = "1.33.0"


def _documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_strictly(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_validation_rejects_a_fault() -> None:
    doc = copy.deepcopy(_kind("Deployment", "tempost-worker"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def _config() -> Config:
    raw = tomllib.loads(_kind("ConfigMap", "tempost-config")["data"]["tempost.toml"])
    return Config.model_validate(raw)


def test_worker_outlives_its_shutdown_grace_and_scales() -> None:
    worker = _kind("Deployment", "tempost-worker")["spec"]["template"]["spec"]
    grace = _config().worker.shutdown_grace.total_seconds()
    assert worker["terminationGracePeriodSeconds"] > grace + 10
    hpa = _kind("HorizontalPodAutoscaler", "tempost-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tempost-worker"
    assert parse_duration("15s").total_seconds() == 15  # the unit the grace is read in


def test_api_probes_and_service() -> None:
    api = _kind("Deployment", "tempost-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert int(_config().api.listen.rpartition(":")[2]) == api["ports"][0]["containerPort"]
    service = _kind("Service", "tempost-api")
    assert (
        service["spec"]["selector"] == _kind("Deployment", "tempost-api")["spec"]["selector"]["matchLabels"]
    )


def test_every_workload_is_disruption_budgeted_non_root_and_reads_its_files() -> None:
    config = _config()
    for name in ("tempost-api", "tempost-worker"):
        pdb = _kind("PodDisruptionBudget", name)
        deployment = _kind("Deployment", name)
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    for kind, name in (
        ("Deployment", "tempost-api"),
        ("Deployment", "tempost-worker"),
        ("Job", "tempost-migrate"),
    ):
        pod = _kind(kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert str(Path(env["TEMPOST_CONFIG"]).parent) in mounts
        for path in (config.database.password_file, config.api.admin_token_file):
            assert str(Path(path).parent) in mounts, path
        secret_keys = set(_kind("Secret", "tempost-secrets")["stringData"])
        assert Path(config.database.password_file).name in secret_keys
        keys = [sel.private_key_file for _, dkim in config.dkim_domains() for sel in dkim.selectors.values()]
        assert keys and all(Path(k).name in secret_keys for k in keys)
