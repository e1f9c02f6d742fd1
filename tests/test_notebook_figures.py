"""tumorlib figures are stored as PNG images by an executed notebook that never imports pyplot."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

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
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["execute_result"], outputs
    png = base64.b64decode(outputs[0].data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs[0].data["text/plain"].startswith("<Figure size ")  # the text form nbval compares
