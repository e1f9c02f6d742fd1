"""Learning-rate schedule: linear warmup, then cosine decay to ``lr * min_lr_ratio``, per optimizer step.

The reference design warms up for 5 epochs: with a batch of 2-4 patches and randomly initialised InstanceNorm
statistics, the first updates at the full learning rate are large and noisy, and a short ramp keeps them
from knocking the network into a poor region. After the warmup the rate follows half a cosine to 1 % of
its peak, so the last epochs fine-tune with small steps.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from tumorlib.core.config import Config

__all__ = ["WarmupCosine", "lr_schedule", "optimizer_steps_per_epoch", "warmup_cosine_scheduler"]


class WarmupCosine:
    """The learning-rate factor for optimizer step ``s`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    - ``s < warmup_steps``: ``(s + 1) / warmup_steps`` (linear ramp ending at 1);
    - afterwards: ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with
      ``t = (s - warmup_steps) / (total_steps - warmup_steps - 1)``, so the first step after the warmup
      runs at the peak and the last step (``s = total_steps - 1``) at exactly ``min_ratio``.

    A plain object (not a closure) so ``LambdaLR.state_dict()`` stores its fields, which load with
    ``torch.load(weights_only=True)``.

    Args:
        total_steps: optimizer steps in the whole run, >= 1.
        warmup_steps: steps of linear warmup, 0 <= warmup_steps <= total_steps.
        min_ratio: final factor in [0, 1].

    Raises:
        ValueError: arguments out of range.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float = 0.01) -> None:
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"WarmupCosine: need total_steps >= 1, 0 <= warmup_steps <= total_steps and "
                             f"min_ratio in [0, 1], got {total_steps}, {warmup_steps}, {min_ratio}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        """The factor for 0-based optimizer step ``step`` (steps past the end stay at ``min_ratio``)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps - 1
        if span <= 0:
            return self.min_ratio
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                            min_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``WarmupCosine``; call ``.step()`` after every ``optimizer.step()``.

    Args:
        optimizer: the optimizer; its current ``lr`` is the peak.
        total_steps: optimizer steps in the whole run.
        warmup_steps: steps of linear warmup.
        min_ratio: the final learning rate as a fraction of the peak.

    Returns:
        The scheduler (the optimizer's lr is set to the first step's value at once).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))


def optimizer_steps_per_epoch(samples: int, batch_size: int, accumulation_steps: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch, as the training loop counts them.

    Each of ``world_size`` ranks gets ``ceil(samples / world_size)`` patches in ``ceil(. / batch_size)``
    micro-batches; every ``accumulation_steps`` micro-batches (and a shorter last group) make one step.

    Args:
        samples: patches an epoch over all ranks.
        batch_size: patches per micro-batch.
        accumulation_steps: micro-batches per optimizer step.
        world_size: DDP processes.

    Returns:
        The step count, >= 1 when ``samples >= 1``.
    """
    micro = -(-(-(-samples // world_size)) // batch_size)
    return -(-micro // accumulation_steps)


def lr_schedule(config: Config, steps_per_epoch: int) -> pd.DataFrame:
    """The learning rate of every optimizer step of a run, for plotting.

    Args:
        config: a ``Config`` (``lr``, ``epochs``, ``warmup_epochs``, ``min_lr_ratio``).
        steps_per_epoch: optimizer steps an epoch (``optimizer_steps_per_epoch``).

    Returns:
        DataFrame with columns ``step`` (0-based), ``epoch`` (fractional, from 0) and ``lr``.
    """
    total = config.epochs * steps_per_epoch
    factor = WarmupCosine(total, min(config.warmup_epochs, config.epochs) * steps_per_epoch, config.min_lr_ratio)
    steps = range(total)
    return pd.DataFrame({"step": list(steps), "epoch": [s / steps_per_epoch for s in steps],
                         "lr": [config.lr * factor(s) for s in steps]})
