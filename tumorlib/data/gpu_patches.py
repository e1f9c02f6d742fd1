"""Training patches cut on the device from the whole cropped cache held in device memory.

With the cache resident on the GPU (BraTS2020 cropped is about 11 GB of float16 images), a patch is a
slice of a device tensor: no DataLoader workers, no host-to-device copy per batch. The random choices
are those of ``BraTS3DDataset`` exactly (its ``plan`` is called for every sample: 60 % tumour-centred
patches clamped into the volume, uniform otherwise, zero padding where a volume is smaller than the
patch, the same flips and intensity draws), so sample ``(epoch, index)`` is the same patch, bit for
bit, on either path, and a run can switch paths without changing its results.

Memory: 4 float16 image channels (8 bytes) and one byte of packed mask bits (bit ``c`` = class
channel ``c``) per cached voxel; ``resident_nbytes`` gives the total before anything is loaded and
``fits_on_device`` compares it with the free device memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import load_cache_index, load_cached_volume
from .dataset import BraTS3DDataset, EpochSampler
from .patches import PatchPlan

__all__ = ["DevicePatchLoader", "DevicePatchSampler", "fits_on_device", "resident_nbytes"]

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
_MASK_CHANNELS = 3


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def resident_nbytes(cache_dir: str | os.PathLike, volume_ids: Sequence[int] | None = None,
                    dtype: str | torch.dtype = "float16") -> int:
    """Bytes the cached volumes take when held by ``DevicePatchSampler`` (read from the index only).

    Args:
        cache_dir: a cache folder from ``build_cache``.
        volume_ids: the volumes; None: every cached volume.
        dtype: image dtype on the device.

    Returns:
        ``sum(voxels) * (4 * itemsize + 1)``: four image channels and one byte of mask bits per voxel.

    Raises:
        CacheError: no cache index in ``cache_dir``.
        KeyError: a volume not in the cache.
    """
    index = load_cache_index(cache_dir)
    ids = [int(v) for v in (volume_ids if volume_ids is not None else index["volumes"])]
    itemsize = torch.empty((), dtype=_as_dtype(dtype)).element_size()
    total = 0
    for vid in ids:
        entry = index["volumes"].get(str(vid))
        if entry is None:
            raise KeyError(f"volume {vid} is not in the cache {cache_dir}")
        total += int(np.prod(entry["shape"])) * (4 * itemsize + 1)
    return total


def fits_on_device(nbytes: int, device: str | torch.device, fraction: float = 0.5) -> bool:
    """Whether ``nbytes`` fit in ``fraction`` of the memory now free on ``device``.

    The rest stays for the model, activations and the allocator (training the ``full`` model at batch 2
    takes about 4-8 GiB on top of the data).

    Args:
        nbytes: bytes to hold.
        device: a CUDA device (free memory from ``torch.cuda.mem_get_info``) or the CPU (available RAM
            from ``os.sysconf``; False where the platform cannot say).
        fraction: share of the free memory the data may take, in (0, 1].

    Returns:
        True when the data fit.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "cpu":
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return False
    else:
        return False
    return int(nbytes) <= fraction * free


class DevicePatchSampler:
    """Training patches cut on ``device`` from cached volumes held there, as ``BraTS3DDataset`` cuts them.

    All volumes are loaded once into one flat image tensor and one flat mask-bit tensor on the device.
    ``sampler[(epoch, index)]`` (or ``sampler[index]`` with the epoch from ``set_epoch``) returns the
    same patch as ``BraTS3DDataset(...)[(epoch, index)]`` with the same arguments, on the device.
    ``loader(batch_size)`` iterates batches in the order of ``make_loader`` (an ``EpochSampler``).

    Args:
        cache_dir: a cache folder from ``build_cache``.
        volume_ids: the volumes to sample from (e.g. the training split).
        patch_size: (pd, ph, pw).
        tumor_prob: probability that a patch is centred on a tumour voxel.
        augment: random flips of the three axes, drawn as ``BraTS3DDataset`` draws them.
        seed: seed of every random choice.
        samples_per_epoch: ``len(sampler)``; None: one patch per volume.
        device: where the volumes live and patches are cut (``"cuda"``, ``"cpu"``, ...).
        dtype: image dtype on the device and of the patches (``"float16"``: the cache's own dtype).
        progress: tqdm bar while loading the volumes.
        intensity_aug: per-channel intensity scale/shift, drawn as ``BraTS3DDataset`` draws them.
        tumor_sampling: ``"class"`` or ``"voxel"`` (see ``BraTS3DDataset``).

    Raises:
        CacheError: the cache is missing or incompatible.
        KeyError: a volume id not in the cache.
        ValueError: an empty volume list, a bad patch size, probability or dtype.
        torch.OutOfMemoryError: the volumes do not fit on the device (check ``fits_on_device`` first).
    """

    def __init__(self, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                 patch_size: Sequence[int] = (64, 160, 160), tumor_prob: float = 0.6, augment: bool = False,
                 seed: int = 0, samples_per_epoch: int | None = None, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float16", progress: bool = False, intensity_aug: bool = False,
                 tumor_sampling: str = "voxel") -> None:
        self.dtype = _as_dtype(dtype)
        # the plans come from BraTS3DDataset itself: one sampling rule, two places to cut
        self.planner = BraTS3DDataset(cache_dir, volume_ids, patch_size=patch_size, tumor_prob=tumor_prob,
                                      ram_cache_bytes=0, augment=augment, seed=seed,
                                      samples_per_epoch=samples_per_epoch, dtype=self.dtype,
                                      intensity_aug=intensity_aug, tumor_sampling=tumor_sampling)
        self.cache_dir = Path(cache_dir)
        self.device = torch.device(device)
        self.patch_size = self.planner.patch_size
        self.seed = self.planner.seed
        self._shapes: dict[int, tuple[int, int, int]] = {}
        self._offsets: dict[int, int] = {}
        self._images, self._bits = self._load(progress)
        self._shifts = torch.arange(_MASK_CHANNELS, dtype=torch.uint8, device=self.device).view(-1, 1, 1, 1)

    def _load(self, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from tumorlib.core.progress import tqdm

        index = self.planner.index
        ids = self.planner.volume_ids
        total = 0
        for vid in ids:
            shape = tuple(int(s) for s in index["volumes"][str(vid)]["shape"])
            self._shapes[vid] = shape
            self._offsets[vid] = total
            total += int(np.prod(shape))
        images = torch.empty(4 * total, dtype=self.dtype, device=self.device)
        bits = torch.empty(total, dtype=torch.uint8, device=self.device)
        for vid in tqdm(ids, desc=f"volumes to {self.device}", unit="vol", disable=not progress, leave=False):
            image, mask = load_cached_volume(self.cache_dir, vid, mmap=True, index=index)
            n, o = int(np.prod(self._shapes[vid])), self._offsets[vid]
            packed = np.zeros(mask.shape[1:], np.uint8)
            for c in range(mask.shape[0]):
                packed |= (np.asarray(mask[c]) != 0).astype(np.uint8) << c
            src = torch.from_numpy(np.array(image)).reshape(-1)  # a private, writable copy of the map
            images[4 * o:4 * (o + n)].copy_(src.to(self.dtype) if self.dtype != torch.float16 else src)
            bits[o:o + n].copy_(torch.from_numpy(packed).reshape(-1))
        return images, bits

    # ----------------------------------------------------------------- Dataset-like interface

    @property
    def nbytes(self) -> int:
        """Bytes held on the device (images and mask bits)."""
        return self._images.element_size() * self._images.numel() + self._bits.numel()

    @property
    def epoch(self) -> int:
        """The epoch used by ``sampler[i]`` and by the loader (set with ``set_epoch``)."""
        return self.planner.epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch used by ``sampler[i]`` and by ``loader``."""
        self.planner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.planner)

    def plan(self, index: int, epoch: int | None = None) -> PatchPlan:
        """The random choices of one sample (``BraTS3DDataset.plan``)."""
        return self.planner.plan(index, epoch)

    def _volume(self, vid: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape, o = self._shapes[vid], self._offsets[vid]
        n = int(np.prod(shape))
        return self._images[4 * o:4 * (o + n)].view(4, *shape), self._bits[o:o + n].view(*shape)

    def _cut(self, plan: PatchPlan, image_out: torch.Tensor, bits_out: torch.Tensor) -> None:
        """Write the planned patch into zeroed ``image_out`` (4, pd, ph, pw) and ``bits_out`` (pd, ph, pw)."""
        image, bits = self._volume(plan.volume_id)
        src, dst = [], []
        for start, p, size in zip(plan.start, self.patch_size, bits.shape):
            a, b = max(start, 0), min(start + p, size)
            src.append(slice(a, b))
            dst.append(slice(a - start, b - start))
        image_out[(slice(None), *dst)] = image[(slice(None), *src)]
        bits_out[tuple(dst)] = bits[tuple(src)]

    def _finish(self, plan: PatchPlan, image: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips and intensity augmentation as ``BraTS3DDataset.read_patch``; mask bits to (3, ...) uint8."""
        if any(plan.flips):
            axes = [a for a, f in enumerate(plan.flips) if f]
            image = torch.flip(image, [a + 1 for a in axes])
            bits = torch.flip(bits, axes)
        if plan.scale is not None:
            work = image.float()
            brain = (work != 0).any(dim=0)
            scale = torch.as_tensor(plan.scale, device=self.device).view(-1, 1, 1, 1)
            shift = torch.as_tensor(plan.shift, device=self.device).view(-1, 1, 1, 1)
            work *= scale
            work += shift * brain
            image = work.to(torch.float16).to(self.dtype)  # rounded through the cache's dtype, as read_patch
        mask = (bits.unsqueeze(0) >> self._shifts) & 1
        return image, mask

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch on the device.

        Args:
            item: a sample index (epoch from ``set_epoch``) or ``(epoch, index)``.

        Returns:
            image: (4, pd, ph, pw) of ``dtype``; mask: (3, pd, ph, pw) uint8; both on ``device``.
        """
        image, mask = self.batch([item])
        return image[0], mask[0]

    def batch(self, items: Sequence[int | tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Several patches stacked.

        Args:
            items: sample indices or ``(epoch, index)`` pairs.

        Returns:
            image: (B, 4, pd, ph, pw) of ``dtype``; mask: (B, 3, pd, ph, pw) uint8; both on ``device``.
        """
        plans = []
        for item in items:
            epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
            plans.append(self.plan(int(index), int(epoch)))
        images = torch.zeros((len(plans), 4, *self.patch_size), dtype=self.dtype, device=self.device)
        bits = torch.zeros((len(plans), *self.patch_size), dtype=torch.uint8, device=self.device)
        for k, plan in enumerate(plans):
            self._cut(plan, images[k], bits[k])
        if not any(any(p.flips) or p.scale is not None for p in plans):
            return images, (bits.unsqueeze(1) >> self._shifts.unsqueeze(0)) & 1
        outs = [self._finish(plan, images[k], bits[k]) for k, plan in enumerate(plans)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def loader(self, batch_size: int, shuffle: bool = False, rank: int = 0, world_size: int = 1,
               drop_last: bool = False, sampler_seed: int | None = None) -> DevicePatchLoader:
        """Batches of one epoch in the order ``make_loader`` gives them.

        Args:
            batch_size: patches per batch.
            shuffle: permute the indices per (seed, epoch), as ``EpochSampler``.
            rank: this process's DDP rank (each rank gets every ``world_size``-th index).
            world_size: number of DDP processes.
            drop_last: drop an incomplete last batch (as ``DataLoader(drop_last=True)``).
            sampler_seed: seed of the shuffle; None: the sampler's ``seed`` (``make_loader`` uses
                ``config.seed``, which ``make_datasets`` also gives the training dataset).

        Returns:
            A re-iterable ``DevicePatchLoader``.
        """
        return DevicePatchLoader(self, batch_size, EpochSampler(
            self, shuffle=shuffle, seed=self.seed if sampler_seed is None else sampler_seed, rank=rank,
            world_size=world_size), drop_last=drop_last)


class DevicePatchLoader:
    """Iterable of (image (B, 4, pd, ph, pw), mask (B, 3, pd, ph, pw)) batches on the device.

    Stands in for a ``DataLoader``: ``len(loader)`` batches an epoch, the epoch read from the sampler
    when iteration starts (call ``sampler.set_epoch(e)`` before each epoch).

    Args:
        sampler: the ``DevicePatchSampler``.
        batch_size: patches per batch.
        index_sampler: yields ``(epoch, index)`` pairs (an ``EpochSampler``).
        drop_last: drop an incomplete last batch.
    """

    def __init__(self, sampler: DevicePatchSampler, batch_size: int, index_sampler: Any,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.index_sampler = index_sampler
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.index_sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items = list(self.index_sampler)
        for first in range(0, len(items), self.batch_size):
            chunk = items[first:first + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield self.sampler.batch(chunk)
