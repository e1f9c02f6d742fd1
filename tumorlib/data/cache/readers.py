"""Reopening a cache's source: the reader that built a cache, by the name its index records.

Every cache index records ``reader`` (``kaggle``, ``nifti``, ...) and ``source`` (the data folder).
``open_source(index)`` returns a ``SourceReader`` for it, so code that needs the full-size source
volume or its voxel size (evaluation of a resampled cache) asks one interface instead of switching on
the reader's name. A new format registers its reader in ``SOURCE_READERS``.

Channel orders. A cached image is always in the canonical order (``tumorlib.core.brats.CANONICAL_ORDER``);
a Kaggle cache also records ``stored_order``, the order its HDF5 files were read with (the config's
``kaggle_channel_order``). ``check_cache_order`` refuses a cache read with another order than a run's.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tumorlib.core.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER, check_order

from .store import CacheError

__all__ = ["SOURCE_READERS", "KaggleSource", "NiftiSource", "SourceReader", "check_cache_order", "open_source",
           "order_record",
           "volume_order_problem"]


class SourceReader(Protocol):
    """A data folder read volume by volume, as the cache build read it."""

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        """image (4, D, H, W) float32 and mask (3, D, H, W) uint8 of one volume at full size."""

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        """Voxel size (D, H, W) in mm."""


class KaggleSource:
    """Kaggle HDF5 slices (``volume_{id}_slice_{s}.h5``) read with ``stored_order``; BraTS is resampled to
    1 mm^3."""

    def __init__(self, root: str | os.PathLike, stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> None:
        self.root = Path(root)
        self.stored_order = check_order(stored_order)

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        from tumorlib.io.kaggle import load_volume

        return load_volume(self.root, volume_id, stored_order=self.stored_order)

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        return (1.0, 1.0, 1.0)


class NiftiSource:
    """NIfTI cases of one layout (``tumorlib.io.layouts``); the voxel size comes from each case's header."""

    def __init__(self, root: str | os.PathLike, layout: str | None = None) -> None:
        self.root = Path(root)
        self.layout = layout

    def read(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        from tumorlib.io.nifti import load_nifti_volume

        return load_nifti_volume(self.root, volume_id, layout=self.layout)

    def spacing(self, volume_id: int) -> tuple[float, float, float]:
        import nibabel as nib

        from tumorlib.io.nifti import list_nifti_cases, nifti_spacing

        case = list_nifti_cases(self.root, self.layout)[volume_id]
        return nifti_spacing(nib.load(str(case.images[-1])).affine)


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
    if name == "kaggle":
        return KaggleSource(index["source"], index.get("stored_order") or KAGGLE_STORED_ORDER)
    if name == "nifti":
        return NiftiSource(index["source"], index.get("layout"))
    return SOURCE_READERS[name](index["source"])


def order_record(stored_order: Sequence[str] | None) -> dict[str, Any]:
    """The index keys that record channel orders: ``channel_order`` (of the cached images: canonical)
    and ``stored_order`` (of the source files; None where the reader stacks the modalities itself)."""
    return {"channel_order": list(CANONICAL_ORDER),
            "stored_order": None if stored_order is None else list(check_order(stored_order))}


def _names(order: Sequence[str]) -> str:
    return ",".join(order)


def check_cache_order(cache: str | os.PathLike, index: dict[str, Any], stored_order: Sequence[str]) -> None:
    """Refuse a Kaggle cache whose HDF5 files were read with another channel order than ``stored_order``.

    Caches of other readers (NIfTI: one file per modality) pass; so does any cache whose images are in
    the canonical order and were read with ``stored_order``.

    Args:
        cache: the cache folder (for the message).
        index: its index (``load_cache_index``).
        stored_order: the run's or build's ``kaggle_channel_order``.

    Raises:
        CacheError: the orders differ, or the cache records none (built before orders were recorded);
            one line saying how to fix it.
    """
    want = check_order(stored_order)
    channel = index.get("channel_order")
    if channel is not None and tuple(channel) != CANONICAL_ORDER:
        raise CacheError(f"cache {cache} holds images in channel order {_names(channel)}, not the canonical "
                         f"{_names(CANONICAL_ORDER)}; rebuild it with `tumorlib cache`")
    if index.get("reader") != "kaggle":
        return
    have = index.get("stored_order")
    if have is None:
        raise CacheError(f"cache {cache} does not record the channel order its HDF5 files were read with; "
                         f"rebuild it with `tumorlib cache --kaggle_channel_order {_names(want)}` (or delete it)")
    if tuple(have) != want:
        raise CacheError(f"cache {cache} was read with kaggle_channel_order {_names(have)}, the run uses "
                         f"{_names(want)}; rebuild the cache with `tumorlib cache --kaggle_channel_order "
                         f"{_names(want)}` into another folder, or train again with --kaggle_channel_order "
                         f"{_names(have)}")


def volume_order_problem(cache: Path, vid: int, entry: dict[str, Any], stored_order: list[str] | None,
                         from_index: bool) -> tuple[str, str, str] | None:
    """Whether a cached volume was read with ``stored_order`` (each entry records its own, so a build
    interrupted and rerun with another order never mixes the two).

    Args:
        cache: the cache folder (for the message).
        vid: the volume.
        entry: its entry (index or meta file).
        stored_order: the build's ``kaggle_channel_order``; None (not a Kaggle build): nothing to check.
        from_index: the entry comes from the index, whose own ``stored_order`` was checked already.

    Returns:
        None, or ``(kind, file, reason)`` as ``store.volume_problem``: an entry outside the index that
        records no order (an older build's leftover) is rebuilt.

    Raises:
        CacheError: the volume's recorded order differs (names the volume, both orders and the fix).
    """
    if stored_order is None:
        return None
    have = entry.get("stored_order")
    if have is None:
        return None if from_index else ("changed", f"v{vid}_meta.json", "its channel order is not recorded")
    if list(have) != list(stored_order):
        names, want = ",".join(map(str, have)), ",".join(stored_order)
        raise CacheError(f"cache {cache}: volume {vid} was read with kaggle_channel_order {names}, this build "
                         f"asks for {want}; rerun with --kaggle_channel_order {names}, or delete the folder "
                         f"(or choose another one) to build it with {want}")
    return None
