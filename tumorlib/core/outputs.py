"""Outputs that never land on another command's files: folders and files tumorlib made, recognised by name.

- ``folder_kind``: which tumorlib folder a path is (data, slice folder, cache, run, NIfTI data), by its files.
- ``check_output_folder``: an output folder that is a file or another command's folder is refused.
- ``check_output_file``: an output file that is a folder, an input, or a file another command made (a
  run's config, splits, history or checkpoints; a cache's index or ``.npy``; Kaggle slices and
  ``meta_data.csv``) is refused; an earlier output of the same command may be replaced.
- ``reserve_space``: a full disk is found before the work, not after it.

Every error is one line naming the option and the path.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from tumorlib.core.folders import check_not_input
from tumorlib.core.safety import LOCK_NAME, DiskFullError, OutputIsInputError, is_disk_full

__all__ = ["check_output_file", "check_output_folder", "folder_kind", "reserve_space"]

_SLICE_RE = re.compile(r"^volume_\d+_slice_\d+\.h5$")
_CACHE_RE = re.compile(r"^(index\.json|v\d+_(img|mask)\.npy|v\d+_meta\.json)$")
_RUN_FILES = frozenset({"config.json", "splits.json", "history.csv", "training_curves.png"})
_KINDS = {"dataset": "a Kaggle dataset folder", "slices": "a Kaggle slice folder", "cache": "a cache folder",
          "run": "a run folder", "nifti": "a NIfTI data folder"}


def _is_slice_folder(folder: Path) -> bool:
    if (folder / "meta_data.csv").is_file():
        return True
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for k, entry in enumerate(entries):
            if _SLICE_RE.match(entry.name):
                return True
            if k > 2000:  # a large folder of other files: not a slice folder
                break
    return False


def folder_kind(folder: str | os.PathLike) -> str | None:
    """Which tumorlib folder ``folder`` is, judged by the files in it.

    Args:
        folder: any path.

    Returns:
        ``"run"`` (``config.json`` with ``checkpoints/``, ``splits.json`` or ``history.csv``), ``"cache"``
        (``index.json`` or ``v<id>_img.npy``), ``"slices"`` (``volume_<id>_slice_<s>.h5`` or
        ``meta_data.csv``), ``"dataset"`` (a slice folder up to three levels below), ``"nifti"`` (case
        folders with ``*_flair.nii.gz``), or None (missing, a file, empty, or other files only).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / "config.json").is_file() and any((folder / n).exists()
                                                  for n in ("checkpoints", "splits.json", "history.csv")):
        return "run"
    if (folder / "index.json").is_file() or any(folder.glob("v*_img.npy")):
        return "cache"
    if _is_slice_folder(folder):
        return "slices"
    for depth in ("*", "*/*", "*/*/*"):
        if any(folder.glob(f"{depth}/meta_data.csv")) or any(folder.glob(f"{depth}/volume_*_slice_0.h5")):
            return "dataset"
    if any(folder.glob("*_flair.nii*")) or any(folder.glob("*/*_flair.nii*")):
        return "nifti"
    return None


def check_output_folder(folder: str | os.PathLike, kind: str, option: str = "--out") -> Path:
    """Refuse an output folder that is a file or another command's folder.

    Args:
        folder: the folder a command writes (created when missing).
        kind: what the command makes there (``"run"``, ``"cache"``, ``"dataset"``); a folder of that kind
            is accepted (the command's own checks decide on replacing it).
        option: the option that named ``folder``, for the message.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        NotADirectoryError: ``folder`` is a file.
        FileExistsError: ``folder`` is a tumorlib folder of another kind (names it and the kind).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {folder} is a file, not a folder; choose a folder")
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise FileExistsError(f"{option} {folder} is {_KINDS[found]}, not {_KINDS.get(kind, kind)}; writing "
                              f"there would mix with (or replace) its files: choose another folder")
    return folder


def _made_by(path: Path) -> str | None:
    """The kind of folder whose own file ``path`` is (by its name and folder), or None."""
    name, parent = path.name, path.parent
    if name == LOCK_NAME:
        return "tumorlib"
    if name.endswith((".pth", ".pt")):
        return "run"
    if _SLICE_RE.match(name) or (name == "meta_data.csv" and _is_slice_folder(parent)):
        return "slices"
    if _CACHE_RE.match(name) and folder_kind(parent) == "cache":
        return "cache"
    if name in _RUN_FILES and folder_kind(parent) == "run":
        return "run"
    return None


def check_output_file(out_path: str | os.PathLike, input_paths: Iterable[str | os.PathLike] = (),
                      option: str = "--out") -> Path:
    """Refuse an output file that is a folder, an input, or a file another tumorlib command made.

    Args:
        out_path: where a command will write one file.
        input_paths: the files it reads (see ``check_not_input``).
        option: the option that named ``out_path``, for the message.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        IsADirectoryError: ``out_path`` is a folder.
        OutputIsInputError: ``out_path`` is an input or a file tumorlib made (names it).
    """
    out = check_not_input(out_path, input_paths, option)
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out} is a folder; give a file name")
    made = _made_by(out.resolve())
    if made is not None:
        what = "a tumorlib lock file" if made == "tumorlib" else f"a file of {_KINDS[made]}"
        raise OutputIsInputError(f"{option} {out} is {what}; writing it would destroy it: choose another "
                                 "output path")
    return out


def reserve_space(path: str | os.PathLike, nbytes: int = 65536) -> None:
    """Check, before any work, that ``nbytes`` can be written beside ``path`` (a probe file, removed).

    Args:
        path: the output file (its folder must exist).
        nbytes: what the output will need, about.

    Raises:
        DiskFullError: the disk is full (names ``path``); nothing is left behind. Other errors (a
            read-only folder) are left to the real write to report.
    """
    path = Path(path)
    probe = path.with_name(f".tmp-{os.getpid()}-probe.{path.name}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * nbytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
