"""Kaggle-specific parts of the cache: cheap content fingerprints of a volume's HDF5 slices.

A cache records each volume's fingerprint, and the size and time of each of its slice files
(``kaggle_source_files``), so data changed since it was cached is noticed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["kaggle_fingerprint", "kaggle_fingerprints", "kaggle_source_files"]


def kaggle_fingerprint(slice_files: Sequence[str | os.PathLike]) -> str:
    """A cheap content fingerprint of one Kaggle volume: slice names and sizes, bytes of the middle slice.

    Args:
        slice_files: the volume's ``volume_{id}_slice_{s}.h5`` files in slice order.

    Returns:
        A hex digest; regenerating identical data gives the same digest.
    """
    files = [Path(f) for f in slice_files]
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    if files:  # 64 KiB from the middle of the middle slice: image data, which any other volume changes
        middle = files[len(files) // 2]
        with open(middle, "rb") as fh:
            fh.seek(max(0, middle.stat().st_size // 2 - 32768))
            h.update(fh.read(65536))
    return h.hexdigest()


def _lazy_slices(data: str | os.PathLike) -> Callable[[int], dict[int, Path]]:
    """``slices(volume_id) -> {slice: path}`` over one scan of ``data``, made on the first call."""
    from tumorlib.io import kaggle

    found: dict[int, dict[int, Path]] = {}

    def slices(volume_id: int) -> dict[int, Path]:
        if not found:
            found.update(kaggle.find_slices(data))
        return found.get(int(volume_id), {})

    return slices


def kaggle_fingerprints(data: str | os.PathLike) -> Callable[[int], str]:
    """``fingerprint(volume_id)`` over one scan of a Kaggle-format folder (made on the first call).

    Args:
        data: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.

    Returns:
        ``fingerprint(volume_id) -> str`` (``kaggle_fingerprint`` of its slices; unknown ids give the
        digest of no files).
    """
    slices = _lazy_slices(data)

    def fingerprint(volume_id: int) -> str:
        found = slices(volume_id)
        return kaggle_fingerprint([found[s] for s in sorted(found)])

    return fingerprint


def kaggle_source_files(data: str | os.PathLike) -> Callable[[int], list[Path]]:
    """``source_files(volume_id)``: the volume's slice files in slice order, over one scan of ``data``
    (made on the first call).

    Args:
        data: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.

    Returns:
        ``source_files(volume_id) -> [Path, ...]`` (empty for unknown ids).
    """
    slices = _lazy_slices(data)

    def source_files(volume_id: int) -> list[Path]:
        found = slices(volume_id)
        return [Path(found[s]) for s in sorted(found)]

    return source_files
