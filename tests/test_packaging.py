"""The supported range of each dependency: its floor is tested (tests/oldest-supported.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parent.parent
#: every dependency's floor is pinned, torch's too (2.11.0 at the oldest end; the newest end
#: takes what a fresh install resolves)
NOT_PINNED: set[str] = set()
#: the dev extra's tools: any recent release will do
TOOLS = {"pytest", "hypothesis", "ruff", "mypy", "selenium", "matplotlib", "packaging"}


def _floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    floors: dict[str, Version] = {}
    for text in requirements:
        req = Requirement(text)
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower, f"{text}: give every dependency a lower bound (>=) that tests/oldest-supported.txt pins"
        floors[req.name] = max(lower)
    return floors


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "tests" / "oldest-supported.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = Version(spec.version)
    return pins


def test_every_floor_is_the_release_the_oldest_environment_pins():
    floors, pins = _floors(), _pins()
    expected = set(floors) - NOT_PINNED - TOOLS
    assert set(pins) == expected, "pin exactly the dependencies' floors in tests/oldest-supported.txt"
    for name, pin in pins.items():
        # the pin is the floor itself, or its first post-release (fvcore publishes only those)
        assert Version(pin.base_version) == floors[name], (name, str(pin), str(floors[name]))
