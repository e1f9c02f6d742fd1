"""Planning a cached volume: in-plane resampling, the crop to the brain, the index entry.

``resample_and_plan`` zooms a volume in-plane, scans it (``normalise.VolumeScan``) and chooses the crop;
``prepare_volume`` gives a volume exactly as the cache stores it (z-scored by ``normalise``);
``source_to_cache`` and ``uncrop`` map arrays between the source frame and the cache frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .normalise import VolumeScan, brain_moments, zscore

__all__ = [
    "CACHE_VERSION",
    "TUMOR_SAMPLE",
    "VolumePlan",
    "prepare_volume",
    "resample_and_plan",
    "source_to_cache",
    "uncrop",
]

CACHE_VERSION = 1  # format version of the cache; also seeds the tumour-voxel sample
TUMOR_SAMPLE = 1024  # tumour-voxel coordinates kept per volume for tumour-centred sampling


def _zoom_factor(hw: tuple[int, int], cache_hw: int | None) -> float:
    """In-plane zoom: cache_hw / max(H, W) when that is below 1, else 1 (no upsampling)."""
    if cache_hw is None:
        return 1.0
    if cache_hw < 8:
        raise ValueError(f"cache_hw must be at least 8 voxels or None, got {cache_hw}")
    return min(1.0, cache_hw / max(hw))


def _zoom_inplane(array: np.ndarray, out_hw: tuple[int, int], order: int) -> np.ndarray:
    """Resample (C, D, H, W) to (C, D, out_h, out_w) with scipy.ndimage.zoom, per channel."""
    c, d, h, w = array.shape
    factors = (1.0, out_hw[0] / h, out_hw[1] / w)
    out = np.empty((c, d) + tuple(out_hw), array.dtype)
    for k in range(c):
        out[k] = ndimage.zoom(array[k], factors, order=order, mode="nearest", grid_mode=False)
    return out


def prepare_volume(image: np.ndarray, mask: np.ndarray | None = None, cache_hw: int | None = None,
                   margin: int = 4, dtype: np.dtype | type = np.float32,
                   volume_id: int = 0) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Resample, crop and normalise one raw volume exactly as the cache does.

    Steps: optional in-plane zoom to ``cache_hw`` (linear for the image, nearest for the mask), crop
    to the bounding box of brain and tumour voxels plus ``margin`` (clipped to the volume), then
    ``normalize_volume``. Every tumour voxel is inside the crop.

    Args:
        image: (4, D, H, W) float intensities, 0 outside the brain.
        mask: (3, D, H, W) uint8 class channels, or None (prediction on unlabelled input).
        cache_hw: largest in-plane size kept; bigger volumes are zoomed down by
            ``cache_hw / max(H, W)``; None keeps the native size.
        margin: voxels kept around the bounding box on each side.
        dtype: dtype of the returned image (float16 in the cache).
        volume_id: used in error messages and to seed the tumour-coordinate sample.

    Returns:
        image: (4, D', H', W') normalised, ``dtype``.
        mask: (3, D', H', W') uint8, or None.
        entry: the geometry and statistics (keys ``source_shape``, ``zoom``, ``resampled_shape``,
            ``crop_box``, ``shape``, ``mean``, ``std``, ``brain_voxels``, ``class_voxels``,
            ``tumor_voxels``, ``tumor_coords``), JSON-ready; ``uncrop`` maps back with it.

    Raises:
        ValueError: shapes that are not (4, D, H, W) and (3, D, H, W) with equal sides, or a
            negative margin.
    """
    plan = resample_and_plan(image, mask, cache_hw, margin, volume_id)
    image_c = zscore(plan.image, plan.brain, plan.mean, plan.std, dtype, background_zero=True)
    mask_c = np.ascontiguousarray(plan.mask, dtype=np.uint8) if plan.mask is not None else None
    return image_c, mask_c, plan.entry


def resample_and_plan(image: np.ndarray, mask: np.ndarray | None, cache_hw: int | None, margin: int,
                       volume_id: int) -> VolumePlan:
    """Check shapes, zoom in-plane if asked, scan, crop and compute the moments (no z-scoring yet).

    Args:
        image: (C, D, H, W) float intensities, 0 outside the brain.
        mask: (K, D, H, W) class channels, or None.
        cache_hw, margin, volume_id: see ``prepare_volume``.

    Returns:
        The ``VolumePlan``; its entry holds ``source_shape`` and ``zoom`` before the crop keys.

    Raises:
        ValueError: see ``prepare_volume``.
    """
    if image.ndim != 4:
        raise ValueError(f"volume {volume_id}: image must be (C, D, H, W), got shape {image.shape}")
    if mask is not None and (mask.ndim != 4 or mask.shape[1:] != image.shape[1:]):
        raise ValueError(f"volume {volume_id}: mask shape {mask.shape} does not match image {image.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    source_shape = tuple(int(n) for n in image.shape[1:])
    factor = _zoom_factor(source_shape[1:], cache_hw)
    if factor < 1.0:
        out_hw = (max(1, round(source_shape[1] * factor)), max(1, round(source_shape[2] * factor)))
        image = _zoom_inplane(np.asarray(image, np.float32), out_hw, order=1)
        if mask is not None:
            mask = _zoom_inplane(mask, out_hw, order=0)
    resampled = image.shape[1:]
    plan = _plan(image, mask, margin, volume_id)
    zoom = [1.0, resampled[1] / source_shape[1], resampled[2] / source_shape[2]]
    plan.entry = {"source_shape": list(source_shape), "zoom": zoom, **plan.entry}
    return plan


class VolumePlan:
    """A volume ready to be z-scored: cropped ``image`` and ``mask`` views, the cropped ``brain`` mask,
    per-channel ``mean`` and ``std`` and its index ``entry`` (the builder adds file names and records)."""

    def __init__(self, image: np.ndarray, mask: np.ndarray | None, brain: np.ndarray, mean: np.ndarray,
                 std: np.ndarray, entry: dict[str, Any]) -> None:
        self.image, self.mask, self.brain, self.mean, self.std, self.entry = image, mask, brain, mean, std, entry


def _plan(image: np.ndarray, mask: np.ndarray | None, margin: int, volume_id: int) -> VolumePlan:
    """Scan a (resampled) volume, choose the crop, compute the moments and the index entry."""
    resampled_shape = tuple(int(n) for n in image.shape[1:])
    scan = VolumeScan(image, mask)
    box = scan.box if scan.box is not None else [(0, n) for n in resampled_shape]  # empty: keep it whole
    box = [(max(0, a - margin), min(n, b + margin)) for (a, b), n in zip(box, resampled_shape)]
    sl = tuple(slice(a, b) for a, b in box)
    brain_c = scan.brain[sl]
    image_view = image[(slice(None),) + sl]
    moments = scan.moments()
    mean, std = moments if moments is not None else brain_moments(image_view, brain_c)
    entry: dict[str, Any] = {
        "resampled_shape": list(resampled_shape),
        "crop_box": [list(b) for b in box],
        "shape": [b - a for a, b in box],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "brain_voxels": scan.n_brain,
    }
    mask_view = None
    if mask is not None:
        mask_view = mask[(slice(None),) + sl]
        flat = scan.tumour_flat  # sorted, in the (resampled) source frame; all inside the crop
        entry["class_voxels"] = scan.class_voxels
        entry["tumor_voxels"] = int(flat.size)
        if flat.size > TUMOR_SAMPLE:
            rng = np.random.default_rng([CACHE_VERSION, int(volume_id)])
            flat = np.sort(rng.choice(flat, TUMOR_SAMPLE, replace=False))
        coords = np.stack(np.unravel_index(flat, resampled_shape), axis=1) - np.array([a for a, _ in box])
        entry["tumor_coords"] = coords.astype(int).tolist()
    return VolumePlan(image_view, mask_view, brain_c, mean, std, entry)


def source_to_cache(array: np.ndarray, entry: dict[str, Any], order: int | None = None) -> np.ndarray:
    """Map a full-size source array into the cache's frame (zoom, then crop).

    Args:
        array: (C, D, H, W) or (D, H, W) at the source shape ``entry["source_shape"]``.
        entry: the volume's index entry (or the entry from ``prepare_volume``).
        order: interpolation order of the zoom; None: 0 for integer/bool arrays, 1 for floats.

    Returns:
        (C, D', H', W') or (D', H', W') at ``entry["shape"]``.

    Raises:
        ValueError: an array whose spatial shape is not the source shape.
    """
    squeeze = array.ndim == 3
    arr = array[None] if squeeze else array
    if list(arr.shape[1:]) != list(entry["source_shape"]):
        raise ValueError(f"source_to_cache: array shape {array.shape} does not match the source shape "
                         f"{entry['source_shape']}")
    if order is None:
        order = 1 if np.issubdtype(arr.dtype, np.floating) else 0
    if list(entry["resampled_shape"]) != list(entry["source_shape"]):
        arr = _zoom_inplane(arr, tuple(entry["resampled_shape"][1:]), order=order)
    sl = tuple(slice(a, b) for a, b in entry["crop_box"])
    out = np.ascontiguousarray(arr[(slice(None),) + sl])
    return out[0] if squeeze else out


def uncrop(array: np.ndarray, entry: dict[str, Any], fill: float = 0, order: int | None = None) -> np.ndarray:
    """Map an array in the cache's frame back to the full source volume (undo crop and zoom).

    Args:
        array: (C, D', H', W') or (D', H', W') at ``entry["shape"]``, e.g. a prediction.
        entry: the volume's index entry (``load_cache_index(cache)["volumes"][str(id)]``) or the
            entry returned by ``prepare_volume``.
        fill: value outside the crop box (0: background; use a very negative number for logits).
        order: interpolation order when the cache was zoomed; None: 0 (nearest) for integer/bool
            arrays, 1 (linear) for floats.

    Returns:
        (C, D, H, W) or (D, H, W) at ``entry["source_shape"]``, same dtype as ``array``.

    Raises:
        ValueError: an array whose spatial shape is not the entry's cached shape.
    """
    squeeze = array.ndim == 3
    arr = array[None] if squeeze else array
    if list(arr.shape[1:]) != list(entry["shape"]):
        raise ValueError(f"uncrop: array shape {array.shape} does not match the cached shape {entry['shape']}")
    full = np.full((arr.shape[0],) + tuple(entry["resampled_shape"]), fill, dtype=arr.dtype)
    sl = tuple(slice(a, b) for a, b in entry["crop_box"])
    full[(slice(None),) + sl] = arr
    if list(entry["resampled_shape"]) != list(entry["source_shape"]):
        if order is None:
            order = 1 if np.issubdtype(arr.dtype, np.floating) else 0
        full = _zoom_inplane(full, tuple(entry["source_shape"][1:]), order=order)
    return full[0] if squeeze else full

