"""Data: the Kaggle HDF5 reader, the embedded synthetic dataset, the ``.npy`` cache and patch datasets."""

from __future__ import annotations

from typing import Any

from tumorlib.data.cache import (
    CacheError,
    brain_mask,
    build_cache,
    build_cache_from_reader,
    cache_affine,
    cache_summary,
    cached_volume_ids,
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
from tumorlib.core.brats import CLASS_NAMES, MODALITIES
from tumorlib.io.kaggle import (
    KAGGLE_DATASET,
    download_brats2020,
    find_slices,
    list_volumes,
    load_metadata,
    load_volume,
)
from tumorlib.data.resolve import resolve_cache
from tumorlib.data.splits import split_volumes
from tumorlib.data.synthetic import KAGGLE_SUBDIR, make_phantom, make_synthetic
from tumorlib.io.kaggle_write import write_kaggle_volume

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
    "cache_affine",
    "cache_summary",
    "cached_volume_ids",
    "load_cache_index",
    "load_cached_volume",
    "make_loader",
    "normalize_volume",
    "prepare_volume",
    "resolve_cache",
    "source_to_cache",
    "split_volumes",
    "uncrop",
]

# imported on first use (nibabel is needed for NIfTI only): name -> its module
_NIFTI = {"build_nifti_cache": "tumorlib.data.cache.nifti", "list_nifti_cases": "tumorlib.io.nifti",
          "load_nifti_case": "tumorlib.io.nifti", "nifti_spacing": "tumorlib.io.nifti",
          "save_segmentation_nifti": "tumorlib.io.nifti_write"}


def __getattr__(name: str) -> Any:
    if name in _NIFTI:
        import importlib

        return getattr(importlib.import_module(_NIFTI[name]), name)
    raise AttributeError(f"module 'tumorlib.data' has no attribute {name!r}")
