"""Data: the Kaggle HDF5 reader, the embedded synthetic dataset, the ``.npy`` cache and patch datasets."""

from __future__ import annotations

from typing import Any

from tumorlib.data.cache import (
    CacheError,
    brain_mask,
    build_cache,
    build_cache_from_reader,
    cache_summary,
    cached_volume_ids,
    ensure_cache,
    load_cache_index,
    load_cached_volume,
    normalize_volume,
    prepare_volume,
    source_to_cache,
    uncrop,
)
from tumorlib.data.dataset import BraTS3DDataset, EpochSampler, make_loader
from tumorlib.data.embedded import ensure_data
from tumorlib.data.explore import volume_stats
from tumorlib.io.kaggle import (
    CLASS_NAMES,
    KAGGLE_DATASET,
    MODALITIES,
    download_brats2020,
    find_slices,
    list_volumes,
    load_metadata,
    load_volume,
)
from tumorlib.data.splits import split_volumes
from tumorlib.data.synthetic import KAGGLE_SUBDIR, make_phantom, make_synthetic, write_kaggle_volume

__all__ = [
    "CLASS_NAMES",
    "brain_mask",
    "volume_stats",
    "KAGGLE_DATASET",
    "KAGGLE_SUBDIR",
    "MODALITIES",
    "download_brats2020",
    "ensure_data",
    "find_slices",
    "list_volumes",
    "load_metadata",
    "load_volume",
    "make_phantom",
    "make_synthetic",
    "write_kaggle_volume",
    "build_nifti_cache",
    "list_nifti_cases",
    "load_nifti_case",
    "nifti_spacing",
    "save_segmentation_nifti",
    "BraTS3DDataset",
    "CacheError",
    "EpochSampler",
    "build_cache",
    "build_cache_from_reader",
    "cache_summary",
    "cached_volume_ids",
    "ensure_cache",
    "load_cache_index",
    "load_cached_volume",
    "make_loader",
    "normalize_volume",
    "prepare_volume",
    "source_to_cache",
    "split_volumes",
    "uncrop",
]

_NIFTI = {"build_nifti_cache", "list_nifti_cases", "load_nifti_case", "nifti_spacing", "save_segmentation_nifti"}


def __getattr__(name: str) -> Any:
    if name in _NIFTI:  # imported on first use: nibabel is needed for NIfTI only
        from tumorlib.io import nifti

        return getattr(nifti, name)
    raise AttributeError(f"module 'tumorlib.data' has no attribute {name!r}")
