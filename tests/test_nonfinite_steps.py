"""A step with non-finite gradients (without a GradScaler: float32, bf16) is skipped, not applied.

A single NaN gradient would otherwise make every weight NaN through the gradient clipping, and the run would
stop one step later on a non-finite loss (seen on a CPU with native bf16 in about one demo run in three).
"""

from __future__ import annotations

import math

import pytest
import torch

from tumorlib.core.config import get_config
from tumorlib.training.engine import MAX_SKIPPED_STEPS, Trainer
from tumorlib.training.settings import TrainSettings

CI = get_config("ci", amp_dtype="float32")


def _batch(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 4, *CI.patch_size, generator=g)
    mask = (torch.rand(2, 3, *CI.patch_size, generator=g) > 0.7).float()
    return [(image, mask)]


def _poison(trainer: Trainer, steps: int) -> None:
    """Make the first conv's weight gradient NaN for the next ``steps`` backward passes."""
    left = {"n": steps}
    weight = next(trainer.model.parameters())

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if left["n"] > 0:
            left["n"] -= 1
            return grad * math.nan
        return grad

    weight.register_hook(hook)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_step_with_nan_gradients_is_skipped_and_the_next_one_trains(grad_clip):
    trainer = Trainer(CI.replace(grad_clip=grad_clip), TrainSettings("t"), "cpu", total_steps=10, warmup_steps=0)
    _poison(trainer, 1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.warns(RuntimeWarning, match="optimizer step skipped: non-finite gradients"):
        result = trainer.train_step(_batch())
    assert math.isfinite(float(result.loss)) and trainer.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # nothing applied
    trainer.train_step(_batch(1))
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the next step trained
    assert trainer.consecutive_skips == 0 and trainer.skipped_steps == 1


def test_too_many_consecutive_nan_gradient_steps_stop_the_run():
    trainer = Trainer(CI, TrainSettings("t"), "cpu", total_steps=10, warmup_steps=0)
    _poison(trainer, MAX_SKIPPED_STEPS + 1)
    with pytest.warns(RuntimeWarning):
        for k in range(MAX_SKIPPED_STEPS):
            trainer.train_step(_batch(k))
    with pytest.raises(FloatingPointError, match=f"non-finite gradients in {MAX_SKIPPED_STEPS + 1} consecutive"):
        trainer.train_step(_batch(9))
