"""The training engine: the one mixed-precision training step, validation, and checkpoints.

``Trainer`` holds the model, optimizer, ``GradScaler``, schedule and loss of a config and runs them the
way a ``TrainSettings`` says: autocast dtype (bf16, fp16 with a ``GradScaler``, or float32),
``torch.compile`` (with a fallback to eager when the first step fails to compile), cuDNN autotuning,
and where patches come from (a ``DataLoader`` or the GPU-resident ``DevicePatchSampler``). Its named
steps are ``train_step`` (one optimizer step over accumulated micro-batches), ``validation_step`` (loss
and Dice over validation patches), ``save_checkpoint`` / ``load_checkpoint``. ``tumorlib.training.loop.fit``,
the training benchmark (``bench.bench_train``) and the GPU comparison (``perf.benchmark_throughput``)
all use it, so what is measured is what trains.

The settings themselves and how they are chosen per device live in ``tumorlib.training.settings``
(``reference_settings``: the reference design; ``resolve_settings``: tumorlib's default).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from tumorlib.core.brats import CLASS_KEYS
from tumorlib.core.regions import Decoder
from tumorlib.core.config import Config
from tumorlib.training.distributed import DistInfo, all_reduce_sum
from tumorlib.nn.precision import autocast
from tumorlib.training.settings import TrainSettings

T = TypeVar("T")

__all__ = ["StepResult", "Trainer", "compiled_or_eager", "forward_backward", "optimizer_step", "validate"]



# --------------------------------------------------------------------------- the step

def compiled_or_eager(run: Callable[[], T], to_eager: Callable[[str], None]) -> T:
    """The first call of a compiled network, falling back to eager when compilation fails.

    Args:
        run: calls the network (compiled until ``to_eager`` switches it).
        to_eager: called with the error text (type and message, at most 800 characters) to switch to eager.

    Returns:
        ``run()``'s result: compiled, or eager after a compiler failure.

    Raises:
        FloatingPointError: a non-finite loss (not a compiler failure) is raised as it is.
    """
    try:
        return run()
    except FloatingPointError:
        raise
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
        to_eager(f"{type(err).__name__}: {err}".strip()[:800])
        return run()


def forward_backward(net: nn.Module, criterion: nn.Module, image: torch.Tensor, mask: torch.Tensor,
                     dtype: torch.dtype | None, scaler: torch.amp.GradScaler, scale: float = 1.0) -> torch.Tensor:
    """Forward under autocast, the loss in float32, backward of ``scale * loss`` (through the scaler).

    Args:
        net: the network (possibly wrapped by DDP or ``torch.compile``).
        criterion: the loss.
        image: (B, 4, pd, ph, pw) float32 on the device.
        mask: (B, 3, pd, ph, pw) float32 on the device.
        dtype: autocast dtype or None (float32).
        scaler: the ``GradScaler`` (a no-op when disabled).
        scale: loss multiplier, ``1 / micro-batches`` under accumulation.

    Returns:
        The unscaled loss (scalar, detached).
    """
    with autocast(image.device, dtype):
        logits = net(image)
    loss = criterion(logits.float(), mask)
    scaler.scale(loss * scale).backward()
    return loss.detach()


#: Consecutive optimizer steps with non-finite gradients that are skipped before the run stops (without a
#: ``GradScaler``: float32 and bf16; under fp16 the scaler skips overflowing steps itself).
MAX_SKIPPED_STEPS = 3


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None, grad_clip: float) -> float | None:
    """Clip the gradient norm (after unscaling), step the optimizer and the scheduler, zero the gradients.

    Without a ``GradScaler`` (float32, bf16) a step whose gradients are not finite is skipped, as the scaler
    skips an fp16 overflow: the weights stay as they were (a single NaN gradient would otherwise turn every
    weight into NaN through the clipping) and the schedule waits for the next step. Seen on a CPU with native bf16: about
    one demo run in three produced one such step within its first epoch.

    Args:
        model: the unwrapped model whose parameters are clipped.
        optimizer: the optimizer.
        scaler: the ``GradScaler`` (skips the step when fp16 gradients overflowed).
        scheduler: stepped once, or None.
        grad_clip: max gradient norm; 0 or less: no clipping.

    Returns:
        The learning rate this step used, or None when the step was skipped (non-finite gradients).
    """
    norm = None
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    elif not scaler.is_enabled():
        norm = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # the norm only
    lr = optimizer.param_groups[0]["lr"]
    skip = not scaler.is_enabled() and norm is not None and not bool(torch.isfinite(norm))
    if not skip:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if skip:
        return None
    if scheduler is not None:
        scheduler.step()
    return lr


def _dice_from_counts(inter: torch.Tensor, psum: torch.Tensor, gsum: torch.Tensor) -> torch.Tensor:
    denom = psum + gsum
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], criterion: nn.Module,
             device: torch.device, dtype: torch.dtype | None = None, threshold: float = 0.5,
             info: DistInfo | None = None, targets: str = "classes") -> dict[str, float]:
    """Loss and Dice on validation patches, pooled over all patches (and ranks).

    Dice per class is ``2 |P & G| / (|P| + |G|)`` with ``P`` the decoded labels
    (``tumorlib.core.regions.Decoder.batch`` with the run's ``targets``: the rule ``predict`` and
    ``evaluate`` use), counted over every validation voxel at once (1.0 when both are empty); whole tumour
    (WT) is the union of the three channels. The Dice are those of the decoded classes whatever the
    network's outputs are, so the history's columns mean the same for ``classes`` and ``regions`` runs.

    Args:
        model: the network (switched to eval mode and back to train mode afterwards).
        loader: batches of (image (B, 4, pd, ph, pw), mask (B, 3, pd, ph, pw)).
        criterion: the training loss.
        device: where to compute.
        dtype: autocast dtype or None.
        threshold: the decoding threshold (``config.threshold``).
        info: DDP ranks to pool over; None: this process only.
        targets: what the outputs are (``Config.targets``): how they are decoded.

    Returns:
        ``{"val_loss", "val_dice_mean", "val_dice_ncr", "val_dice_ed", "val_dice_et", "val_dice_wt"}``.
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    # loss sum, patches, then per class (3) and WT: intersection, predicted, ground truth
    sums = torch.zeros(2 + 3 * 4, dtype=torch.float64, device=device)
    for image, mask in loader:
        image = image.to(device, torch.float32, non_blocking=True)
        mask = mask.to(device, torch.float32, non_blocking=True)
        with autocast(device, dtype):
            logits = model(image)
        logits = logits.float()
        sums[0] += criterion(logits, mask).double() * image.shape[0]
        sums[1] += image.shape[0]
        pred = Decoder(targets, threshold).batch(torch.sigmoid(logits)).float()
        pred = torch.cat([pred, pred.amax(1, keepdim=True)], 1)
        gt = torch.cat([mask, mask.amax(1, keepdim=True)], 1)
        dims = (0, 2, 3, 4)
        sums[2:6] += (pred * gt).sum(dims).double()
        sums[6:10] += pred.sum(dims).double()
        sums[10:14] += gt.sum(dims).double()
    all_reduce_sum(sums, info)
    model.train(was_training)
    dice = _dice_from_counts(sums[2:6], sums[6:10], sums[10:14]).tolist()
    out = {"val_loss": (sums[0] / sums[1].clamp_min(1)).item(), "val_dice_mean": sum(dice[:3]) / 3}
    out.update({f"val_dice_{k}": d for k, d in zip(CLASS_KEYS + ("wt",), dice)})
    return out


class StepResult(NamedTuple):
    """One optimizer step: ``loss`` (mean over its patches, scalar tensor), ``loss_sum`` (float64 sum of
    loss x patches), ``patches``, ``lr`` (the rate the step used), ``last_loss`` (the last micro-batch's)."""

    loss: torch.Tensor
    loss_sum: torch.Tensor
    patches: int
    lr: float
    last_loss: torch.Tensor


class Trainer:
    """Model, optimizer, ``GradScaler``, schedule and loss of a config, run the settings' way.

    Args:
        config: the run's config (model, loss, ``lr``, ``weight_decay``, ``grad_clip``, ``threshold``).
        settings: how to run (``resolve_settings``, ``reference_settings``, ...).
        device: the device.
        state_dict: initial weights (None: ``torch.manual_seed(config.seed)`` then a fresh model).
        info: DDP ranks; with more than one the model is wrapped in ``DistributedDataParallel``.
        total_steps: optimizer steps of the whole run for the warmup + cosine schedule; None: no schedule.
        warmup_steps: linear warmup steps of that schedule.

    Attributes:
        model: the plain model; ``net``: what is called (DDP and/or compiled, or the model).
        compile_error: the error text when compilation failed and the step fell back to eager, else None.
    """

    def __init__(self, config: Config, settings: TrainSettings, device: str | torch.device,
                 state_dict: dict[str, torch.Tensor] | None = None, *, info: DistInfo | None = None,
                 total_steps: int | None = None, warmup_steps: int = 0) -> None:
        from tumorlib.nn.losses import loss_from_config
        from tumorlib.nn.unet import model_from_config

        self.config = config
        self.settings = settings
        self.device = torch.device(device)
        self.info = info or DistInfo()
        torch.manual_seed(config.seed)
        self.model = model_from_config(config).to(self.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.dtype = settings.torch_amp_dtype
        self.criterion = loss_from_config(config)
        self._total_steps, self._warmup_steps = total_steps, warmup_steps
        self.reset(state_dict)
        self._eager: nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._eager = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.net: nn.Module = self._compile(self._eager) if settings.compile else self._eager
        self.compile_error: str | None = None
        self.skipped_steps = 0  # optimizer steps skipped for non-finite gradients (``optimizer_step``)
        self.consecutive_skips = 0
        self._tried = False

    @property
    def variant(self) -> TrainSettings:
        """The settings (the name the GPU comparison uses)."""
        return self.settings

    def _compile(self, module: nn.Module) -> nn.Module:
        mode = None if self.settings.compile_mode in (None, "default") else self.settings.compile_mode
        return torch.compile(module, mode=mode, backend=self.settings.compile_backend)

    def reset(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Load ``state_dict`` (when given) and start a fresh optimizer, ``GradScaler`` and schedule."""
        from tumorlib.nn.schedule import warmup_cosine_scheduler

        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings.grad_scaler)
        self.scheduler = None
        if self._total_steps is not None:
            self.scheduler = warmup_cosine_scheduler(self.optimizer, self._total_steps, self._warmup_steps,
                                                     self.config.min_lr_ratio)

    @contextlib.contextmanager
    def backend_flags(self) -> Iterator[None]:
        """cuDNN autotuning as the settings say, restored afterwards."""
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.settings.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    def _run(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        loss = total
        last = len(micro_batches) - 1
        for k, (image, mask) in enumerate(micro_batches):
            image = image.to(self.device, torch.float32, non_blocking=True)
            mask = mask.to(self.device, torch.float32, non_blocking=True)
            if self.settings.channels_last:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            sync = (self._eager.no_sync() if self.info.enabled and k < last else contextlib.nullcontext())
            with sync:
                loss = forward_backward(self.net, self.criterion, image, mask, self.dtype, self.scaler,
                                        1.0 / len(micro_batches))
            total += loss.double() * image.shape[0]
            n += image.shape[0]
        # check the loss on every rank at once, so all ranks stop together
        check = all_reduce_sum(total.clone().reshape(1), self.info)
        if not torch.isfinite(check).all():
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError("non-finite training loss")
        asked = self.optimizer.param_groups[0]["lr"]
        lr = optimizer_step(self.model, self.optimizer, self.scaler, self.scheduler, self.config.grad_clip)
        if lr is None:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips > MAX_SKIPPED_STEPS:
                raise FloatingPointError(f"non-finite gradients in {self.consecutive_skips} consecutive optimizer steps")
            warnings.warn(f"optimizer step skipped: non-finite gradients ({str(self.dtype or 'float32').removeprefix('torch.')}); "
                          f"{self.skipped_steps} skipped so far, the weights are unchanged", RuntimeWarning, stacklevel=2)
            lr = asked
        else:
            self.consecutive_skips = 0
        return StepResult((total / max(n, 1)).float(), total, n, lr, loss)

    def train_step(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
        """One optimizer step over ``micro_batches`` (accumulated; image (B, 4, ...), mask (B, 3, ...)).

        The first call of a compiled model falls back to eager (with a warning, the error kept in
        ``compile_error``) when compilation fails.

        Raises:
            FloatingPointError: a non-finite loss on any rank (no optimizer step was taken).
        """
        if self._tried or self.net is self._eager:
            return self._run(micro_batches)
        self._tried = True
        return compiled_or_eager(lambda: self._run(micro_batches), self._to_eager)

    def _to_eager(self, error: str) -> None:
        self.compile_error = error
        warnings.warn(f"torch.compile failed for settings {self.settings.name}; running eager instead "
                      f"({error.splitlines()[0]})", RuntimeWarning, stacklevel=4)
        self.net = self._eager
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings.grad_scaler)

    def __call__(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``train_step(micro_batches).loss``: the mean loss of the step's patches."""
        return self.train_step(micro_batches).loss

    def validation_step(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """``validate`` with this trainer's net, loss, autocast and ``config.threshold``."""
        return validate(self.net, loader, self.criterion, self.device, self.dtype, self.config.threshold,
                        self.info, self.config.targets)

    def state_dict(self) -> dict[str, Any]:
        """``model``, ``optimizer``, ``scheduler`` and ``scaler`` states (for ``last.pth``)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a checkpoint dict with those keys)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_checkpoint(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write ``state_dict()`` plus ``extra`` (epoch, history, RNG states, ...) atomically to ``path``."""
        from tumorlib.nn.checkpoint import atomic_torch_save

        atomic_torch_save({**self.state_dict(), **extra}, path)
