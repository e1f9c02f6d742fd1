"""Kaggle-specific parts of the cache: cheap content fingerprints of a volume's HDF5 slices.

A cache records each volume's fingerprint, so a cache built from other data than the folder now holds
is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["kaggle_fingerprint", "kaggle_fingerprints"]


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


def kaggle_fingerprints(data: str | os.PathLike) -> Callable[[int], str]:
    """``fingerprint(volume_id)`` over one scan of a Kaggle-format folder.

    Args:
        data: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.

    Returns:
        ``fingerprint(volume_id) -> str`` (``kaggle_fingerprint`` of its slices; unknown ids give the
        digest of no files).
    """
    from . import kaggle

    found = kaggle.find_slices(data)

    def fingerprint(volume_id: int) -> str:
        slices = found.get(int(volume_id), {})
        return kaggle_fingerprint([slices[s] for s in sorted(slices)])

    return fingerprint
