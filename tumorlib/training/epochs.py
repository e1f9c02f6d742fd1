"""What an epoch of training is made of: the loaders, the optimizer steps' groups of micro-batches, and
whether one more epoch fits the time limit."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tumorlib.core.config import Config
from tumorlib.training.distributed import DistInfo
from tumorlib.training.settings import TrainSettings

__all__ = ["fits_time_limit", "group_sizes", "make_loader", "step_groups", "train_batches"]


def make_loader(dataset: Dataset, config: Config, info: DistInfo, batch_size: int, pin: bool) -> DataLoader:
    """The loader of ``dataset`` for this rank, in a fixed order (patches are drawn per epoch and index).

    Args:
        dataset: the patches.
        config: loader fields (``num_workers``...).
        info: the DDP ranks.
        batch_size: patches a batch.
        pin: pin host memory.

    Returns:
        The ``DataLoader``.
    """
    from tumorlib.data.dataset import make_loader as data_loader

    return data_loader(dataset, config, shuffle=False, batch_size=batch_size, rank=info.rank,
                       world_size=info.world_size, pin_memory=pin)


def train_batches(dataset: Dataset, config: Config, settings: TrainSettings, info: DistInfo,
                   device: torch.device) -> tuple[Any, Any]:
    """``(batches, epoch_setter)``: the DataLoader, or the GPU-resident sampler's loader (same patches)."""
    if settings.data != "device":
        return make_loader(dataset, config, info, config.batch_size, settings.pin_memory), dataset
    from tumorlib.data.dataset import BraTS3DDataset
    from tumorlib.data.gpu_patches import DevicePatchSampler

    if not isinstance(dataset, BraTS3DDataset):
        raise ValueError(f"data_placement=device needs a BraTS3DDataset, got {type(dataset).__name__}")
    sampler = DevicePatchSampler(dataset.cache_dir, dataset.volume_ids, patch_size=dataset.patch_size,
                                 tumor_prob=dataset.tumor_prob, augment=dataset.augment, seed=dataset.seed,
                                 samples_per_epoch=dataset.samples_per_epoch, device=device,
                                 intensity_aug=dataset.intensity_aug, tumor_sampling=dataset.tumor_sampling)
    return sampler.loader(config.batch_size, rank=info.rank, world_size=info.world_size), sampler


def group_sizes(n_micro: int, accumulation: int) -> list[int]:
    """Micro-batches in each optimizer step: full groups of ``accumulation``, then the remainder."""
    full, rest = divmod(n_micro, accumulation)
    return [accumulation] * full + ([rest] if rest else [])


def step_groups(loader: Any, sizes: list[int]) -> Any:
    """The loader's micro-batches collected into the optimizer steps' groups."""
    group: list[Any] = []
    index = 0
    for batch in loader:
        group.append(batch)
        if len(group) == sizes[index]:
            yield group
            group, index = [], index + 1


def fits_time_limit(elapsed_s: float, epochs_done: int, limit_s: float) -> bool:
    """Whether one more epoch fits in the time limit, estimated from the mean epoch time so far.

    Args:
        elapsed_s: seconds since this call's first epoch started.
        epochs_done: epochs finished in those seconds (at least 1).
        limit_s: the limit in seconds; 0 or less: no limit.

    Returns:
        True when ``elapsed_s`` plus the mean epoch time stays within ``limit_s`` (or there is no limit).
    """
    if limit_s <= 0:
        return True
    return elapsed_s + elapsed_s / max(epochs_done, 1) <= limit_s
