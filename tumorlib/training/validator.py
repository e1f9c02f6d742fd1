"""What training is handed to select the model on whole volumes: a validator (training never imports
evaluation; ``tumorlib.evaluation.validation.VolumeValidator`` is the one tumorlib builds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from tumorlib.core.config import Config

__all__ = ["Validator", "ValidatorFactory", "check_validator"]


class Validator(Protocol):
    """What selects the model on whole volumes: ``validator(model, epoch) -> score`` (higher is better)."""

    def __call__(self, model: torch.nn.Module, epoch: int) -> float: ...


#: Builds a ``Validator`` from ``(config, cache_dir, validation volume ids)``, e.g. the class
#: ``tumorlib.evaluation.validation.VolumeValidator`` itself.
ValidatorFactory = Callable[[Config, Path, Sequence[int]], Validator]


def check_validator(config: Config, validator: object | None) -> None:
    """Refuse ``config.val_volume_every`` > 0 without a validator, naming the fix.

    Raises:
        ValueError: whole-volume selection asked for and ``validator`` is None.
    """
    if config.val_volume_every > 0 and validator is None:
        raise ValueError(f"val_volume_every={config.val_volume_every} selects the model on whole validation "
                         "volumes, but no validator was given: train through tumorlib.app.workflows.train "
                         "(what `tumorlib train` and the notebooks call), pass validator="
                         "tumorlib.evaluation.validation.VolumeValidator, or set val_volume_every=0")
