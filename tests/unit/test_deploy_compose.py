"""The compose stack is valid by the compose specification's schema and every file it mounts exists."""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from domain.config import load_config
from domain.durations import parse_duration

ROOT = Path(__file__).parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"


def _schema() -> dict:
    # The compose-spec project's schema (Apache-2.0), as vendored by check-jsonschema (dev extras).
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification() -> None:
    assert _errors(_compose()) == []


def test_the_schema_check_finds_a_fault() -> None:
    doc = copy.deepcopy(_compose())
    doc["services"]["worker"]["stop_grace_period"] = {"seconds": 30}
    doc["services"]["api"]["restart"] = ["always"]
    assert len(_errors(doc)) >= 2


def _mounted_sources(doc: dict) -> list[str]:
    sources = []
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                sources.append(source)
        build = service.get("build")
        if isinstance(build, dict):
            sources.append(build["context"])
            sources.append(str(Path(build["context"]) / build["dockerfile"]))
    for section in ("configs", "secrets"):
        sources += [item["file"] for item in doc.get(section, {}).values() if "file" in item]
    return sources


def test_every_mounted_file_exists() -> None:
    sources = _mounted_sources(_compose())
    assert len(sources) >= 10
    for source in sources:
        assert (COMPOSE_DIR / source).exists(), source


def test_secrets_are_placeholders() -> None:
    for secret in _compose()["secrets"].values():
        assert (COMPOSE_DIR / secret["file"]).read_text().startswith("CHANGE-ME"), secret["file"]


def test_workers_scale_and_drain() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    # `docker compose up --scale worker=N` needs a worker without published ports.
    assert "ports" not in worker
    config = load_config(COMPOSE_DIR / "tempost.toml")
    stop = parse_duration(worker["stop_grace_period"])
    assert stop > config.worker.shutdown_grace
    # Prometheus scrapes the metrics addresses the configuration listens on.
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    ports = {
        c["job_name"]: c["dns_sd_configs"][0]["port"]
        for c in prometheus["scrape_configs"]
        if "dns_sd_configs" in c
    }
    assert ports["tempost-worker"] == int(config.worker.metrics_listen.rpartition(":")[2])
    assert ports["tempost-worker-sdk"] == int(config.worker.sdk_metrics_listen.rpartition(":")[2])
    assert ports["tempost-api"] == int(config.api.listen.rpartition(":")[2])


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_tempost_services_read_their_config_and_secrets(service: str) -> None:
    doc = _compose()
    svc = doc["services"][service]
    config = load_config(COMPOSE_DIR / "tempost.toml")
    mounted = {f"/run/secrets/{s}" for s in svc["secrets"]}
    needed = {config.database.password_file, config.api.admin_token_file}
    needed |= {a.password_file for a in config.accounts if a.password_file}
    needed |= {sel.private_key_file for _, dkim in config.dkim_domains() for sel in dkim.selectors.values()}
    assert needed <= mounted
    assert svc["environment"]["TEMPOST_CONFIG"] == svc["configs"][0]["target"]
    # Images pinned by version everywhere.
    for other in doc["services"].values():
        assert re.search(r":[0-9v][\w.\-]*$", other["image"]), other["image"]
