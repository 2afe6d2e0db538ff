"""scripts/tested-versions.txt (the constraints setup-env.sh installs with) agrees with pyproject.toml:
every direct dependency of the core and its test extra is pinned, inside the range pyproject allows."""

from __future__ import annotations

import pytest
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def pins() -> dict[str, Version]:
    lines = (REPO / "scripts" / "tested-versions.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_every_direct_dependency_is_pinned_inside_its_range() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    requirements = [Requirement(r) for r in declared]
    pinned = pins()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch":  # installed first by setup-env.sh, not constrained (a GPU machine brings its own)
            assert name not in pinned
            continue
        assert name in pinned, f"{name} is not in scripts/tested-versions.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (name, str(pinned[name]))
