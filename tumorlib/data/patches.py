"""One patch of a cached volume: where it comes from (``PatchPlan``) and the copy that cuts it.

``BraTS3DDataset`` (``tumorlib.data.dataset``) and the GPU-resident sampler (``tumorlib.data.gpu_patches``)
draw plans; the flips of a plan are along ``SPATIAL_FLIP_AXES``, the axes flip TTA mirrors too
(``tumorlib.inference.sliding_window``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SPATIAL_FLIP_AXES", "PatchPlan", "cut_patch"]

#: The spatial axes (D, H, W) of a volume that flip TTA mirrors and training flips at random.
SPATIAL_FLIP_AXES: tuple[int, ...] = (0, 1, 2)


class PatchPlan(tuple):
    """Where a sample comes from: ``(volume_id, start (z, y, x), tumour_centred, flips, scale, shift,
    centre)``; ``centre`` is the tumour voxel (z, y, x) a tumour-centred patch was placed on, else None."""

    __slots__ = ()

    def __new__(cls, volume_id: int, start: tuple[int, int, int], tumour_centred: bool,
                flips: tuple[bool, bool, bool], scale: np.ndarray | None, shift: np.ndarray | None,
                centre: tuple[int, int, int] | None = None) -> PatchPlan:
        return super().__new__(cls, (volume_id, start, tumour_centred, flips, scale, shift, centre))

    volume_id = property(lambda self: self[0])
    start = property(lambda self: self[1])
    tumour_centred = property(lambda self: self[2])
    flips = property(lambda self: self[3])
    scale = property(lambda self: self[4])
    shift = property(lambda self: self[5])
    centre = property(lambda self: self[6])


def cut_patch(volume: np.ndarray, src: list[slice], dst: list[slice], patch_size: tuple[int, ...]) -> np.ndarray:
    """Copy ``volume[:, src]`` into a new zero-padded (C, *patch_size) array at ``dst``.

    Args:
        volume: (C, D, H, W) array (in memory or a read-only memory map).
        src: the three slices of the volume to copy.
        dst: where they land in the patch (the rest is zero padding).
        patch_size: (pd, ph, pw).

    Returns:
        (C, pd, ph, pw) array of ``volume.dtype``.

    In-memory (writable) volumes are copied with torch, whose copy kernel is about twice as fast as
    numpy's here (it uses every core); the bytes are the same either way. Read-only memory maps stay
    with numpy (torch refuses non-writable buffers).
    """
    inner = (slice(None),) + tuple(src)
    full = all(d.start == 0 and d.stop == p for d, p in zip(dst, patch_size))
    if not volume.flags.writeable:
        if full:
            return np.ascontiguousarray(volume[inner])
        out = np.zeros((volume.shape[0],) + tuple(patch_size), volume.dtype)
        out[(slice(None),) + tuple(dst)] = volume[inner]
        return out
    source = torch.from_numpy(volume)[inner]
    if full:
        return source.contiguous().numpy()
    out = torch.empty((volume.shape[0],) + tuple(patch_size), dtype=source.dtype)
    for axis, (d, p) in enumerate(zip(dst, patch_size), start=1):  # zero only the padding slabs
        out.narrow(axis, 0, d.start).zero_()
        out.narrow(axis, d.stop, p - d.stop).zero_()
    out[(slice(None),) + tuple(dst)] = source
    return out.numpy()
