"""DistributedDataParallel plumbing for ``torchrun``: process group, device per rank, reductions.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; ``init_distributed``
reads them and starts a process group (NCCL on GPUs, gloo on CPUs). A single process without those
variables gets a ``DistInfo`` with ``world_size == 1`` and no process group, and every helper here is
then a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tumorlib.core.device import resolve_device
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "cleanup_distributed", "init_distributed", "select_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run.

    Attributes:
        rank: global rank (0 writes every file).
        local_rank: rank on this machine (picks the GPU).
        world_size: number of processes.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def select_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The training device: ``tumorlib.core.device.resolve_device`` (the one device rule).

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` or None (automatic).
        local_rank: GPU index used when ``device`` is None or ``"cuda"`` without an index.

    Returns:
        The device.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    return resolve_device(device, local_rank)


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    Args:
        device: the device this rank will use; its type picks the backend (NCCL for CUDA, gloo otherwise).
            None: NCCL when CUDA is available.

    Returns:
        This process's ``DistInfo``; ``world_size == 1`` without ``torchrun`` (no group is started).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group started by ``init_distributed`` (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place and return it (unchanged for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
