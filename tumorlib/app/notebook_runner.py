"""Execute the numbered notebooks headless and collect them with their figures in one folder."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["find_notebooks", "kernel_manager", "run_notebooks"]


def find_notebooks(notebook_dir: str | os.PathLike) -> list[Path]:
    """The ``NN_name.ipynb`` notebooks of a folder in their numbered order.

    Raises:
        FileNotFoundError: the folder holds no numbered notebooks.
    """
    folder = Path(notebook_dir)
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    return found


def kernel_manager(kernel_name: str, folder: Path) -> Any:
    """A kernel manager over local IPC sockets in ``folder`` (POSIX), None elsewhere (nbclient's TCP default).

    Over IPC the kernel does not warn "Kernel is running over TCP without encryption", and nothing
    listens on a network port.
    """
    if os.name != "posix":
        return None
    from jupyter_client import KernelManager

    return KernelManager(kernel_name=kernel_name, transport="ipc", connection_file=str(folder / "kernel.json"))


def run_notebooks(notebook_dir: str | os.PathLike, out_dir: str | os.PathLike, timeout: int = 1800,
                  only: list[str] | None = None, quiet: bool = False) -> list[Path]:
    """Run each notebook top to bottom in a fresh kernel and save the executed copies.

    The notebooks read ``TUMORLIB_PRESET`` and ``TUMORLIB_OUT`` from the environment, so their data,
    cache, run and figures land under the output folder too; the figures are copied to
    ``out_dir/figures`` by the notebooks themselves through the workspace.

    Args:
        notebook_dir: folder with ``01_explore.ipynb`` ... ``06_visualize.ipynb``.
        out_dir: where the executed notebooks are written.
        timeout: seconds allowed per cell (0: no limit).
        only: notebook name prefixes to run (e.g. ``["01", "02"]``); None runs all.
        quiet: print nothing.

    Returns:
        The executed notebook paths.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the partial notebook is still saved).
        ValueError: ``only`` matches no notebook.
    """
    import nbformat
    from nbclient import NotebookClient

    from tumorlib.core.outputs import check_output_file
    from tumorlib.core.safety import atomic_open

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = find_notebooks(notebook_dir)
    if only:
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in only)]
        if not notebooks:
            raise ValueError(f"--only {' '.join(only)}: no notebook in {notebook_dir} starts with that "
                             f"(have: {', '.join(p.name[:2] for p in find_notebooks(notebook_dir))})")
    for path in notebooks:  # before any runs: never a notebook tumorlib did not write (the one guard)
        check_output_file(out_dir / path.name, writer="notebooks")
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        sockets = Path(tempfile.mkdtemp(prefix="tumorlib-kernel-"))  # short: socket paths are limited
        client = NotebookClient(nb, timeout=timeout or None, kernel_name="python3",  # 0: no per-cell limit
                                km=kernel_manager("python3", sockets),
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        start = time.perf_counter()
        target = out_dir / path.name
        try:
            client.execute(cleanup_kc=True)  # a client given its kernel manager leaves the kernel running
        finally:
            with atomic_open(target, "w", writer="notebooks") as f:  # a partly written notebook never replaces the last one
                nbformat.write(nb, f)
            shutil.rmtree(sockets, ignore_errors=True)
        written.append(target)
        if not quiet:
            print(f"{path.name}: {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return written
