"""Training patches cut from the ``.npy`` cache, and the DataLoader settings of a preset.

Tumour is under 1 % of the voxels of a BraTS volume, so uniform patches would show the network
almost no tumour: with probability ``tumor_prob`` a patch is centred on a tumour voxel (from the
index's coordinate sample), otherwise it is placed uniformly. ``tumor_sampling="class"`` picks the
class first (uniformly among the classes present in the sample), then a voxel of it, so necrosis and
enhancing-tumour centres are as frequent as edema's; ``"voxel"`` (the reference design) picks a tumour
voxel directly, so the largest class (usually edema) dominates. Training flips each of the three axes
at random (``augment``), the axes flip TTA mirrors (``tumorlib.data.patches.SPATIAL_FLIP_AXES``). Each sample is a pure function of
(seed, epoch, index), so a run reproduces with any number of DataLoader workers and DDP ranks only
need distinct indices (``EpochSampler`` hands them out).

Images come out as float16 by default (the cache's dtype: cutting a 64x160x160 patch is then a
memory copy, twice as fast as converting to float32 on the CPU); the training loop casts them to
float32 on its device (``image.to(device, torch.float32)``). Masks come out as uint8.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tumorlib.core.config_checks import TUMOR_SAMPLING
from tumorlib.core.device import process_context

from .cache import load_cache_index, load_cached_volume
from .cache.normalise import single_thread_torch
from .patches import SPATIAL_FLIP_AXES, PatchPlan, cut_patch

if TYPE_CHECKING:
    from tumorlib.core.config import Config

__all__ = ["BraTS3DDataset", "EpochSampler", "default_num_workers", "make_loader"]

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


class BraTS3DDataset(Dataset):
    """Random 3-D patches from cached volumes, deterministic per (seed, epoch, index).

    Sample ``index`` of an epoch comes from volume ``order[index % n_volumes]``, where ``order`` is a
    permutation drawn per (seed, epoch), so each epoch visits the volumes evenly. ``dataset[i]``
    uses the epoch set by ``set_epoch``; ``dataset[(epoch, i)]`` names it (``EpochSampler`` does
    this, so persistent DataLoader workers follow the epoch of the main process).

    Volumes are read through memory maps; recently used volumes are kept whole in an LRU RAM cache
    bounded by ``ram_cache_bytes`` (per process: each DataLoader worker holds its own).

    Args:
        cache_dir: a cache folder from ``build_cache``.
        volume_ids: the volumes to sample from (e.g. the training split).
        patch_size: (pd, ph, pw); volumes smaller than the patch are zero-padded (centred).
        tumor_prob: probability that a patch is centred on a tumour voxel (volumes without tumour
            always get a uniform patch).
        ram_cache_bytes: bound of the RAM cache in bytes (0 disables it).
        augment: random flips along each of the three axes (``SPATIAL_FLIP_AXES``, each with
            probability 1/2).
        seed: seed of every random choice.
        samples_per_epoch: ``len(dataset)``; None: one patch per volume.
        dtype: dtype of the image tensors: ``"float16"`` (default), ``"float32"`` or ``"bfloat16"``.
        intensity_aug: a per-channel intensity scale (x U(0.9, 1.1)) and shift (+ U(-0.1, 0.1)) on
            brain voxels.
        tumor_sampling: ``"class"`` (a class present first, then one of its voxels) or ``"voxel"`` (a
            tumour voxel directly, the reference design).

    Raises:
        CacheError: the cache is missing or incompatible.
        KeyError: a volume id not in the cache.
        ValueError: an empty volume list, a bad patch size, probability or sampling name.
    """

    def __init__(self, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                 patch_size: Sequence[int] = (64, 160, 160), tumor_prob: float = 0.6,
                 ram_cache_bytes: int = 2**30, augment: bool = False, seed: int = 0,
                 samples_per_epoch: int | None = None, dtype: str | torch.dtype = "float16",
                 intensity_aug: bool = False, tumor_sampling: str = "voxel") -> None:
        self.cache_dir = Path(cache_dir)
        self.index = load_cache_index(self.cache_dir)
        self.volume_ids = [int(v) for v in volume_ids]
        if not self.volume_ids:
            raise ValueError("BraTS3DDataset needs at least one volume id")
        missing = [v for v in self.volume_ids if str(v) not in self.index["volumes"]]
        if missing:
            raise KeyError(f"volume(s) {missing} not in the cache {self.cache_dir}")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive sides, got {patch_size}")
        if not 0.0 <= tumor_prob <= 1.0:
            raise ValueError(f"tumor_prob must lie in [0, 1], got {tumor_prob}")
        self.tumor_prob = float(tumor_prob)
        self.ram_cache_bytes = int(ram_cache_bytes)
        self.augment = bool(augment)
        self.intensity_aug = bool(intensity_aug)
        if tumor_sampling not in TUMOR_SAMPLING:
            raise ValueError(f"tumor_sampling must be one of {', '.join(TUMOR_SAMPLING)}, got {tumor_sampling!r}")
        self.tumor_sampling = tumor_sampling
        self.seed = int(seed)
        self.samples_per_epoch = len(self.volume_ids) if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.epoch = 0
        self._shapes = {v: tuple(self.index["volumes"][str(v)]["shape"]) for v in self.volume_ids}
        self._coords = {v: np.asarray(self.index["volumes"][str(v)].get("tumor_coords", []), np.int64).reshape(-1, 3)
                        for v in self.volume_ids}
        self._class_groups: dict[int, list[np.ndarray]] = {}
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None
        self._ram: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._ram_nbytes = 0

    # ----------------------------------------------------------------- sampling plan

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch used by ``dataset[i]`` and by ``EpochSampler``."""
        self.epoch = int(epoch)

    def _volume_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.volume_ids))
            self._order_epoch = epoch
        return self._order

    def class_coords(self, volume_id: int) -> list[np.ndarray]:
        """The index's tumour-voxel sample of a volume grouped by class, for the classes present.

        Args:
            volume_id: a volume of the dataset.

        Returns:
            One (n_k, 3) int64 array of (z, y, x) per class (ncr, ed, et order) with n_k > 0; a voxel in
            overlapping channels belongs to each of them. Read once per volume from the cached mask.
        """
        groups = self._class_groups.get(volume_id)
        if groups is None:
            coords = self._coords[volume_id]
            groups = []
            if len(coords):
                mask = load_cached_volume(self.cache_dir, volume_id, mmap=True, index=self.index)[1]
                on = np.asarray(mask[:, coords[:, 0], coords[:, 1], coords[:, 2]]) != 0  # (3, n)
                groups = [coords[row] for row in on if row.any()]
            self._class_groups[volume_id] = groups
        return groups

    def plan(self, index: int, epoch: int | None = None) -> PatchPlan:
        """The random choices of one sample, without reading any data.

        Args:
            index: sample index in ``[0, len(self))``.
            epoch: the epoch; None uses ``self.epoch``.

        Returns:
            A ``PatchPlan``: volume id, patch start (may be negative where the volume is smaller than
            the patch: the patch is then centred and padded), whether it is tumour-centred, and the
            augmentation draws (None without augmentation).

        Raises:
            IndexError: an index outside the epoch.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} outside [0, {len(self)})")
        order = self._volume_order(epoch)
        vid = self.volume_ids[int(order[index % len(order)])]
        rng = np.random.default_rng([self.seed, epoch, 1, index])
        shape = self._shapes[vid]
        coords = self._coords[vid]
        centred = bool(rng.random() < self.tumor_prob) and len(coords) > 0
        if centred and self.tumor_sampling == "class":
            groups = self.class_coords(vid)
            pool = groups[int(rng.integers(len(groups)))] if groups else coords
            centre = pool[rng.integers(len(pool))]
        elif centred:
            centre = coords[rng.integers(len(coords))]
        start = []
        for axis, (size, p) in enumerate(zip(shape, self.patch_size)):
            if size <= p:
                start.append(-((p - size) // 2))
            elif centred:
                start.append(int(min(max(int(centre[axis]) - p // 2, 0), size - p)))
            else:
                start.append(int(rng.integers(0, size - p + 1)))
        flips: tuple[bool, bool, bool] = (False, False, False)
        scale = shift = None
        if self.augment:
            draws = rng.random(3) < 0.5
            flips = tuple(bool(draws[a]) and a in SPATIAL_FLIP_AXES for a in range(3))
        if self.intensity_aug:
            scale = rng.uniform(0.9, 1.1, size=4).astype(np.float32)
            shift = rng.uniform(-0.1, 0.1, size=4).astype(np.float32)
        where = tuple(int(c) for c in centre) if centred else None
        return PatchPlan(vid, tuple(start), centred, flips, scale, shift, where)

    # ----------------------------------------------------------------- reading

    @property
    def ram_cache_nbytes(self) -> int:
        """Bytes held by the RAM cache of this process (never above ``ram_cache_bytes``)."""
        return self._ram_nbytes

    def _volume(self, vid: int) -> tuple[np.ndarray, np.ndarray]:
        """The volume from the RAM cache, else loaded into it (evicting LRU entries), else memory-mapped."""
        hit = self._ram.get(vid)
        if hit is not None:
            self._ram.move_to_end(vid)
            return hit
        image, mask = load_cached_volume(self.cache_dir, vid, mmap=True, index=self.index)
        size = image.nbytes + mask.nbytes
        if size > self.ram_cache_bytes:
            return image, mask
        while self._ram and self._ram_nbytes + size > self.ram_cache_bytes:
            _, (old_img, old_mask) = self._ram.popitem(last=False)
            self._ram_nbytes -= old_img.nbytes + old_mask.nbytes
        image, mask = np.array(image), np.array(mask)  # read whole into RAM
        self._ram[vid] = (image, mask)
        self._ram_nbytes += size
        return image, mask

    def read_patch(self, plan: PatchPlan) -> tuple[np.ndarray, np.ndarray]:
        """Cut the planned patch.

        Args:
            plan: from ``plan``.

        Returns:
            image: (4, pd, ph, pw) float16 (normalised; augmentation applied in float32 then cast
                back), mask: (3, pd, ph, pw) uint8. Zero outside the volume.
        """
        image, mask = self._volume(plan.volume_id)
        shape = image.shape[1:]
        src, dst = [], []
        for start, p, size in zip(plan.start, self.patch_size, shape):
            a, b = max(start, 0), min(start + p, size)
            src.append(slice(a, b))
            dst.append(slice(a - start, b - start))
        img = cut_patch(image, src, dst, self.patch_size)
        msk = cut_patch(mask, src, dst, self.patch_size)
        if any(plan.flips):
            axes = tuple(a + 1 for a, f in enumerate(plan.flips) if f)
            img = np.ascontiguousarray(np.flip(img, axes))
            msk = np.ascontiguousarray(np.flip(msk, axes))
        if plan.scale is not None:
            work = img.astype(np.float32)
            brain = (work != 0).any(axis=0)
            work *= plan.scale[:, None, None, None]
            work += plan.shift[:, None, None, None] * brain
            img = work.astype(image.dtype)
        return img, msk

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch.

        Args:
            item: a sample index (epoch from ``set_epoch``) or ``(epoch, index)``.

        Returns:
            image: (4, pd, ph, pw) tensor of ``self.dtype``; mask: (3, pd, ph, pw) uint8 tensor.
        """
        if isinstance(item, tuple):
            epoch, index = item
        else:
            epoch, index = self.epoch, item
        img, msk = self.read_patch(self.plan(int(index), int(epoch)))
        image = torch.from_numpy(img)
        if image.dtype != self.dtype:
            with single_thread_torch():  # one thread converts faster than torch's pool here
                image = image.to(self.dtype)
        return image, torch.from_numpy(msk)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # workers start with an empty RAM cache
        state["_ram"] = OrderedDict()
        state["_ram_nbytes"] = 0
        return state


class EpochSampler(Sampler):
    """Sample indices of one epoch as ``(epoch, index)`` pairs, shuffled per epoch, sharded per rank.

    The epoch is read from the dataset (``dataset.set_epoch``) when iteration starts, in the main
    process, so persistent workers need no notice. With ``world_size > 1`` each rank gets every
    ``world_size``-th index of the (shared) permutation, padded by wrapping around to equal lengths as
    ``DistributedSampler`` does: ranks draw distinct patches.

    Args:
        dataset: a ``BraTS3DDataset`` (anything with ``__len__`` and an ``epoch`` attribute).
        shuffle: permute the indices per (seed, epoch).
        seed: seed of the permutation.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail instead of padding when the length does not divide evenly.
    """

    def __init__(self, dataset: Any, shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(getattr(self.dataset, "epoch", 0))
        n = len(self.dataset)
        order = (np.random.default_rng([self.seed, epoch, 2]).permutation(n) if self.shuffle
                 else np.arange(n))
        total = len(self) * self.world_size
        if total > n:
            order = np.concatenate([order, order[: total - n]])
        order = order[:total][self.rank::self.world_size]
        return iter([(epoch, int(i)) for i in order])


def default_num_workers() -> int:
    """DataLoader workers when the config says None: 0 on Windows (Jupyter deadlocks there), else
    up to 4, leaving one core for the main process."""
    if sys.platform == "win32":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, config: Config, shuffle: bool = False, batch_size: int | None = None,
                rank: int = 0, world_size: int = 1, drop_last: bool = False,
                num_workers: int | None = None, pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader with the preset's settings and an ``EpochSampler``.

    Workers: ``num_workers``, else ``config.num_workers``, else ``default_num_workers()`` (0 on Windows).
    With workers they are persistent; they work under the ``spawn`` start method (Windows, macOS), from a
    script with an ``if __name__ == "__main__":`` guard or from a notebook. Memory is pinned when CUDA is
    available.

    Args:
        dataset: usually a ``BraTS3DDataset``; call ``dataset.set_epoch(e)`` before each epoch.
        config: a ``Config`` (``batch_size``, ``num_workers``, ``seed``).
        shuffle: shuffle per epoch (training); False keeps index order (validation).
        batch_size: None: ``config.batch_size``.
        rank: DDP rank of this process.
        world_size: number of DDP processes.
        drop_last: drop an incomplete last batch.
        num_workers: override of the worker count.
        pin_memory: None: ``torch.cuda.is_available()``.

    Returns:
        The DataLoader; batches are (image (B, 4, pd, ph, pw), mask (B, 3, pd, ph, pw)).
    """
    workers = num_workers if num_workers is not None else getattr(config, "num_workers", None)
    if workers is None:
        workers = default_num_workers()
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=getattr(config, "seed", 0), rank=rank,
                           world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size or config.batch_size, sampler=sampler,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
                      drop_last=drop_last, multiprocessing_context=process_context() if workers > 0 else None)
