"""Reopening a cache's source: the reader that built a cache, by the name its index records.

Every cache index records ``reader`` (``kaggle``, ``nifti``, ...) and ``source`` (the data folder).
``open_source(index)`` returns a ``SourceReader`` for it, so code that needs the full-size source
volume or its voxel size (evaluation of a resampled cache) asks one interface instead of switching on
the reader's name. A new format registers its reader in ``SOURCE_READERS``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .store import CacheError

__all__ = ["SOURCE_READERS", "KaggleSource", "NiftiSource", "SourceReader", "open_source"]


class SourceReader(Protocol):
    """A data folder read volume by volume, as the cache build read it."""

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        """image (4, D, H, W) float32 and mask (3, D, H, W) uint8 of one volume at full size."""

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        """Voxel size (D, H, W) in mm."""


class KaggleSource:
    """Kaggle HDF5 slices (``volume_{id}_slice_{s}.h5``); BraTS is resampled to 1 mm^3."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        from tumorlib.data.kaggle import load_volume

        return load_volume(self.root, volume_id)

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)


class NiftiSource:
    """Official BraTS NIfTI cases; the voxel size comes from each case's header."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        from tumorlib.data.nifti import load_nifti_volume

        return load_nifti_volume(self.root, volume_id)

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        import nibabel as nib

        from tumorlib.data.nifti import find_nifti_file, list_nifti_cases, nifti_spacing

        case = list_nifti_cases(self.root)[volume_id]
        return nifti_spacing(nib.load(str(find_nifti_file(case, "flair"))).affine)


#: Source readers by the ``reader`` name a cache index records.
SOURCE_READERS: dict[str, type] = {"kaggle": KaggleSource, "nifti": NiftiSource}


def open_source(index: dict[str, Any]) -> SourceReader:
    """The reader of the data a cache was built from.

    Args:
        index: a cache index (``load_cache_index``) with ``reader`` and ``source``.

    Returns:
        A ``SourceReader`` over ``index["source"]``.

    Raises:
        CacheError: a reader name without a registered reader (e.g. a cache built by a custom reader).
    """
    name = index.get("reader")
    if name not in SOURCE_READERS:
        raise CacheError(f"cache built by reader {name!r}: its source cannot be reopened (known readers: "
                         f"{', '.join(SOURCE_READERS)})")
    return SOURCE_READERS[name](index["source"])
