"""The OpenVINO model of a checkpoint: the ``openvino`` import, the process's one ``Core``, the conversion of
the network for one window, and the converted model cached beside its checkpoint (for the ``openvino`` engine
of ``tumorlib.inference.engines`` and for ``export --format openvino``).

The converted model of a checkpoint is cached beside it, ``best_model.pth`` ->
``best_model.openvino/{model.xml, model.bin, source.json}``, as float32 IR (the precision is chosen when it
is compiled, so one cache serves both). ``source.json`` holds the checkpoint's fingerprint (size, mtime,
blake2b), the patch size and the records of the two model files; OpenVINO's compiled-model cache
(``CACHE_DIR``) is its ``compiled/`` subfolder, so later runs skip the compilation. A cache that does not
match is rebuilt, each file written atomically. Files in that folder that tumorlib did not write are never replaced: the
model is then converted in memory and a warning says why (as where the folder cannot be written).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.integrity import file_record, record_problem
from tumorlib.core.safety import atomic_write

__all__ = ["CACHE_FILES", "OPENVINO_INSTALL", "cache_is_ours", "checkpoint_fingerprint", "convert_openvino",
           "import_openvino", "load_openvino_model", "openvino_available", "openvino_cache_dir", "openvino_core",
           "save_openvino"]

OPENVINO_INSTALL = "pip install 'tumorlib[openvino]' (or: pip install openvino)"
#: The files of a converted-model cache, ``source.json`` last (it says the other two are complete).
CACHE_FILES = ("model.xml", "model.bin", "source.json")
_CACHE_FORMAT = 1
_WRITER = "tumorlib.inference.engines"  # the module that first wrote caches: kept, so they stay ours


def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        ValueError: it is not installed (names the install command).
    """
    try:
        import openvino
    except ImportError as err:
        raise ValueError(f"engine 'openvino' asked for, but openvino is not installed ({err}); "
                         f"install it with {OPENVINO_INSTALL}, or use --engine torch") from err
    return openvino


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and kept until exit.

    Every ``Core`` loads its own CPU plugin, and each plugin swaps in its own signal stack and puts back the
    one it found when it is freed. Two Cores freed in the order they were made leave the thread's signal stack
    pointing at freed memory, and the next Python signal handler (Ctrl-C, a child process ending) kills the
    process with SIGSEGV. One Core, never freed, cannot leave the stacks out of order.
    """
    return import_openvino().Core()


def openvino_available() -> bool:
    """Whether ``openvino`` imports."""
    try:
        import_openvino()
    except ValueError:
        return False
    return True


def checkpoint_fingerprint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Size, modification time and blake2b of a checkpoint file (``tumorlib.core.integrity.file_record``).

    Raises:
        FileNotFoundError: no such file.
    """
    return file_record(checkpoint, checksum=True)


def openvino_cache_dir(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's converted model is kept: ``best_model.pth`` -> ``best_model.openvino``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".openvino")


def convert_openvino(model: torch.nn.Module, patch_size: Sequence[int], in_channels: int | None = None) -> Any:
    """``openvino.convert_model`` of ``model`` for one window of ``patch_size`` (batch 1, static shape).

    Raises:
        ValueError: openvino is not installed.
    """
    ov = import_openvino()
    channels = int(in_channels if in_channels is not None else getattr(model, "in_channels", 4))
    shape = (1, channels, *(int(p) for p in patch_size))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings about shape-dependent padding
            return ov.convert_model(model, example_input=torch.zeros(shape), input=[shape])
    finally:
        model.train(was_training)


def _source(checkpoint: Path, patch_size: Sequence[int]) -> dict[str, Any]:
    from tumorlib import __version__

    return {"format": _CACHE_FORMAT, "written_by": _WRITER, "tumorlib": __version__,
            "checkpoint": checkpoint.name, "checkpoint_record": checkpoint_fingerprint(checkpoint),
            "patch_size": [int(p) for p in patch_size], "ir_precision": "f32"}


def _read_source(folder: Path) -> dict[str, Any] | None:
    try:
        source = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) and source.get("written_by") == _WRITER else None


def cache_is_ours(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``source.json`` that tumorlib wrote (a converted-model cache of ours)."""
    return _read_source(Path(folder)) is not None


def _cache_valid(folder: Path, source: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if source is None:
        return False
    same = all(source.get(k) == wanted[k] for k in ("format", "checkpoint", "patch_size", "ir_precision"))
    same = same and {k: source.get("checkpoint_record", {}).get(k) for k in ("size", "blake2b")} == {
        k: wanted["checkpoint_record"][k] for k in ("size", "blake2b")}
    files = source.get("files") or {}
    return same and all(name in files and record_problem(folder / name, files[name], mtime=False) is None
                        for name in CACHE_FILES[:2])


def _foreign_files(folder: Path, source: dict[str, Any] | None) -> list[str]:
    """Cache files present in ``folder`` that tumorlib's ``source.json`` does not vouch for."""
    if not folder.is_dir():
        return [] if not folder.exists() else [folder.name]
    present = [n for n in CACHE_FILES if (folder / n).exists()]
    return [] if source is not None else present


def save_openvino(ov_model: Any, folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Write ``model.xml`` and ``model.bin`` (float32 IR) into ``folder``, each file replaced in one step.

    Both are written into a temporary folder beside them, ``fsync``-ed, then renamed over the old ones, so a
    failure leaves no half-written file under the final names.

    Returns:
        The ``file_record`` (with blake2b) of each file, by name.

    Raises:
        ValueError: openvino is not installed.
    """
    ov = import_openvino()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}-model"
    tmp.mkdir(exist_ok=True)
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        for name in CACHE_FILES[:2]:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, folder / name)
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    return {name: file_record(folder / name, checksum=True) for name in CACHE_FILES[:2]}


def _write_cache(folder: Path, ov_model: Any, wanted: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # claim the folder first (a source.json of ours without file records): a crash from here on leaves a cache
    # that is rebuilt next time, never one mistaken for a stranger's files or for a complete one
    atomic_write(folder / "source.json", json.dumps({**wanted, "files": {}}, indent=2) + "\n")
    files = save_openvino(ov_model, folder)
    atomic_write(folder / "source.json", json.dumps({**wanted, "files": files}, indent=2) + "\n")


def load_openvino_model(model: torch.nn.Module, patch_size: Sequence[int], checkpoint: str | os.PathLike | None,
                        cache_dir: str | os.PathLike | None = None) -> tuple[Any, Path | None]:
    """The converted model: read from the checkpoint's cache when it matches, else converted (and cached).

    Args:
        model: the network, holding the checkpoint's weights.
        patch_size: the window (d, h, w).
        checkpoint: the checkpoint file ``model`` was loaded from; None: convert in memory, no cache.
        cache_dir: the cache folder (None: ``openvino_cache_dir(checkpoint)``).

    Returns:
        ``(openvino.Model, cache folder or None)``.
    """
    if checkpoint is None:
        return convert_openvino(model, patch_size), None
    checkpoint = Path(checkpoint)
    folder = Path(cache_dir) if cache_dir is not None else openvino_cache_dir(checkpoint)
    wanted = _source(checkpoint, patch_size)
    source = _read_source(folder)
    if _cache_valid(folder, source, wanted):
        return openvino_core().read_model(str(folder / "model.xml")), folder
    ov_model = convert_openvino(model, patch_size)
    foreign = _foreign_files(folder, source)
    if foreign:
        warnings.warn(f"{folder} holds files tumorlib did not write ({', '.join(foreign)}): the converted "
                      "model is not cached there (remove them to cache it)", stacklevel=3)
        return ov_model, None
    try:
        _write_cache(folder, ov_model, wanted)
    except OSError as err:  # a read-only run folder (a dataset attached as input), a full disk
        warnings.warn(f"cannot cache the converted model in {folder} ({err}): converted in memory only",
                      stacklevel=3)
        return ov_model, None
    return ov_model, folder
