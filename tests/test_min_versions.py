"""The declared minimum versions in pyproject.toml are ones the code runs on.

CI proves the core floors by running the Memory tests on exactly those versions (a venv of
their own, see ``.ci/run``); this file pins what was found when the floors were last
determined, so that no floor drops below a release the code is known to fail on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

KNOWN_BAD = {
    # package: (newest release the code fails on, why)
    "trio": ("0.26.2", "CancelScope.relative_deadline (job_timeout) arrived in trio 0.27.0"),
    "attrs": ("23.1.0", "trio 0.27.0 requires attrs >= 23.2.0"),
    "redis": ("5.0.0", "its asyncio client leaks a ResourceWarning per connection"),
    "hiredis": ("2.1.1", "hiredis.pack_command (the trio-native client) arrived in 2.2.1"),
    "anyio": ("4.0.0", "calls trio.to_thread.run_sync(cancellable=...), gone from trio 0.27"),
}  # fmt: skip


def _requirements() -> list[Requirement]:
    specs = list(PROJECT["dependencies"])
    for extra, deps in PROJECT["optional-dependencies"].items():
        if extra != "dev":
            specs += deps
    return [Requirement(spec) for spec in specs]


def _floor(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{requirement}: expected exactly one >= floor"
    return floors[0]


def test_every_dependency_has_an_exact_floor() -> None:
    """Every runtime dependency (core and extras) declares one `>=X.Y.Z` floor, which CI's
    floor step can turn into an exact pin; the test tools too."""
    for requirement in _requirements():
        floor = _floor(requirement)
        assert len(floor.release) == 3, f"{requirement}: write the floor as X.Y.Z"
    for spec in PROJECT["optional-dependencies"]["dev"]:
        if spec.startswith(("pytest", "hypothesis")):
            assert re.fullmatch(r"[\w-]+>=\d+\.\d+\.\d+", spec), spec


def test_no_floor_admits_a_release_the_code_fails_on() -> None:
    """trio >= 0.27.0, attrs >= 23.2.0, redis >= 5.0.1, hiredis >= 2.2.1, anyio >= 4.1.0:
    each floor is above the newest release that was seen to fail (see pyproject.toml)."""
    floors = {r.name: _floor(r) for r in _requirements()}
    for package, (bad, why) in KNOWN_BAD.items():
        assert package in floors, package
        assert floors[package] > Version(bad), f"{package} {floors[package]}: {why}"


def test_ci_checks_the_core_floors() -> None:
    """.ci/run builds a venv with the core dependencies at their floors and runs the
    Memory tests in it."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in script and '["dependencies"]' in script
    assert "tests/test_queue_memory.py" in script and "memory" in script
