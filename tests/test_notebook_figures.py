"""tumorlib figures are stored as PNG images by an executed notebook that never imports pyplot."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tumorlib.app.notebook_runner import kernel_manager
from tumorlib.viz.figures import plot_class_fractions
from tumorlib.viz.notebook_figure import NotebookFigure


def test_repr_png_is_a_png():
    fig = plot_class_fractions({"volume": [1, 2], "necrosis": [0.01, 0.02], "edema": [0.1, 0.2],
                                "enhancing": [0.01, 0.03]})
    assert isinstance(fig, NotebookFigure)
    data = fig._repr_png_()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.mark.slow
def test_executed_notebook_stores_png(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import sys\n"
        "from tumorlib import viz\n"
        "fig = viz.plot_class_fractions({'volume': [1, 2], 'necrosis': [0.01, 0.02], 'edema': [0.1, 0.2],\n"
        "                                'enhancing': [0.01, 0.03]})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "fig")]
    env_backend = os.environ.pop("MPLBACKEND", None)
    try:
        sockets = Path(tempfile.mkdtemp(prefix="tumorlib-kernel-"))  # IPC: no "running over TCP" warning
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", km=kernel_manager("python3", sockets),
                                resources={"metadata": {"path": str(tmp_path)}}).execute(cleanup_kc=True)
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["execute_result"], outputs
    png = base64.b64decode(outputs[0].data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs[0].data["text/plain"].startswith("<Figure size ")  # the text form nbval compares


@pytest.mark.parametrize("text, expected", [
    ("data folder: /home/ci/work/tumorlib/.tumorlib/test/data/synthetic_8x24x48x48_seed0",
     "data folder: <TUMORLIB_HOME>/data/synthetic_8x24x48x48_seed0"),
    ("cache in /root/.cache/tumorlib/outputs/ci/cache", "cache in <TUMORLIB_HOME>/outputs/ci/cache"),
    ("run: /kaggle/working/tumorlib/outputs/gpu16/run", "run: <TUMORLIB_HOME>/outputs/gpu16/run"),
    ("saved to /home/me/tumorlib/outputs/demo/figures/a.png", "saved to <TUMORLIB_OUT>/figures/a.png"),
    ("wrote /tmp/pytest-of-root/pytest-3/x0/seg.nii.gz (ok)", "wrote <TMP> (ok)"),
    ("at /var/folders/ab/cd_ef/T/tmpx1/run", "at <TMP>"),
    (r"in C:\Users\Ann\AppData\Local\Temp\tmp12\run", "in <TMP>"),
    ("<Foo object at 0x7f3a2b4c5d60>", "<Foo object at 0xADDRESS>"),
    ("Dice 0.8123, 12 volumes", "Dice 0.8123, 12 volumes"),
])
def test_sanitize_file_masks_machine_specific_text(text, expected):
    import re
    from pathlib import Path

    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((Path(__file__).parent / "nbval_sanitize.cfg").read_text())
    assert len(patterns) == 6
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    assert text == expected
