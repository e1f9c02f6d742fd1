"""The ``.npy`` pre-cache: each volume normalised once, cropped to the brain and stored as float16.

Reading one 155x240x240 volume from its 155 HDF5 slices takes 0.3-0.5 s on a warm page cache here
(2.3 s in the seed); the same volume from the cache loads in about 0.015 s, or is memory-mapped so
patches are cut without reading the whole volume. The cache folder holds, per volume::

    v{id}_img.npy    (4, D', H', W') float16, each channel z-scored over brain voxels, background 0
    v{id}_mask.npy   (3, D', H', W') uint8, channels necrosis/NET, edema, enhancing
    v{id}_meta.json  the volume's index entry (written last: it marks the volume as finished)

and ``index.json``, written at the end of a build, with every entry plus the build settings. An entry
records the source folder and shape, the in-plane zoom (``cache_hw``), the crop box, per-channel mean
and std, per-class voxel counts and a sample of tumour-voxel coordinates for tumour-centred sampling.

Each volume is scanned once (brain mask, moments, bounding box, tumour voxels) and then z-scored slab
by slab straight into its file, so the build costs little more than reading the slices.
Every file is written to a temporary name and renamed, so a build killed at any point and run again
skips the finished volumes, redoes the interrupted one and ends byte-identical to an uninterrupted
build. The source of each volume is a plain callable ``reader(volume_id) -> (image, mask)``, so any
format (Kaggle HDF5 slices, NIfTI cases) is cached by the same code (``build_cache_from_reader``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "CACHE_VERSION",
    "INDEX_NAME",
    "CacheError",
    "build_cache",
    "build_cache_from_reader",
    "cache_summary",
    "brain_mask",
    "cache_to_source",
    "cached_volume_ids",
    "ensure_cache",
    "kaggle_fingerprint",
    "load_cache_index",
    "load_cached_volume",
    "normalize_volume",
    "prepare_volume",
    "source_to_cache",
    "uncrop",
]

CACHE_VERSION = 1
INDEX_NAME = "index.json"
FORMAT_NAME = "tumorlib-cache"
_SLAB_VOXELS = 1 << 17  # voxels per slab of the slab-wise passes (a slab stays in the CPU cache)
TUMOR_SAMPLE = 1024  # tumour-voxel coordinates kept per volume for tumour-centred sampling

Reader = Callable[[int], tuple[np.ndarray, np.ndarray]]
Fingerprint = Callable[[int], str]


class CacheError(ValueError):
    """A cache folder that is missing, incomplete, made from other data or by another version."""


# --------------------------------------------------------------------------- preprocessing

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


# --------------------------------------------------------------------------- files

def _image_name(volume_id: int) -> str:
    return f"v{volume_id}_img.npy"


def _mask_name(volume_id: int) -> str:
    return f"v{volume_id}_mask.npy"


def _meta_name(volume_id: int) -> str:
    return f"v{volume_id}_meta.json"


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` to a temporary sibling, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _dump_entry(entry: dict[str, Any]) -> str:
    """One JSON line; keys sorted so the bytes depend only on the content."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _dump_index(index: dict[str, Any]) -> str:
    """Readable JSON: header keys one per line, each volume entry on one line."""
    lines = ["{"]
    header = {k: v for k, v in index.items() if k != "volumes"}
    for key in sorted(header):
        lines.append(f"  {json.dumps(key)}: {json.dumps(header[key], sort_keys=True)},")
    vols = index["volumes"]
    lines.append('  "volumes": {')
    keys = sorted(vols, key=int)
    for i, key in enumerate(keys):
        lines.append(f"    {json.dumps(key)}: {_dump_entry(vols[key])}{',' if i < len(keys) - 1 else ''}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``cache_dir/.lock`` (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, builds into one folder must not overlap
        yield
        return
    with open(cache_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compute_one(reader: Reader, volume_id: int, cache_hw: int | None, margin: int, source: str,
                 fingerprint: str | None) -> _Plan:
    """Read and plan one volume (crop, moments, index entry); the z-scoring happens while writing."""
    image, mask = reader(volume_id)
    plan = _resample_and_plan(image, mask, cache_hw, margin, volume_id)
    plan.entry = {"volume": int(volume_id), "source": source, "fingerprint": fingerprint, "cache_hw": cache_hw,
                  "margin": int(margin), "image_file": _image_name(volume_id), "mask_file": _mask_name(volume_id),
                  **plan.entry}
    return plan


def _stream_image(f: Any, plan: _Plan) -> None:
    """Write the z-scored float16 image as ``.npy`` slab by slab (same bytes as ``np.save`` of
    ``prepare_volume``'s image, without holding the whole float16 volume in memory)."""
    shape = (plan.image.shape[0],) + tuple(plan.entry["shape"])
    np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
    out = None
    with _single_thread_torch():
        for _, _, w in _zscore_slabs(plan.image, plan.brain, plan.mean, plan.std, background_zero=True):
            if out is None or out.shape[0] < w.shape[0]:
                out = np.empty(w.shape, np.float16)
            o = out[: w.shape[0]]
            _cast_into(o, w)
            f.write(memoryview(o).cast("B"))


def _stream_mask(f: Any, plan: _Plan) -> None:
    """Write the cropped uint8 mask as ``.npy`` slab by slab (same bytes as ``np.save``)."""
    m = plan.mask
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": m.shape})
    slabs = _slabs(m.shape[1:])
    buf = np.empty(((slabs[0].stop - slabs[0].start) if slabs else 0,) + m.shape[2:], np.uint8)
    for k in range(m.shape[0]):
        for sl in slabs:
            b = buf[: sl.stop - sl.start]
            np.copyto(b, m[k, sl], casting="unsafe")
            f.write(memoryview(b).cast("B"))


def _write_one(cache: Path, plan: _Plan) -> dict[str, Any]:
    """Write a planned volume: image, mask, then the meta file that marks it finished."""
    volume_id = plan.entry["volume"]
    _atomic_write(cache / _image_name(volume_id), lambda f: _stream_image(f, plan))
    _atomic_write(cache / _mask_name(volume_id), lambda f: _stream_mask(f, plan))
    text = _dump_entry(plan.entry) + "\n"
    _atomic_write(cache / _meta_name(volume_id), lambda f: f.write(text), mode="w")
    return plan.entry


def _cache_one(reader: Reader, volume_id: int, cache_dir: str, cache_hw: int | None, margin: int,
               source: str, fingerprint: str | None) -> dict[str, Any]:
    """Read, prepare and write one volume; returns its index entry. Runs in a worker process."""
    return _write_one(Path(cache_dir), _compute_one(reader, volume_id, cache_hw, margin, source, fingerprint))


def _read_entry(cache: Path, volume_id: int) -> dict[str, Any] | None:
    """The finished volume's entry, or None when its files are not all there."""
    meta = cache / _meta_name(volume_id)
    if not meta.is_file():
        return None
    if not (cache / _image_name(volume_id)).is_file() or not (cache / _mask_name(volume_id)).is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None


def _settings(cache_hw: int | None, margin: int, reader_name: str) -> dict[str, Any]:
    return {"cache_hw": cache_hw, "margin": int(margin), "reader": reader_name, "dtype": "float16",
            "tumor_sample": TUMOR_SAMPLE}


def _check_settings(cache: Path, header: dict[str, Any], settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        if header.get(key) != value:
            raise CacheError(f"cache {cache} was built with {key}={header.get(key)!r}, this build asks for "
                             f"{key}={value!r}; delete the folder or choose another cache folder")


# --------------------------------------------------------------------------- build

def build_cache_from_reader(reader: Reader, volume_ids: Sequence[int], cache_dir: str | os.PathLike, *,
                            source: str, fingerprint: Fingerprint | None = None, reader_name: str = "custom",
                            workers: int = 2, cache_hw: int | None = None, margin: int = 4,
                            progress: bool = True) -> Path:
    """Cache volumes from any source given as ``reader(volume_id) -> (image, mask)``.

    Finished volumes (all three files present, same fingerprint) are skipped, so an interrupted
    build is resumed by running it again. Volumes already in the index and not asked for stay in it.

    Args:
        reader: returns image (4, D, H, W) float and mask (3, D, H, W) uint8 for a volume id;
            must be picklable when ``workers > 1`` (a module-level function or a ``functools.partial``).
        volume_ids: the volumes to cache.
        cache_dir: output folder (created).
        source: the data folder, recorded in the index; a cache of another folder is refused.
        fingerprint: ``fingerprint(volume_id) -> str`` identifying the source content cheaply;
            finished volumes whose fingerprint changed are refused. None records no fingerprint.
        reader_name: recorded in the index (``kaggle``, ``nifti``, ...).
        workers: processes working on volumes in parallel (1: in this process).
        cache_hw: largest in-plane size (zoom down when the data is bigger); None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data, other settings or another version.
        Exception: whatever the reader raises for bad input, unchanged.
    """
    from tqdm.auto import tqdm

    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    ids = sorted(int(v) for v in volume_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"build_cache: duplicate volume ids in {ids}")
    settings = _settings(cache_hw, margin, reader_name)
    with _build_lock(cache):
        for tmp in cache.glob(".*.tmp*"):  # leftovers of a killed build (we hold the lock)
            tmp.unlink()
        index_path = cache / INDEX_NAME
        kept: dict[int, dict[str, Any]] = {}  # volumes already indexed and not asked for: stay
        if index_path.is_file():
            header = load_cache_index(cache)
            _check_settings(cache, header, settings)
            if header.get("source") != source:
                raise CacheError(f"cache {cache} was built from {header.get('source')}, not {source}; "
                                 "delete it or choose another cache folder")
            kept = {int(k): e for k, e in header["volumes"].items() if int(k) not in set(ids)}
        todo: list[int] = []
        entries: dict[int, dict[str, Any]] = {}
        for vid in ids:
            entry = _read_entry(cache, vid)
            if entry is None:
                todo.append(vid)
                continue
            fp = fingerprint(vid) if fingerprint is not None else None
            if entry.get("source") != source or entry.get("fingerprint") != fp:
                raise CacheError(f"cache {cache}: volume {vid} was cached from other data "
                                 f"({entry.get('source')}); delete the folder or choose another one")
            if entry.get("cache_hw") != cache_hw or entry.get("margin") != margin:
                raise CacheError(f"cache {cache}: volume {vid} was cached with cache_hw={entry.get('cache_hw')}, "
                                 f"margin={entry.get('margin')}, this build asks for cache_hw={cache_hw}, "
                                 f"margin={margin}; delete the folder or choose another one")
            entries[vid] = entry
        fps = {vid: (fingerprint(vid) if fingerprint is not None else None) for vid in todo}
        bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc="cache", unit="vol",
                   disable=not progress)
        try:
            if workers <= 1 or len(todo) <= 1:
                for vid in todo:
                    entries[vid] = _cache_one(reader, vid, str(cache), cache_hw, margin, source, fps[vid])
                    bar.update(1)
            else:
                ctx = multiprocessing.get_context()
                with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                    futures = {pool.submit(_cache_one, reader, vid, str(cache), cache_hw, margin, source,
                                           fps[vid]): vid for vid in todo}
                    try:
                        for fut in concurrent.futures.as_completed(futures):
                            entries[futures[fut]] = fut.result()
                            bar.update(1)
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
        finally:
            bar.close()
        entries.update(kept)
        all_ids = sorted(entries)
        index = {"format": FORMAT_NAME, "version": CACHE_VERSION, "source": source,
                 "volume_ids": all_ids, **settings, "volumes": {str(v): entries[v] for v in all_ids}}
        text = _dump_index(index)
        if not index_path.is_file() or index_path.read_text() != text:
            _atomic_write(index_path, lambda f: f.write(text), mode="w")
    return cache


def kaggle_fingerprint(slice_files: Sequence[str | os.PathLike]) -> str:
    """A cheap content fingerprint of one Kaggle volume: slice names and sizes, bytes of the middle slice.

    Args:
        slice_files: the volume's ``volume_{id}_slice_{s}.h5`` files in slice order.

    Returns:
        A hex digest; regenerating identical data gives the same digest.
    """
    files = [Path(f) for f in slice_files]
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    if files:  # 64 KiB from the middle of the middle slice: image data, which any other volume changes
        middle = files[len(files) // 2]
        with open(middle, "rb") as fh:
            fh.seek(max(0, middle.stat().st_size // 2 - 32768))
            h.update(fh.read(65536))
    return h.hexdigest()


def _kaggle_fingerprints(data: Path) -> Callable[[int], str]:
    """``fingerprint(volume_id)`` over one scan of the folder (unknown ids give an empty digest)."""
    from . import kaggle

    found = kaggle.find_slices(data)

    def fingerprint(volume_id: int) -> str:
        slices = found.get(int(volume_id), {})
        return kaggle_fingerprint([slices[s] for s in sorted(slices)])

    return fingerprint


def build_cache(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 2,
                cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                volume_ids: Sequence[int] | None = None) -> Path:
    """Cache a Kaggle-format BraTS2020 folder (HDF5 slices) as normalised, cropped ``.npy`` files.

    Args:
        data_dir: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.
        cache_dir: the output folder (created).
        workers: processes working on volumes in parallel.
        cache_hw: largest in-plane size (e.g. 128 on machines with little memory); None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        volume_ids: a subset of the volumes; None caches all of them.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data, other settings or another version.
        ValueError, FileNotFoundError: the reader's errors for bad input, unchanged.
    """
    from . import kaggle

    data = Path(data_dir).expanduser().resolve()
    ids = kaggle.list_volumes(data) if volume_ids is None else list(volume_ids)
    return build_cache_from_reader(
        functools.partial(kaggle.load_volume, data), ids, cache_dir, source=str(data),
        fingerprint=_kaggle_fingerprints(data), reader_name="kaggle", workers=workers,
        cache_hw=cache_hw, margin=margin, progress=progress)


def ensure_cache(config: Any, ws: Any = None, progress: bool = True) -> Path:
    """The workspace's cache, built first when it is missing or incomplete.

    Args:
        config: a ``tumorlib.config.Config`` (``cache_hw``, ``cache_margin``, ``cache_workers``).
        ws: a ``Workspace``; None resolves ``workspace(config)``.
        progress: show tqdm bars.

    Returns:
        The cache folder (``ws.cache_dir``).

    Raises:
        CacheError: the folder holds a cache of other data or incompatible settings.
    """
    from tumorlib.config import workspace

    from . import ensure_data, kaggle

    ws = ws if ws is not None else workspace(config)
    data = Path(ensure_data(config, progress=progress)).resolve()
    ids = kaggle.list_volumes(data)
    cache = Path(ws.cache_dir)
    if (cache / INDEX_NAME).is_file():
        index = load_cache_index(cache)
        _check_settings(cache, index, _settings(config.cache_hw, config.cache_margin, "kaggle"))
        if index.get("source") != str(data):
            raise CacheError(f"cache {cache} was built from {index.get('source')}, not {data}; delete it, "
                             "or set TUMORLIB_CACHE to another folder")
        if set(ids) <= set(index.get("volume_ids", [])):
            fingerprint = _kaggle_fingerprints(data)
            for vid in sorted({ids[0], ids[len(ids) // 2], ids[-1]}):  # a spot check keeps this cheap
                if index["volumes"][str(vid)].get("fingerprint") != fingerprint(vid):
                    raise CacheError(f"cache {cache}: volume {vid} was cached from other data than the "
                                     f"volume now in {data}; delete the cache folder to rebuild it")
            return cache
    return build_cache(data, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                       margin=config.cache_margin, progress=progress)


# --------------------------------------------------------------------------- read

def load_cache_index(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``index.json`` of a cache folder.

    Args:
        cache_dir: the cache folder.

    Returns:
        The index: header keys (``format``, ``version``, ``source``, ``reader``, ``cache_hw``,
        ``margin``, ``volume_ids``, ...) and ``volumes``, a dict from ``str(volume_id)`` to its entry.

    Raises:
        CacheError: no index (an unfinished build), not a tumorlib cache, or another format version.
    """
    cache = Path(cache_dir)
    path = cache / INDEX_NAME
    if not path.is_file():
        hint = " (an unfinished build: run it again)" if any(cache.glob("v*_meta.json")) else ""
        raise CacheError(f"no cache index at {path}{hint}; build it with `tumorlib cache --data DIR --out {cache}`")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err}); delete the cache and build it again") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise CacheError(f"{path} is not a tumorlib cache index")
    if index.get("version") != CACHE_VERSION:
        raise CacheError(f"{path} has cache format version {index.get('version')}, this tumorlib reads "
                         f"version {CACHE_VERSION}; delete the folder and build the cache again")
    return index


def cached_volume_ids(cache_dir: str | os.PathLike) -> list[int]:
    """The volume ids in a cache's index, sorted.

    Raises:
        CacheError: see ``load_cache_index``.
    """
    return sorted(int(k) for k in load_cache_index(cache_dir)["volumes"])


def _entry(cache: Path, index: dict[str, Any], volume_id: int) -> dict[str, Any]:
    entry = index["volumes"].get(str(int(volume_id)))
    if entry is None:
        raise KeyError(f"volume {volume_id} is not in the cache {cache} "
                       f"(it holds {len(index['volumes'])} volumes)")
    return entry


def load_cached_volume(cache_dir: str | os.PathLike, volume_id: int, mmap: bool = True,
                       index: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One cached volume.

    Args:
        cache_dir: the cache folder.
        volume_id: the volume.
        mmap: memory-map the files (read-only) instead of reading them into memory.
        index: the loaded index, to skip reading it again.

    Returns:
        image: (4, D', H', W') float16, z-scored, 0 outside the brain.
        mask: (3, D', H', W') uint8.

    Raises:
        KeyError: a volume not in the cache.
        CacheError: files missing or not matching the index (names the file).
    """
    cache = Path(cache_dir)
    index = index if index is not None else load_cache_index(cache)
    entry = _entry(cache, index, volume_id)
    mode = "r" if mmap else None
    arrays = []
    for key, channels, dtype in (("image_file", 4, np.float16), ("mask_file", 3, np.uint8)):
        path = cache / entry[key]
        try:
            arr = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheError(f"cannot read {path}: {err}") from err
        expected = (channels,) + tuple(entry["shape"])
        if arr.shape != expected or arr.dtype != dtype:
            raise CacheError(f"{path} holds {arr.dtype} {arr.shape}, the index says {np.dtype(dtype)} "
                             f"{expected}; the cache does not match its index: rebuild it")
        arrays.append(arr)
    return arrays[0], arrays[1]


def cache_summary(cache_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Any:
    """One row per cached volume: shapes, share of voxels kept by the crop, class voxels, sizes.

    Args:
        cache_dir: the cache folder.
        data_dir: the Kaggle-format source; when given, adds the size of each volume's HDF5 slices.

    Returns:
        A ``pandas.DataFrame`` indexed by volume with columns ``source_shape``, ``cached_shape``,
        ``kept_fraction`` (cached voxels / source voxels), ``brain_voxels``, ``necrosis``, ``edema``,
        ``enhancing`` (voxel counts in the cache), ``npy_mib`` and, with ``data_dir``, ``h5_mib``.

    Raises:
        CacheError: see ``load_cache_index``.
    """
    import pandas as pd

    cache = Path(cache_dir)
    index = load_cache_index(cache)
    slices = None
    if data_dir is not None:
        from . import kaggle

        slices = kaggle.find_slices(data_dir)
    rows = []
    for key in sorted(index["volumes"], key=int):
        e = index["volumes"][key]
        counts = e.get("class_voxels", [None, None, None])
        row = {
            "volume": int(key),
            "source_shape": "x".join(map(str, e["source_shape"])),
            "cached_shape": "x".join(map(str, e["shape"])),
            "kept_fraction": round(float(np.prod(e["shape"]) / np.prod(e["source_shape"])), 3),
            "brain_voxels": e["brain_voxels"],
            "necrosis": counts[0],
            "edema": counts[1],
            "enhancing": counts[2],
            "npy_mib": round(sum((cache / e[k]).stat().st_size for k in ("image_file", "mask_file")) / 2**20, 2),
        }
        if slices is not None:
            files = slices.get(int(key), {}).values()
            row["h5_mib"] = round(sum(f.stat().st_size for f in files) / 2**20, 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("volume")
