"""The install is what the docs say: pyproject's lower bounds are the releases `make
test-compat` installs, and the lock pins every dependency inside pyproject's ranges."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {r.name.lower(): r for r in found}


def _pins(text: str) -> dict[str, Version]:
    return {m[1].lower().replace("_", "-"): Version(m[2]) for m in re.finditer(r"([A-Za-z0-9_.-]+)==(\S+)", text)}


def test_every_lower_bound_is_a_release_test_compat_installs():
    makefile = (ROOT / "Makefile").read_text()
    floors_text = re.search(r"^FLOORS = (.*?)(?<!\\)\n", makefile, re.S | re.M)[1]
    floors = _pins(floors_text)
    for name, req in _requirements().items():
        if name in ("pytest", "hypothesis", "ruff"):
            continue  # test tools: the lock's versions, not floors
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower, f"{name}: pyproject gives no lower bound"
        assert name in floors, f"{name}: not in the Makefile's FLOORS"
        assert floors[name] == lower[0], f"{name}: pyproject's lower bound {lower[0]}, FLOORS {floors[name]}"


def test_the_lock_pins_every_dependency_inside_its_range():
    pins = _pins((ROOT / "requirements-lock.txt").read_text())
    for name, req in _requirements().items():
        assert name in pins, f"{name}: not pinned in requirements-lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
    assert str(pins["torch"]).endswith("+cpu")  # the CPU build on disk, not a CUDA download
