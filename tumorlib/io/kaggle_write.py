"""Writing volumes in the Kaggle BraTS2020 per-slice HDF5 layout (the inverse of ``io.kaggle.load_volume``).

Each slice ``s`` of a (C, D, H, W) volume becomes ``volume_{id}_slice_{s}.h5`` with datasets ``image``
(H, W, 4) float64, channels in the pack's stored order, and ``mask`` (H, W, 3) uint8.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from tumorlib.core.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER, reorder_channels

__all__ = ["write_kaggle_volume"]


def write_kaggle_volume(data_dir: str | os.PathLike, volume_id: int, image: np.ndarray,
                        mask: np.ndarray, stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> list[Path]:
    """Write one volume as Kaggle per-slice HDF5 files, channels in the pack's stored order.

    Args:
        data_dir: the folder that receives ``volume_{id}_slice_{s}.h5``.
        volume_id: the volume number in the file names.
        image: (4, D, H, W) intensities in the canonical order T1, T1ce, T2, FLAIR; written as
            (H, W, 4) float64 per slice with channels in ``stored_order``.
        mask: (3, D, H, W) binary; written as (H, W, 3) uint8 per slice.
        stored_order: the channel order of the files (default: the Kaggle pack's FLAIR, T1, T1ce, T2).

    Returns:
        The slice files in slice order.

    Raises:
        ValueError: shapes that do not match, the wrong channel counts or a bad ``stored_order``.
    """
    if image.ndim != 4 or image.shape[0] != 4 or mask.shape != (3,) + image.shape[1:]:
        raise ValueError(f"volume {volume_id}: need image (4, D, H, W) and mask (3, D, H, W), "
                         f"got {image.shape} and {mask.shape}")
    image = reorder_channels(image, CANONICAL_ORDER, stored_order)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    img_slices = np.ascontiguousarray(image.transpose(1, 2, 3, 0), dtype=np.float64)  # (D, H, W, 4)
    mask_slices = np.ascontiguousarray(mask.transpose(1, 2, 3, 0), dtype=np.uint8)
    for s in range(image.shape[1]):
        path = data_dir / f"volume_{volume_id}_slice_{s}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("image", data=img_slices[s])
            f.create_dataset("mask", data=mask_slices[s])
        paths.append(path)
    return paths
