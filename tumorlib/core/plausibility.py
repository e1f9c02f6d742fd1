"""One plausibility check for every reader: an image that cannot be a scan is refused, naming it.

Every reader of images calls ``check_plausible_image`` on each whole volume it hands on: the Kaggle HDF5
reader (``tumorlib.io.kaggle.load_volume``), the NIfTI reader (``tumorlib.io.nifti.load_nifti_case``), the
cache build for any reader (``tumorlib.data.cache.build``) and a cached volume loaded to be segmented
(``load_cached_volume(..., check=True)``). So a blank or broken input is refused the same way whichever
format it came in, instead of being cached and segmented (an all-zero volume looks like 100 % tumour to a
network).

Refused:
- values that are not intensities: bool, complex, object, text, records (``check_intensity_dtype``; a reader
  that converts values as it reads them, as nibabel's ``get_fdata``, calls it on the type as stored);
- NaN or inf anywhere;
- a channel that is 0 in every voxel, or one value in every voxel;
- two channels identical in every voxel (one modality copied into another).

Judged per whole channel: an empty slice at the top or bottom of a volume, or a constant background around
the brain, are normal in BraTS and pass.

Cost: one min and one max per channel (NaN and inf show in them), and a slice-by-slice comparison, stopping at
the first difference, only of channel pairs whose min and max agree; nothing is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["INTENSITY_KINDS", "ImplausibleImageError", "check_intensity_dtype", "check_plausible_image"]

#: numpy dtype kinds that hold intensities: signed and unsigned integers, floats.
INTENSITY_KINDS = "iuf"


class ImplausibleImageError(ValueError):
    """An image that cannot be a real scan (blank, constant, not numbers, NaN/inf, copied channels)."""


def check_intensity_dtype(dtype: np.dtype | type | str, name: str) -> None:
    """Refuse a value type that cannot hold scan intensities.

    Args:
        dtype: the type the values are (or were stored as, before a reader converted them).
        name: what the message names (a volume, a file).

    Raises:
        ImplausibleImageError: bool, complex, object, text or record values (names ``name`` and the type).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in INTENSITY_KINDS:
        raise ImplausibleImageError(f"{name}: image holds {dtype} values ({dtype.kind!r}), not intensities "
                                    "(a scan holds integers or floats)")


def _same_channels(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two channels are equal in every voxel, compared slice by slice (no full-size temporary)."""
    if a.ndim < 2:
        return bool(np.array_equal(a, b))
    return all(np.array_equal(a[s], b[s]) for s in range(a.shape[0]))


def check_plausible_image(image: np.ndarray, name: str, channels: Sequence[str] | None = None) -> None:
    """Refuse an image that cannot be a real scan (see the module's docstring for what is refused).

    Args:
        image: (C, D, H, W) intensities (any number of trailing axes), e.g. (4, D, H, W) float32 channels
            T1, T1ce, T2, FLAIR; a memory map is read, not copied.
        name: the volume, named first in every message: ``"volume 7 (/data/BraTS2020)"``.
        channels: a name per channel (modality names, file paths); default ``channel 0``, ``channel 1``, ...

    Raises:
        ImplausibleImageError: one line naming ``name``, the channel (or both channels) and what is wrong.
        ValueError: no channel axis, or ``channels`` of another length than the image's channels.
    """
    image = np.asarray(image)  # a view of an array or memory map, never a copy
    check_intensity_dtype(image.dtype, name)
    if image.ndim < 2:
        raise ValueError(f"{name}: expected channels first, (C, D, H, W), got shape {image.shape}")
    if image.size == 0:
        raise ImplausibleImageError(f"{name}: holds no voxels (shape {image.shape})")
    labels = list(channels) if channels is not None else [f"channel {c}" for c in range(image.shape[0])]
    if len(labels) != image.shape[0]:
        raise ValueError(f"{name}: {len(labels)} channel names for {image.shape[0]} channels")
    ranges = []
    for label, channel in zip(labels, image):
        low, high = channel.min(), channel.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ImplausibleImageError(f"{name}, {label}: holds NaN or inf values")
        if low == high:
            what = "0 (an empty or blank modality)" if low == 0 else f"{float(low):g} (a constant channel)"
            raise ImplausibleImageError(f"{name}, {label}: every voxel is {what}; not a scan, nothing to segment")
        ranges.append((low, high))
    for a in range(len(ranges)):
        for b in range(a + 1, len(ranges)):
            if ranges[a] == ranges[b] and _same_channels(image[a], image[b]):
                raise ImplausibleImageError(f"{name}: {labels[a]} and {labels[b]} are identical in every voxel "
                                            "(one modality copied into another?); not a scan")
