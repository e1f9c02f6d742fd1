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


def test_notebook_setup_reads_the_preset_and_makes_the_figures_folder(tmp_path, monkeypatch):
    from tumorlib.app.notebook import notebook_setup

    monkeypatch.setenv("TUMORLIB_PRESET", "ci")
    monkeypatch.setenv("TUMORLIB_OUT", str(tmp_path / "out"))
    preset, config, ws = notebook_setup()
    assert preset == config.preset == "ci"
    assert ws.fig_dir == (tmp_path / "out" / "figures").resolve() and ws.fig_dir.is_dir()
    assert notebook_setup("demo", epochs=3).config.epochs == 3
    with pytest.raises(ValueError, match="unknown preset"):
        notebook_setup("nope")


def test_notebook_tables():
    import numpy as np
    import pandas as pd

    from tumorlib.app.notebook import TRAINING_FIELDS, dice_comparison, preset_table, volume_scores
    from tumorlib.core.config import get_config

    table = preset_table(get_config("ci"))
    assert list(table.columns) == ["ci", "full (reference)"] and list(table.index) == list(TRAINING_FIELDS)
    assert table.loc["patch_size", "ci"] == "(16, 32, 32)" and table.loc["patch_size", "full (reference)"] == "(64, 160, 160)"

    a = pd.DataFrame({"volume": [1, 2], "dice_wt": [0.5, 1.0], "hd95_wt": [3.0, 4.0]})
    b = pd.DataFrame({"volume": [1, 2], "dice_wt": [0.1, 0.2], "hd95_wt": [9.0, 9.0]})
    both = dice_comparison({"U-Net": a, "baseline": b})
    assert list(both.columns) == ["U-Net", "baseline"] and list(both.index) == ["dice_wt"]
    assert both.loc["dice_wt"].tolist() == [0.75, 0.15]

    gt = np.zeros((3, 2, 4, 4), np.uint8)
    gt[0, 0, :2, :2] = 1
    pred = gt.copy()
    pred[0, 1, :2, :2] = 1  # 4 false positives: Dice 8 / 12
    scores = volume_scores(pred, gt)
    assert list(scores.index) == ["necrosis", "edema", "enhancing"]
    assert scores.loc["necrosis"].tolist() == [round(8 / 12, 3), 4, 8]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_written_for_a_student(path):
    """Each notebook opens with what it teaches and what it needs; its code cells hold no loop (library code
    belongs in tumorlib); its prose never hard-codes a preset's training value (``tumor_prob = 0.6``): the
    preset that runs is printed from its config (``recipe_text``, ``preset_table``)."""
    import re

    from tumorlib.app.notebook import TRAINING_FIELDS

    nb = nbformat.read(path, as_version=4)
    opening = nb.cells[0].source
    assert "**You learn**" in opening and "**You need**" in opening, f"{path.name}: say what it teaches and needs"
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!"))))
            loops = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While, ast.AsyncFor))]
            assert not loops, f"{path.name}: a {loops[0]} loop in a code cell belongs in tumorlib"
        else:
            quoted = re.findall(rf"`(?:{'|'.join(TRAINING_FIELDS)})\s*=\s*[\d(]", cell.source)
            assert not quoted, f"{path.name}: prose quotes {quoted}; print the running preset's value instead"


@pytest.mark.parametrize("preset", ["ci", "demo", "full"])
def test_recipe_text_describes_the_preset_that_runs(preset):
    from tumorlib.app.notebook import recipe_text
    from tumorlib.core.config import get_config

    config = get_config(preset)
    text = recipe_text(config)
    assert f"`{preset}`" in text and f"{config.tumor_prob:.0%}" in text
    assert ("focal BCE" in text) == bool(config.focal_gamma) and ("plain BCE" in text) != bool(config.focal_gamma)
    assert " / ".join(f"{v:g}" for v in config.class_weights) in text
    assert f"{config.epochs} epochs" in text and f"{config.lr:g}" in text
