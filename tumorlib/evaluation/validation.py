"""The whole-volume validator that training is handed to select its model.

``VolumeValidator(config, cache_dir, volume_ids)`` is called as ``validator(model, epoch) -> float``: the
mean over the validation volumes of the mean WT, TC and ET Dice of the decoded labels
(``tumorlib.evaluation.scoring.volume_dice``, computed exactly as ``evaluate`` computes its scores).
``tumorlib.app.workflows.train`` hands it to ``tumorlib.training.loop.train``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from tumorlib.core.config import Config
from tumorlib.evaluation.scoring import volume_dice
from tumorlib.training.settings import pick_amp_dtype

__all__ = ["VolumeValidator"]


class VolumeValidator:
    """Scores a model on whole validation volumes (sliding window, decoded labels, WT/TC/ET Dice).

    Args:
        config: the run's config (sliding window, ``threshold``, ``amp`` and ``amp_dtype``).
        cache_dir: the cache holding the volumes.
        volume_ids: the validation volumes.
        amp: autocast on CUDA; None: as training does (on unless the config trains in float32).
    """

    def __init__(self, config: Config, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                 amp: bool | None = None) -> None:
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.volume_ids = [int(v) for v in volume_ids]
        self.amp = amp

    def __call__(self, model: torch.nn.Module, epoch: int) -> float:
        """The selection score of ``model`` after ``epoch`` (1-based; for the record only).

        Args:
            model: the network (its mode is restored after the call); the windows run on its device.
            epoch: the epoch just finished.

        Returns:
            The score in [0, 1].
        """
        device = next(model.parameters()).device
        amp = self.amp if self.amp is not None else pick_amp_dtype(device, self.config)[0] is not None
        return volume_dice(model, self.config, self.cache_dir, self.volume_ids, device, amp=amp)
