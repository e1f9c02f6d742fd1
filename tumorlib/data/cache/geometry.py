"""The geometry of a cached volume: the NIfTI affine of its source, scaled to the cache's in-plane zoom.

A cached volume is (C, D, H, W) in the cache's frame: the source's axes, zoomed in-plane and cropped to
the brain. Cropping only shifts the origin and zooming only changes the voxel size, so the source's axes
still say which anatomical direction each array axis runs to; ``tumorlib.viz.orientation`` turns that
into the radiological display of figures, the viewer and the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cache_affine", "cache_spacing"]


def cache_affine(index: dict[str, Any], volume_id: int) -> np.ndarray:
    """The NIfTI affine of a cached volume's source, its voxel sizes divided by the cache's zoom.

    Kaggle HDF5: the BraTS2020 geometry (``tumorlib.io.nifti_write.BRATS2020_AFFINE``); NIfTI: the case's
    grid, the FLAIR file's header or the T1 file's where the FLAIR is stored in another orientation (the
    grid ``load_nifti_case`` puts every modality on, ``tumorlib.io.nifti.nifti_header``); a custom reader: a
    1 mm RAS identity (no geometry is recorded). The translation is the source's (the crop is not added).

    Args:
        index: the cache index (``load_cache_index``).
        volume_id: a cached volume.

    Returns:
        (4, 4) float64 affine of the (H, W, D) axes (tumorlib's (D, H, W) are NIfTI axes 2, 0, 1).

    Raises:
        KeyError: a volume not in the index, or a NIfTI case no longer in the source folder.
        FileNotFoundError, OSError: the NIfTI case's file is missing or unreadable.
    """
    reader = index.get("reader")
    entry = index["volumes"][str(volume_id)]
    if reader == "nifti":
        from tumorlib.io.nifti import list_nifti_cases, nifti_header

        case = list_nifti_cases(index["source"], index.get("layout"))[int(volume_id)]
        affine = np.array(nifti_header(case).get_best_affine(), dtype=np.float64)
    elif reader == "kaggle":
        from tumorlib.io.nifti_write import BRATS2020_AFFINE

        affine = np.array(BRATS2020_AFFINE, dtype=np.float64)
    else:
        affine = np.eye(4)
    zoom = entry.get("zoom", [1.0, 1.0, 1.0])
    for nifti_axis, tumorlib_axis in enumerate((1, 2, 0)):  # NIfTI (H, W, D) against tumorlib (D, H, W)
        affine[:3, nifti_axis] /= float(zoom[tumorlib_axis])
    return affine


def cache_spacing(index: dict[str, Any], volume_id: int) -> tuple[float, float, float]:
    """The voxel size (mm) of a cached volume's (D, H, W) axes: its source's, divided by the cache's zoom.

    Args:
        index: the cache index (``load_cache_index``).
        volume_id: a cached volume.

    Returns:
        ``(spacing_D, spacing_H, spacing_W)`` from ``cache_affine`` (1 mm for Kaggle HDF5 and custom readers
        at zoom 1).

    Raises:
        KeyError, FileNotFoundError, OSError: see ``cache_affine``.
    """
    from tumorlib.io.nifti import nifti_spacing

    return nifti_spacing(cache_affine(index, volume_id))
