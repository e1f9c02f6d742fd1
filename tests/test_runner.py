from __future__ import annotations

import nbformat
import pytest

from tumorlib.app.notebook_runner import find_notebooks, run_notebooks


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_numbered_notebooks_in_order(tmp_path, capfd):
    src = tmp_path / "nbs"
    src.mkdir()
    _notebook(src / "02_second.ipynb", "print(6 * 7)")
    _notebook(src / "01_first.ipynb", "import os; print(os.path.basename(os.getcwd()))")
    _notebook(src / "scratch.ipynb", "raise SystemExit")
    assert [p.name for p in find_notebooks(src)] == ["01_first.ipynb", "02_second.ipynb"]
    written = run_notebooks(src, tmp_path / "out", timeout=120, quiet=True)
    assert [p.name for p in written] == ["01_first.ipynb", "02_second.ipynb"]
    first = nbformat.read(written[0], as_version=4)
    assert first.cells[0].outputs[0]["text"].strip() == "nbs"  # runs in the notebook's folder
    second = nbformat.read(written[1], as_version=4)
    assert second.cells[0].outputs[0]["text"].strip() == "42"
    out, err = capfd.readouterr()
    assert "without encryption" not in out + err  # local IPC sockets, not TCP


def test_failing_cell_raises_and_keeps_partial(tmp_path):
    from nbclient.exceptions import CellExecutionError

    _notebook(tmp_path / "01_bad.ipynb", "1 / 0")
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        run_notebooks(tmp_path, tmp_path / "out", timeout=120, quiet=True)
    assert (tmp_path / "out" / "01_bad.ipynb").is_file()


def test_no_notebooks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        find_notebooks(tmp_path)
