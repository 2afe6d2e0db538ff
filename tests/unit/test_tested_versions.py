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


def test_the_latest_versions_record_says_when_and_how_it_went() -> None:
    """scripts/latest-versions.txt, written by scripts/test-latest.sh: the date, the fast lane's counts,
    and every version it installed inside the ranges pyproject.toml allows (it installs nothing else)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    record = REPO / "scripts" / "latest-versions.txt"
    if not record.is_file():
        pytest.skip("scripts/test-latest.sh has not been run in this checkout")
    lines = record.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any(line.startswith("# date: ") for line in header)
    assert any(line.startswith("# pytest ") and " passed, " in line for line in header)
    pinned = {
        canonicalize_name(name): Version(version)
        for name, version in (line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["dependencies"] + project["optional-dependencies"]["test"]):
        name = canonicalize_name(requirement.name)
        if name in pinned:
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"{name} {pinned[name]} is outside {requirement.specifier}: run scripts/test-latest.sh again"
            )
