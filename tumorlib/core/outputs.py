"""Outputs that never land on another command's files: one guard every output path goes through.

- ``guard_output``: the one check of a path a command will write (a file or a folder), before anything is
  written. It refuses a path that is, holds or lies inside something tumorlib reads or another command made
  (Kaggle slices and ``meta_data.csv``, NIfTI cases, a cache's index and arrays, a run's config, splits,
  history, checkpoints and post-processing file, an export), and an existing file tumorlib did not write.
  Symlinks, hard links and ``..`` are judged by what they reach. ``tumorlib.app.arguments.add_output_arg``
  declares an option as an output and ``tumorlib.app.cli`` calls this guard on each one.
- ``record_written``/``written_by``: the record tumorlib keeps of the files it wrote, one
  ``.tumorlib-outputs.json`` per folder (writer, size, time); an existing file is replaced only while it is
  still what that record says, and only by the command that wrote it. ``atomic_write(..., writer=...)``
  records as it writes.
- ``record_folder``/``folder_record_problem``: the same for a folder written whole (``synth``):
  ``--overwrite`` replaces it only while it holds exactly what was recorded.
- ``folder_kind``: which tumorlib folder a path is (data, slice folder, cache, run, NIfTI data), by its files.
- ``check_output_folder``/``check_output_file``: the guard for library callers (the same rules).
- ``reserve_space``: a full disk is found before the work, not after it.

Every error is one line naming the option and the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tumorlib.core.folders import check_not_input
from tumorlib.core.safety import (OUTPUT_RECORD, LOCK_NAME, DiskFullError, OutputIsInputError, atomic_write,
                                  folder_record_problem, is_disk_full, record_folder, record_written, written_by)

__all__ = ["OUTPUT_RECORD", "check_output_file", "check_output_folder", "folder_kind", "folder_record_problem",
           "guard_output", "record_folder", "record_written", "reserve_space", "written_by"]

_SLICE_RE = re.compile(r"^volume_\d+_slice_\d+\.h5$")
_CACHE_RE = re.compile(r"^(index\.json|v\d+_(img|mask)\.npy|v\d+_meta\.json)$")
_CACHE_ARRAY_RE = re.compile(r"^v\d+_img\.npy$")
#: A modality file that makes a folder a NIfTI case: BraTS 2020/2021 ``*_flair``, BraTS 2023+ ``*-t2f``.
_FLAIR_RE = re.compile(r"(_flair|-t2f)\.nii(\.gz)?$", re.I)
#: The folders of a Medical Segmentation Decathlon set (beside its ``dataset.json``).
_MSD_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")
_RUN_FILES = frozenset({"config.json", "splits.json", "history.csv", "training_curves.png", "postprocessing.json"})
_KINDS = {"dataset": "a Kaggle dataset folder", "slices": "a Kaggle slice folder", "cache": "a cache folder",
          "run": "a run folder", "nifti": "a NIfTI data folder", "nifti-case": "a NIfTI case folder",
          "checkpoints": "a run's checkpoints folder", "export": "an export folder"}
#: Folders nothing may be written into by another command (a run folder takes evaluate's and report's files).
_SEALED = frozenset({"slices", "cache", "nifti-case", "checkpoints", "export"})
_SCAN_LIMIT = 2000


def _is_slice_folder(folder: Path) -> bool:
    return _mark(folder) == "slices"


def _mark(folder: Path) -> str | None:
    """The kind a folder is by its own files, looked at once (at most ``_SCAN_LIMIT`` entries), or None."""
    try:
        if (folder / "config.json").is_file() and any((folder / n).exists()
                                                      for n in ("checkpoints", "splits.json", "history.csv")):
            return "run"
        if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
            return "checkpoints"
        if (folder / "contract.json").is_file() and _is_export(folder / "contract.json"):
            return "export"
        if (folder / "index.json").is_file():
            return "cache"
        if (folder / "meta_data.csv").is_file():
            return "slices"
        if folder.name in _MSD_FOLDERS and (folder.parent / "dataset.json").is_file():
            return "nifti-case"  # an MSD set's images or labels: every file in it is data
        with os.scandir(folder) as entries:
            for k, entry in enumerate(entries):
                if _SLICE_RE.match(entry.name):
                    return "slices"
                if _CACHE_ARRAY_RE.match(entry.name):
                    return "cache"
                if _FLAIR_RE.search(entry.name):
                    return "nifti-case"
                if k > _SCAN_LIMIT:  # a large folder of other files: none of these
                    break
    except OSError:
        return None
    return None


def _is_export(contract: Path) -> bool:
    try:
        data = json.loads(contract.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("written_by", "")).startswith("tumorlib")


def folder_kind(folder: str | os.PathLike) -> str | None:
    """Which tumorlib folder ``folder`` is, judged by the files in it.

    Args:
        folder: any path.

    Returns:
        ``"run"`` (``config.json`` with ``checkpoints/``, ``splits.json`` or ``history.csv``),
        ``"checkpoints"`` (a run's), ``"export"`` (tumorlib's ``contract.json``), ``"cache"``
        (``index.json`` or ``v<id>_img.npy``), ``"slices"`` (``volume_<id>_slice_<s>.h5`` or
        ``meta_data.csv``), ``"nifti-case"`` (a ``*_flair.nii.gz`` or ``*-t2f.nii.gz`` in it, or an MSD set's
        ``imagesTr``/``labelsTr``/``imagesTs``), ``"dataset"`` (a slice folder up to three levels below),
        ``"nifti"`` (case folders of such files, or an MSD ``dataset.json`` with its folders), or None (missing,
        a file, empty, or other files only).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = _mark(folder)
    if found is not None:
        return found
    for depth in ("*", "*/*", "*/*/*"):
        if any(folder.glob(f"{depth}/meta_data.csv")) or any(folder.glob(f"{depth}/volume_*_slice_0.h5")):
            return "dataset"
    if (folder / "dataset.json").is_file() and any((folder / n).is_dir() for n in _MSD_FOLDERS):
        return "nifti"
    if any(_FLAIR_RE.search(p.name) for p in folder.glob("*/*.nii*")):
        return "nifti"
    return None


# ---------------------------------------------------------------- the guard


def _protected_file(path: Path) -> str | None:
    """What ``path`` (resolved) is when it is a file tumorlib reads or another command made, else None."""
    name, parent = path.name, path.parent
    if name == LOCK_NAME:
        return "a tumorlib lock file"
    if name == OUTPUT_RECORD:
        return "tumorlib's record of the files it wrote"
    if name.endswith((".pth", ".pt")):
        return "a checkpoint of a run"
    if _SLICE_RE.match(name):
        return "a file of a Kaggle slice folder"
    kind = _mark(parent)
    if kind == "nifti-case" and name.endswith((".nii", ".nii.gz")):
        return f"an input file (of the NIfTI case folder {parent})"
    if kind in _SEALED:
        return f"a file of {_KINDS[kind]} ({parent})"
    if kind == "run" and name in _RUN_FILES:
        return f"a file of {_KINDS['run']} ({parent})"
    return None


def _sealed_above(path: Path) -> tuple[str, Path] | None:
    """The nearest folder at or above ``path`` nothing else may be written into, as (kind, folder)."""
    for folder in (path, *path.parents):
        kind = _mark(folder) if folder.is_dir() else None
        if kind in _SEALED:
            return kind, folder
    return None


def guard_output(path: str | os.PathLike, kind: str = "file", option: str = "--out", writer: str | None = None,
                 makes: str | None = None, overwrite: bool = False, replaces: bool = False) -> Path:
    """The one check of a path a command will write, before anything is written.

    Refused: a path that is, or (through a symlink or ``..``) reaches, a file tumorlib reads or another
    command made; one lying inside a slice folder, a cache, a NIfTI case folder, a run's checkpoints or an
    export; a folder of another kind than the command makes. For a file: an existing file tumorlib did not
    write (no record of it, changed since, a symlink, or a hard link), or one another command wrote. For a
    folder replaced whole (``replaces``) with ``overwrite``: anything but exactly what this command wrote.

    Args:
        path: the output path as given.
        kind: ``"file"`` or ``"folder"``.
        option: the option that named it, for the message.
        writer: the command writing it (``"evaluate"``); None accepts any tumorlib writer's earlier file.
        makes: for a folder, the kind of folder the command makes there (``"run"``, ``"cache"``,
            ``"dataset"``, ``"export"``); a folder of that kind is the command's own.
        overwrite: the command was given ``--overwrite``.
        replaces: ``--overwrite`` replaces the whole folder (``synth``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputIsInputError: a protected file or folder (names it and what it is).
        FileExistsError: a file or folder tumorlib did not write, or another command's.
        IsADirectoryError, NotADirectoryError: a folder given for a file, or a file for a folder.
    """
    given = Path(path).expanduser()
    real = given.resolve()
    via = f" (through {real})" if real != Path(os.path.abspath(given)) else ""
    what = _protected_file(real) if real.is_file() else None
    if what is not None:
        raise OutputIsInputError(f"{option} {given} is {what}{via}; writing it would destroy it: choose another "
                                 "output path")
    if kind == "folder" and real.exists() and not real.is_dir():
        raise NotADirectoryError(f"{option} {given} is a file, not a folder{via}; choose a folder")
    if kind == "file" and real.is_dir():
        raise IsADirectoryError(f"{option} {given} is a folder{via}; give a file name")
    sealed = _sealed_above(real if kind == "folder" else real.parent)
    if sealed is not None and not (kind == "folder" and sealed == (makes, real)):
        inside = "is" if sealed[1] == real else "lies inside"
        raise OutputIsInputError(f"{option} {given} {inside} {_KINDS[sealed[0]]} ({sealed[1]}){via}; writing "
                                 "there would mix with (or replace) its files: choose another path")
    if kind == "folder":
        found = folder_kind(real)
        if found is not None and found != makes:
            raise FileExistsError(f"{option} {given} is {_KINDS[found]}, not {_KINDS.get(makes, makes)}{via}; "
                                  "writing there would mix with (or replace) its files: choose another folder")
        if replaces and overwrite and real.is_dir() and any(real.iterdir()):
            problem = folder_record_problem(real, writer or "")
            if problem is not None:
                raise FileExistsError(f"{option} {given}: --overwrite replaces only a folder tumorlib {writer} "
                                      f"wrote, and {problem}; never replaced: choose another folder")
        return given
    if given.is_symlink():
        raise FileExistsError(f"{option} {given} is a symbolic link (to {real}), not a file tumorlib wrote; "
                              "never replaced: choose another output path")
    if real.exists():
        links = real.stat().st_nlink
        if links > 1:
            raise FileExistsError(f"{option} {given} has {links} hard links (another name shares its bytes), so "
                                  "tumorlib did not write it; never replaced: choose another output path")
        by = written_by(real)
        if by is None:
            raise FileExistsError(f"{option} {given} exists and was not written by tumorlib (or was changed "
                                  "since); never replaced: choose another output path, or move it away")
        if writer is not None and by != writer:
            raise FileExistsError(f"{option} {given} was written by tumorlib {by}, not {writer}; it is that "
                                  "command's output: choose another output path")
    return given


def check_output_folder(folder: str | os.PathLike, kind: str, option: str = "--out") -> Path:
    """Refuse an output folder that is a file, another command's folder, or inside a protected one.

    Args:
        folder: the folder a command writes (created when missing).
        kind: what the command makes there (``"run"``, ``"cache"``, ``"dataset"``); a folder of that kind
            is accepted (the command's own checks decide on replacing it).
        option: the option that named ``folder``, for the message.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        NotADirectoryError, FileExistsError, OutputIsInputError: see ``guard_output``.
    """
    return guard_output(folder, "folder", option, makes=kind)


def check_output_file(out_path: str | os.PathLike, input_paths: Iterable[str | os.PathLike] = (),
                      option: str = "--out", writer: str | None = None) -> Path:
    """Refuse an output file that is an input or fails ``guard_output`` (the library callers' guard).

    Args:
        out_path: where a command will write one file.
        input_paths: the files it reads (see ``check_not_input``).
        option: the option that named ``out_path``, for the message.
        writer: the command writing it; its own earlier file may be replaced.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        IsADirectoryError, OutputIsInputError, FileExistsError: see ``guard_output``.
    """
    check_not_input(out_path, input_paths, option)
    return guard_output(out_path, "file", option, writer=writer)


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
