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


class _Patches(torch.utils.data.Dataset):
    """Deterministic random patches per (epoch, index), with a mask of about 30 % ones."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, item):
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)  # the sampler may pass (epoch, index)
        g = torch.Generator().manual_seed(1000 * self.seed + 100 * epoch + index)
        return (torch.randn(4, *CI.patch_size, generator=g),
                (torch.rand(3, *CI.patch_size, generator=g) > 0.7).to(torch.uint8))


def test_history_records_the_skipped_steps_of_each_epoch(tmp_path, monkeypatch):
    import pandas as pd

    import tumorlib.training.engine as engine
    from tumorlib.training.history import HISTORY_COLUMNS
    from tumorlib.training.loop import fit

    real = engine.forward_backward
    calls = {"n": 0}

    def poisoned(net, *args, **kwargs):  # the first backward of the run leaves a NaN gradient
        loss = real(net, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            next(net.parameters()).grad.fill_(math.nan)
        return loss

    monkeypatch.setattr(engine, "forward_backward", poisoned)
    cfg = CI.replace(epochs=2, warmup_epochs=1, samples_per_epoch=4, val_samples=2, batch_size=2, num_workers=0)
    with pytest.warns(RuntimeWarning, match="optimizer step skipped"):
        history = fit(cfg, _Patches(4), _Patches(2, seed=1), tmp_path / "run", progress=False)
    assert HISTORY_COLUMNS[-1] == "skipped_steps" and calls["n"] == 4  # 2 epochs x 2 steps
    assert history.skipped_steps.tolist() == [1, 0]
    written = pd.read_csv(tmp_path / "run" / "history.csv")
    assert written.columns.tolist() == HISTORY_COLUMNS and written.skipped_steps.tolist() == [1, 0]
