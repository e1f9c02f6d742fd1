"""Normalisation maths of the cache: brain mask, the one-pass volume scan, z-scoring slab by slab.

Each volume is scanned once (brain mask, moments, bounding box, tumour voxels) by ``VolumeScan`` and then
z-scored slab by slab (``zscore_slabs``), so the build costs little more than reading the slices;
``normalize_volume`` is the plain reference version of the same z-score. Slabs are a few slices along D
(``slab_ranges``) so each working set stays in the CPU cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

__all__ = [
    "SLAB_VOXELS",
    "VolumeScan",
    "brain_mask",
    "brain_moments",
    "cast_into",
    "normalize_volume",
    "single_thread_torch",
    "slab_ranges",
    "zscore",
    "zscore_slabs",
]

#: Voxels per slab of the slab-wise passes (a slab stays in the CPU cache).
SLAB_VOXELS = 1 << 17


def slab_ranges(shape: tuple[int, ...]) -> list[slice]:
    """Slices along D holding about ``SLAB_VOXELS`` voxels each (cache-sized working sets)."""
    depth, plane = shape[0], int(np.prod(shape[1:]))
    step = max(1, SLAB_VOXELS // max(plane, 1))
    return [slice(z, min(z + step, depth)) for z in range(0, depth, step)]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain voxels: nonzero in any channel.

    Args:
        image: (C, D, H, W) intensities, exactly 0 outside the brain (skull-stripped).

    Returns:
        (D, H, W) bool.
    """
    brain = np.empty(image.shape[1:], bool)
    slabs = slab_ranges(image.shape[1:])
    tmp = np.empty((slabs[0].stop - slabs[0].start,) + image.shape[2:], bool) if slabs else None
    for sl in slabs:
        b, t = brain[sl], tmp[: sl.stop - sl.start]
        np.not_equal(image[0, sl], 0, out=b)
        for c in range(1, image.shape[0]):
            np.not_equal(image[c, sl], 0, out=t)
            b |= t
    return brain


class VolumeScan:
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
        slabs = slab_ranges(image.shape[1:])
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
        scan = VolumeScan(image, None)
        brain, moments = scan.brain, scan.moments()
    elif brain.shape != image.shape[1:]:
        raise ValueError(f"normalize_volume: brain mask {brain.shape} does not match image {image.shape}")
    if moments is None:
        moments = brain_moments(image, brain)
    out = zscore(image, brain, moments[0], moments[1], dtype, background_zero)
    return out, moments[0], moments[1]


def zscore_slabs(image: np.ndarray, brain: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  background_zero: bool = False) -> Iterator[tuple[int, slice, np.ndarray]]:
    """``(image - mean) / std`` on brain voxels, 0 elsewhere, as ``(channel, slab, float32 values)``
    in file order (channel by channel, slabs along D); the values buffer is reused.

    ``background_zero`` promises ``image == 0`` outside ``brain``: then the values are
    ``x / std + brain * (-mean / std)``, one pass fewer.
    """
    import torch

    slabs = slab_ranges(image.shape[1:])
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


def zscore(image: np.ndarray, brain: np.ndarray, mean: np.ndarray, std: np.ndarray,
            dtype: np.dtype | type, background_zero: bool = False) -> np.ndarray:
    """``(image - mean) / std`` on brain voxels, 0 elsewhere, as a new (C, D, H, W) array of ``dtype``."""
    out = np.empty(image.shape, dtype)
    with single_thread_torch():
        for c, sl, w in zscore_slabs(image, brain, mean, std, background_zero):
            cast_into(out[c, sl], w)
    return out


def brain_moments(image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    slabs = slab_ranges(image.shape[1:])
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
def single_thread_torch() -> Iterator[None]:
    """Run torch's CPU kernels on one thread inside the block (its thread pool costs more than it gains
    on slabs and patches); the thread count is restored after."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``; float32 to float16 through torch (numpy's cast is ~10x slower here)."""
    if dst.dtype == np.float16 and src.dtype == np.float32 and dst.flags.c_contiguous:
        import torch

        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        dst[...] = src
