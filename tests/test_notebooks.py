"""The notebooks stay thin, paired with their .py files, and carry outputs for nbval to compare."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_explore", "02_cache", "03_benchmark", "04_train", "05_evaluate", "06_visualize"]
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_every_stage_has_a_pair():
    present = {p.stem for p in NOTEBOOKS}
    missing = [n for n in EXPECTED if n not in present]
    assert not missing, f"missing notebooks: {missing}"
    for name in EXPECTED:
        assert (NB_DIR / f"{name}.py").is_file(), f"{name}.ipynb has no paired {name}.py"


def _drop_version(text: str) -> str:
    """The header line naming the jupytext version differs between installs; compare without it."""
    return "\n".join(line for line in text.splitlines() if "jupytext_version:" not in line)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_is_the_percent_form_of_the_ipynb(path):
    """The CI gate: `jupytext --to py:percent` of the .ipynb must equal the committed .py."""
    text = _drop_version(jupytext.writes(jupytext.read(path), fmt="py:percent"))
    committed = _drop_version(path.with_suffix(".py").read_text())
    assert text == committed, (f"{path.name} and {path.stem}.py differ: regenerate the .py with "
                               f"`jupytext --to py:percent {path.name}` (or the .ipynb from the .py)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown", "a notebook opens with its narrative"
    assert "parameters" in code[1].metadata.get("tags", []), "the second code cell is the parameters cell"
    assert "TUMORLIB_PRESET" in code[1].source
    for cell in code:
        tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
        defs = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name} defines {defs}: library code belongs in tumorlib"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, \
        f"{path.name} holds too few stored outputs for nbval to compare"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
