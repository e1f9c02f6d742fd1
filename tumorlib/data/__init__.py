"""Data: the Kaggle HDF5 reader, the embedded synthetic dataset, the ``.npy`` cache and patch datasets."""

from __future__ import annotations

from tumorlib.data.embedded import ensure_data
from tumorlib.data.explore import brain_mask, volume_stats
from tumorlib.data.kaggle import (
    CLASS_NAMES,
    KAGGLE_DATASET,
    MODALITIES,
    download_brats2020,
    find_slices,
    list_volumes,
    load_metadata,
    load_volume,
)
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
]
