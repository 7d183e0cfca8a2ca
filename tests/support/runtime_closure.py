"""The installed distributions Tempost needs at run time (its dependencies and theirs, no dev extras).

`python -m tests.support.runtime_closure > deploy/requirements.lock` writes the container image's pinned
requirements from the current virtualenv; tests/unit/test_deploy_image.py checks the file against it.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

HEADER = """\
# Tempost's runtime dependencies, pinned: the closure of pyproject.toml's [project] dependencies as
# installed when this was written, without the dev extras. The container image installs exactly these
# (deploy/Containerfile). Regenerate after changing dependencies:
#     python -m tests.support.runtime_closure > deploy/requirements.lock
"""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = "tempost") -> dict[str, str]:
    """Installed version of every distribution `root` needs at run time, by normalized name."""
    found: dict[str, str] = {}

    def walk(name: str, extras: frozenset[str]) -> None:
        dist = distribution(name)
        found[normalize(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            # A requirement applies without extras, or through an extra its parent was asked for.
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            if normalize(req.name) in found:
                continue
            try:
                walk(req.name, frozenset(req.extras))
            except PackageNotFoundError:
                continue  # an optional dependency of another platform

    walk(root, frozenset())
    del found[normalize(root)]
    return dict(sorted(found.items()))


if __name__ == "__main__":
    print(HEADER, end="")
    for name, version in runtime_closure().items():
        print(f"{name}=={version}")
