"""environment.yml (for conda users) and pyproject.toml must name the same packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _environment_packages() -> tuple[set[str], set[str], list[str]]:
    conda, pip, lines = set(), set(), (ROOT / "environment.yml").read_text().splitlines()
    in_pip = in_deps = False
    for line in lines:
        stripped = line.strip()
        if not line.startswith(" ") and stripped.endswith(":"):
            in_deps = stripped == "dependencies:"
            continue
        if not in_deps:
            continue
        if stripped.startswith("- pip:"):
            in_pip = True
            continue
        if not stripped.startswith("- "):
            continue
        item = stripped[2:].strip()
        indent = len(line) - len(line.lstrip())
        if in_pip and indent >= 6:
            pip.add(item)
        else:
            in_pip = False
            conda.add(item)
    return conda, pip, lines


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    conda, pip, _ = _environment_packages()
    have = {CONDA_TO_PYPI.get(_name(p), _name(p)) for p in conda if not p.startswith("python")}
    have |= {_name(p) for p in pip if not p.startswith("-e")}
    have.discard("pip")
    assert wanted == have, f"only in pyproject: {sorted(wanted - have)}; only in environment.yml: {sorted(have - wanted)}"


def test_environment_pins_python_and_installs_package():
    conda, pip, _ = _environment_packages()
    assert "python=3.11" in conda
    assert "-e ." in pip


def test_lower_bounds_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    bounds = {_name(r): r[len(_name(r)):].strip() for r in reqs}
    conda, pip, _ = _environment_packages()
    for item in conda | pip:
        name = CONDA_TO_PYPI.get(_name(item), _name(item))
        if name in bounds:
            assert item[len(_name(item)):].strip() == bounds[name], f"{item} vs {name}{bounds[name]}"
