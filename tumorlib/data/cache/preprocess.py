"""Preprocessing maths of the cache: brain mask, z-scoring, in-plane resampling, the crop to the brain.

Each volume is scanned once (brain mask, moments, bounding box, tumour voxels) by ``_Scan`` and then
z-scored slab by slab (``_zscore_slabs``), so the build costs little more than reading the slices;
``normalize_volume`` is the plain reference version of the same z-score. ``prepare_volume`` gives a
volume exactly as the cache stores it; ``source_to_cache`` and ``uncrop`` map arrays between the
source frame and the cache frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "TUMOR_SAMPLE",
    "brain_mask",
    "cache_to_source",
    "normalize_volume",
    "prepare_volume",
    "source_to_cache",
    "uncrop",
]

CACHE_VERSION = 1  # format version of the cache; also seeds the tumour-voxel sample
_SLAB_VOXELS = 1 << 17  # voxels per slab of the slab-wise passes (a slab stays in the CPU cache)
TUMOR_SAMPLE = 1024  # tumour-voxel coordinates kept per volume for tumour-centred sampling


def _slabs(shape: tuple[int, ...]) -> list[slice]:
    """Slices along D holding about ``_SLAB_VOXELS`` voxels each (cache-sized working sets)."""
    depth, plane = shape[0], int(np.prod(shape[1:]))
    step = max(1, _SLAB_VOXELS // max(plane, 1))
    return [slice(z, min(z + step, depth)) for z in range(0, depth, step)]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain voxels: nonzero in any channel.

    Args:
        image: (C, D, H, W) intensities, exactly 0 outside the brain (skull-stripped).

    Returns:
        (D, H, W) bool.
    """
    brain = np.empty(image.shape[1:], bool)
    slabs = _slabs(image.shape[1:])
    tmp = np.empty((slabs[0].stop - slabs[0].start,) + image.shape[2:], bool) if slabs else None
    for sl in slabs:
        b, t = brain[sl], tmp[: sl.stop - sl.start]
        np.not_equal(image[0, sl], 0, out=b)
        for c in range(1, image.shape[0]):
            np.not_equal(image[c, sl], 0, out=t)
            b |= t
    return brain


class _Scan:
    """What one pass over a volume learns: brain mask, moments, bounding box, tumour voxels."""

    def __init__(self, image: np.ndarray, mask: np.ndarray | None) -> None:
        """Scan slab by slab (each slab is read from memory once and stays in cache).

        Args:
            image: (C, D, H, W), exactly 0 outside the brain.
            mask: (K, D, H, W) class channels, or None.
        """
        n_channels, depth = image.shape[0], image.shape[1]
        plane_shape = image.shape[2:]
        plane_size = int(np.prod(plane_shape))
        slabs = _slabs(image.shape[1:])
        rows = (slabs[0].stop - slabs[0].start) if slabs else 0
        self.brain = np.empty(image.shape[1:], bool)
        self.sums = np.zeros((n_channels, 2), np.float64)  # sum of x and of x^2 (background is 0)
        tmp = np.empty((rows,) + plane_shape, bool)
        work = np.empty((rows,) + plane_shape, np.float32)
        along_z = np.zeros(depth, bool)
        plane = np.zeros(plane_shape, bool)
        n_classes = mask.shape[0] if mask is not None else 0
        self.class_voxels = [0] * n_classes
        tumour_parts = []
        n_brain = 0
        for sl in reversed(slabs):  # the reader wrote the last slices last: they are still in cache
            k = sl.stop - sl.start
            b, t, w = self.brain[sl], tmp[:k], work[:k]
            for c in range(n_channels):
                x = image[c, sl]
                if c == 0:
                    np.not_equal(x, 0, out=b)
                else:
                    np.not_equal(x, 0, out=t)
                    b |= t
                self.sums[c, 0] += float(x.sum())  # float32 within a slab, float64 across slabs
                if x.dtype == np.float32 and x.flags.c_contiguous:
                    flat = x.reshape(-1)
                    self.sums[c, 1] += float(np.einsum("i,i->", flat, flat))  # one pass for sum(x^2)
                else:
                    np.square(x, out=w, casting="unsafe")
                    self.sums[c, 1] += float(w.sum())
            n_brain += int(np.count_nonzero(b))
            region = b
            if mask is not None:
                for j in range(n_classes):
                    self.class_voxels[j] += int(np.count_nonzero(mask[j, sl]))
                tumour = np.logical_or.reduce(mask[:, sl], axis=0) if n_classes > 1 else mask[0, sl] != 0
                tumour_parts.append(np.flatnonzero(tumour) + sl.start * plane_size)
                region = b | tumour
            along_z[sl] = region.any(axis=(1, 2))
            plane |= region.any(axis=0)
        self.n_brain = n_brain
        self.tumour_flat = np.concatenate(tumour_parts[::-1]) if tumour_parts else np.zeros(0, np.int64)
        self.box: list[tuple[int, int]] | None = []
        for profile in (along_z, plane.any(axis=1), plane.any(axis=0)):
            hits = np.flatnonzero(profile)
            if hits.size == 0:
                self.box = None
                break
            self.box.append((int(hits[0]), int(hits[-1]) + 1))

    def moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel mean and std over brain voxels from the plain sums; None when that is
        ill-conditioned (mean^2 > 100 var: too many digits cancel) or there is no brain."""
        if not self.n_brain:
            return None
        mean = self.sums[:, 0] / self.n_brain
        var = self.sums[:, 1] / self.n_brain - mean**2
        if np.all(var > 0) and np.all(mean**2 <= 100 * var):
            return mean, np.sqrt(var)
        return None


def normalize_volume(image: np.ndarray, brain: np.ndarray | None = None,
                     dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each channel over brain voxels; background stays exactly 0.

    This is the normalisation of the cache and of ``tumorlib predict`` on raw input. Sums are
    accumulated in float64 over float32 slabs of a few slices (cache-sized, so no float64 copy of
    the volume is made); a channel with zero std is only centred. Mean and std agree with a float64
    computation to about 1e-6 relative, far below the float16 resolution (5e-4) of the cache.

    Args:
        image: (C, D, H, W) float intensities (any float dtype).
        brain: (D, H, W) bool brain voxels; None computes ``brain_mask(image)``.
        dtype: dtype of the result (float32 by default; the cache stores float16).

    Returns:
        normalized: (C, D, H, W) of ``dtype``, 0 outside the brain.
        mean: (C,) float64 per-channel mean over brain voxels (0 with no brain voxel).
        std: (C,) float64 per-channel std over brain voxels (1 where it is 0).

    Raises:
        ValueError: an image that is not 4-D or a brain mask of another shape.
    """
    if image.ndim != 4:
        raise ValueError(f"normalize_volume: image must be (C, D, H, W), got shape {image.shape}")
    moments = None
    background_zero = brain is None  # computed here, so the image is 0 everywhere else
    if brain is None:
        scan = _Scan(image, None)
        brain, moments = scan.brain, scan.moments()
    elif brain.shape != image.shape[1:]:
        raise ValueError(f"normalize_volume: brain mask {brain.shape} does not match image {image.shape}")
    if moments is None:
        moments = _brain_moments(image, brain)
    out = _zscore(image, brain, moments[0], moments[1], dtype, background_zero)
    return out, moments[0], moments[1]


def _zscore_slabs(image: np.ndarray, brain: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  background_zero: bool = False) -> Iterator[tuple[int, slice, np.ndarray]]:
    """``(image - mean) / std`` on brain voxels, 0 elsewhere, as ``(channel, slab, float32 values)``
    in file order (channel by channel, slabs along D); the values buffer is reused.

    ``background_zero`` promises ``image == 0`` outside ``brain``: then the values are
    ``x / std + brain * (-mean / std)``, one pass fewer.
    """
    import torch

    slabs = _slabs(image.shape[1:])
    buf_shape = ((slabs[0].stop - slabs[0].start) if slabs else 0,) + image.shape[2:]
    inside = np.empty(buf_shape, np.float32)
    work = np.empty(buf_shape, np.float32)
    fast = background_zero and image.dtype == np.float32
    for c in range(image.shape[0]):
        scale = np.float32(1.0 / std[c])
        for sl in slabs:
            k = sl.stop - sl.start
            w = work[:k]
            if fast:
                np.multiply(brain[sl], np.float32(-mean[c]) * scale, out=w)
                wt = torch.from_numpy(w)
                torch.add(wt, torch.from_numpy(image[c, sl]), alpha=float(scale), out=wt)
            else:
                ins = inside[:k]
                np.copyto(ins, brain[sl])
                np.subtract(image[c, sl], np.float32(mean[c]), out=w, casting="unsafe")
                w *= ins
                w *= scale
            yield c, sl, w


def _zscore(image: np.ndarray, brain: np.ndarray, mean: np.ndarray, std: np.ndarray,
            dtype: np.dtype | type, background_zero: bool = False) -> np.ndarray:
    """``(image - mean) / std`` on brain voxels, 0 elsewhere, as a new (C, D, H, W) array of ``dtype``."""
    out = np.empty(image.shape, dtype)
    with _single_thread_torch():
        for c, sl, w in _zscore_slabs(image, brain, mean, std, background_zero):
            _cast_into(out[c, sl], w)
    return out


def _brain_moments(image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over ``brain`` voxels, whatever the background holds.

    Sums of x - K over brain voxels, with K the mean of a 1/64 subsample, lose no digits even when
    the mean is large against the std; float32 per slab, float64 across slabs.
    """
    n_channels = image.shape[0]
    n_brain = int(np.count_nonzero(brain))
    mean = np.zeros(n_channels, np.float64)
    std = np.ones(n_channels, np.float64)
    if not n_brain:
        return mean, std
    slabs = _slabs(image.shape[1:])
    buf_shape = ((slabs[0].stop - slabs[0].start) if slabs else 0,) + image.shape[2:]
    inside = np.empty(buf_shape, np.float32)
    work = np.empty(buf_shape, np.float32)
    sub = (slice(None, None, 4),) * 3
    brain_sub = brain[sub]
    shift = np.array([float(image[c][sub][brain_sub].mean(dtype=np.float64)) if brain_sub.any() else 0.0
                      for c in range(n_channels)]).astype(np.float32).astype(np.float64)  # exact in float32
    sums = np.zeros((n_channels, 2), np.float64)  # sums of (x - K) and (x - K)^2 over brain voxels
    for sl in slabs:
        k = sl.stop - sl.start
        ins, w = inside[:k], work[:k]
        np.copyto(ins, brain[sl])
        for c in range(n_channels):
            np.subtract(image[c, sl], np.float32(shift[c]), out=w, casting="unsafe")
            w *= ins
            sums[c, 0] += float(w.sum())
            np.square(w, out=w)
            sums[c, 1] += float(w.sum())
    delta = sums[:, 0] / n_brain
    mean = shift + delta
    var = np.maximum(sums[:, 1] / n_brain - delta**2, 0.0)
    std = np.where(var > 0, np.sqrt(var), 1.0)
    return mean, std


@contextlib.contextmanager
def _single_thread_torch() -> Iterator[None]:
    """Run torch's CPU kernels on one thread (its thread pool costs more than it gains on slabs)."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``; float32 to float16 through torch (numpy's cast is ~10x slower here)."""
    if dst.dtype == np.float16 and src.dtype == np.float32 and dst.flags.c_contiguous:
        import torch

        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        dst[...] = src


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
    plan = _resample_and_plan(image, mask, cache_hw, margin, volume_id)
    image_c = _zscore(plan.image, plan.brain, plan.mean, plan.std, dtype, background_zero=True)
    mask_c = np.ascontiguousarray(plan.mask, dtype=np.uint8) if plan.mask is not None else None
    return image_c, mask_c, plan.entry


def _resample_and_plan(image: np.ndarray, mask: np.ndarray | None, cache_hw: int | None, margin: int,
                       volume_id: int) -> _Plan:
    """Check shapes, zoom in-plane if asked, then ``_plan``; the entry gains source shape and zoom."""
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


class _Plan:
    """A volume ready to be z-scored: cropped views, brain mask, moments and its index entry."""

    def __init__(self, image: np.ndarray, mask: np.ndarray | None, brain: np.ndarray, mean: np.ndarray,
                 std: np.ndarray, entry: dict[str, Any]) -> None:
        self.image, self.mask, self.brain, self.mean, self.std, self.entry = image, mask, brain, mean, std, entry


def _plan(image: np.ndarray, mask: np.ndarray | None, margin: int, volume_id: int) -> _Plan:
    """Scan a (resampled) volume, choose the crop, compute the moments and the index entry."""
    resampled_shape = tuple(int(n) for n in image.shape[1:])
    scan = _Scan(image, mask)
    box = scan.box if scan.box is not None else [(0, n) for n in resampled_shape]  # empty: keep it whole
    box = [(max(0, a - margin), min(n, b + margin)) for (a, b), n in zip(box, resampled_shape)]
    sl = tuple(slice(a, b) for a, b in box)
    brain_c = scan.brain[sl]
    image_view = image[(slice(None),) + sl]
    moments = scan.moments()
    mean, std = moments if moments is not None else _brain_moments(image_view, brain_c)
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
    return _Plan(image_view, mask_view, brain_c, mean, std, entry)


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


cache_to_source = uncrop  # the name that says which way it maps
