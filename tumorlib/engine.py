"""The training engine: the one mixed-precision training step, validation, and checkpoints.

``Trainer`` holds the model, optimizer, ``GradScaler``, schedule and loss of a config and runs them the
way a ``TrainSettings`` says: autocast dtype (bf16, fp16 with a ``GradScaler``, or float32),
``torch.compile`` (with a fallback to eager when the first step fails to compile), cuDNN autotuning,
and where patches come from (a ``DataLoader`` or the GPU-resident ``DevicePatchSampler``). Its named
steps are ``train_step`` (one optimizer step over accumulated micro-batches), ``validation_step`` (loss
and Dice over validation patches), ``save_checkpoint`` / ``load_checkpoint``. ``tumorlib.train.fit``,
the training benchmark (``bench.bench_train``) and the GPU comparison (``perf.benchmark_throughput``)
all use it, so what is measured is what trains.

Two settings matter: ``reference_settings`` (the reference design: fp16 autocast + ``GradScaler``,
eager, unpinned ``DataLoader``) and ``resolve_settings`` (tumorlib's default: each ``auto`` config field
resolved for the device, see ``Config``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from tumorlib.config import Config
from tumorlib.distributed import DistInfo, all_reduce_sum

__all__ = [
    "AMP_DTYPES",
    "StepResult",
    "TrainSettings",
    "Trainer",
    "amp_dtype",
    "autocast",
    "compile_available",
    "float32_settings",
    "forward_backward",
    "optimizer_step",
    "pick_amp_dtype",
    "reference_settings",
    "resolve_settings",
    "validate",
]

#: Autocast dtypes by name; ``"float32"`` (or None) means no autocast.
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
CLASS_KEYS = ("ncr", "ed", "et")


@dataclass(frozen=True)
class TrainSettings:
    """How the training step runs and is fed (everything that changes speed, not the maths).

    Attributes:
        name: label in tables and JSON (``reference``, ``default``, ...).
        amp_dtype: autocast dtype, ``"float16"``, ``"bfloat16"`` or None (float32).
        grad_scaler: scale the loss with a ``GradScaler`` (needed by fp16, not by bf16).
        compile: wrap the model in ``torch.compile``.
        compile_mode: ``torch.compile`` mode (None or ``"default"``: its default; ``"reduce-overhead"``
            uses CUDA graphs, ``"max-autotune"`` also tunes kernels).
        compile_backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only traces, for tests).
        channels_last: ``channels_last_3d`` model and inputs.
        cudnn_benchmark: let cuDNN time its convolution algorithms for the fixed patch shape.
        data: ``"loader"`` (``DataLoader`` over ``BraTS3DDataset``) or ``"device"`` (``DevicePatchSampler``).
        num_workers: DataLoader workers (None: the config's, else the platform default).
        pin_memory: pinned host memory for the DataLoader batches (copies are non-blocking either way).
    """

    name: str = "default"
    amp_dtype: str | None = None
    grad_scaler: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    data: str = "loader"
    num_workers: int | None = None
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.amp_dtype is not None and self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"settings {self.name}: amp_dtype must be float16, bfloat16 or None, "
                             f"got {self.amp_dtype!r}")
        if self.data not in ("loader", "device"):
            raise ValueError(f"settings {self.name}: data must be 'loader' or 'device', got {self.data!r}")

    @property
    def torch_amp_dtype(self) -> torch.dtype | None:
        """``amp_dtype`` as a ``torch.dtype`` (None: float32)."""
        return None if self.amp_dtype is None else AMP_DTYPES[self.amp_dtype]

    def describe(self) -> str:
        """A short text such as ``bf16, compile(default), device data``."""
        parts = [{"float16": "fp16", "bfloat16": "bf16", None: "fp32"}[self.amp_dtype]
                 + ("+GradScaler" if self.grad_scaler else "")]
        parts.append(f"compile({self.compile_mode or 'default'})" if self.compile else "eager")
        if self.channels_last:
            parts.append("channels_last_3d")
        parts.append("device data" if self.data == "device" else "DataLoader" + (" pinned" if self.pin_memory else ""))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with ``describe()`` as ``description``."""
        return {**dataclasses.asdict(self), "description": self.describe()}


# --------------------------------------------------------------------------- choosing the settings

def pick_amp_dtype(device: str | torch.device, config: Config | None = None) -> tuple[str | None, str]:
    """The autocast dtype for ``config.amp_dtype`` on ``device``, with the reason.

    ``auto``: bf16 on CUDA cards that support it, else fp16 on CUDA, float32 elsewhere; ``config.amp``
    False always gives float32.

    Args:
        device: the training device.
        config: a ``Config``; None: ``amp`` on, ``amp_dtype`` auto.

    Returns:
        ``("bfloat16" | "float16" | None, reason)``.

    Raises:
        ValueError: bf16 or fp16 asked for on a device without CUDA autocast support for it.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    asked = "auto" if config is None else config.amp_dtype
    if config is not None and not config.amp:
        return None, "config.amp is off"
    if asked == "float32":
        return None, "amp_dtype float32 asked for"
    if asked in AMP_DTYPES:
        return asked, f"amp_dtype {asked} asked for"
    if cuda and torch.cuda.is_bf16_supported():
        return "bfloat16", "bf16 supported: no GradScaler needed, same range as fp32"
    if cuda:
        return "float16", "no bf16 on this card: fp16 with a GradScaler"
    return None, f"float32 on {device.type} (autocast pays off on CUDA only)"


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The automatic autocast dtype as a ``torch.dtype`` (see ``pick_amp_dtype``).

    Args:
        device: the training device.
        enabled: ``config.amp``; False always gives None.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (float32).
    """
    if not enabled:
        return None
    name, _ = pick_amp_dtype(device)
    return None if name is None else AMP_DTYPES[name]


def compile_available(device: str | torch.device) -> tuple[bool, str]:
    """Whether ``torch.compile`` with inductor can be expected to work (and pay off) on ``device``.

    Args:
        device: the training device.

    Returns:
        ``(available, reason)``. False on the CPU (compiling the model takes minutes there), on Windows,
        without a working ``triton`` or on GPUs older than compute capability 7.0.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"off on {device.type} (compiling costs minutes there; pass a compile mode to force it)"
    if sys.platform == "win32":
        return False, "torch.compile's inductor backend needs triton, not available on Windows"
    if not torch.cuda.is_available():
        return False, "CUDA not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 7:
        return False, f"compute capability {major}.{minor} < 7.0 (triton needs Volta or newer)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed"
    return True, f"CUDA compute capability {major}.{minor} with triton"


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def resolve_settings(config: Config, device: str | torch.device, cache_dir: str | os.PathLike | None = None,
                     volume_ids: Sequence[int] | None = None, memory_fraction: float = 0.5,
                     name: str = "default") -> tuple[TrainSettings, dict[str, Any]]:
    """tumorlib's default: the config's ``amp_dtype``, ``compile``, ``cudnn_benchmark``,
    ``data_placement`` and ``pin_memory`` fields with ``auto`` resolved for ``device``.

    Args:
        config: the run's config.
        device: the training device.
        cache_dir: a finished cache; with it ``data_placement=auto`` puts the volumes on the GPU when
            they fit in ``memory_fraction`` of its free memory. None: the DataLoader.
        volume_ids: the volumes to hold (None: every cached volume).
        memory_fraction: share of the free device memory the resident data may take.
        name: the settings' name.

    Returns:
        ``(settings, facts)``; ``facts`` holds ``reasons`` (a short text per choice), ``resident_bytes``
        (None without a cache) and ``num_workers``.

    Raises:
        ValueError: ``data_placement=device`` without a cache.
    """
    from tumorlib.data.dataset import default_num_workers

    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    reasons: dict[str, str] = {}
    dtype, reasons["amp_dtype"] = pick_amp_dtype(device, config)
    if config.compile == "auto":
        compile_, reasons["compile"] = compile_available(device)
        mode = "default" if compile_ else None
    elif config.compile == "off":
        compile_, mode, reasons["compile"] = False, None, "turned off"
    else:
        compile_, mode, reasons["compile"] = True, config.compile, f"mode {config.compile} asked for"
    bench = _switch(config.cudnn_benchmark, cuda)
    reasons["cudnn_benchmark"] = "asked for" if config.cudnn_benchmark != "auto" else (
        "fixed patch shape on CUDA" if cuda else f"no cuDNN on {device.type}")
    pin = _switch(config.pin_memory, cuda)
    workers = default_num_workers() if config.num_workers is None else int(config.num_workers)
    resident = None
    placement = config.data_placement
    if cache_dir is not None:
        from tumorlib.data.gpu_patches import fits_on_device, resident_nbytes

        resident = resident_nbytes(cache_dir, volume_ids)
    if placement == "device":
        if cache_dir is None:
            raise ValueError("data_placement=device needs a cache to hold on the device")
        data, reasons["data_placement"] = "device", "asked for"
    elif placement == "loader":
        data, reasons["data_placement"] = "loader", "asked for"
    elif not cuda:
        data, reasons["data_placement"] = "loader", f"no GPU ({device.type}): patches from the DataLoader"
    elif resident is None:
        data, reasons["data_placement"] = "loader", "no cache given to size"
    else:
        fits = fits_on_device(resident, device, memory_fraction)
        data = "device" if fits else "loader"
        reasons["data_placement"] = (f"{resident / 2**30:.2f} GiB {'fits' if fits else 'does not fit'} in "
                                     f"{memory_fraction:.0%} of the free GPU memory")
    settings = TrainSettings(name, amp_dtype=dtype, grad_scaler=dtype == "float16", compile=compile_,
                             compile_mode=mode, cudnn_benchmark=bench, data=data, num_workers=workers,
                             pin_memory=pin)
    return settings, {"reasons": reasons, "resident_bytes": resident, "num_workers": workers}


def reference_settings(device: str | torch.device, config: Config | None = None) -> TrainSettings:
    """The reference design: fp16 autocast + ``GradScaler``, eager, contiguous, unpinned DataLoader.

    Args:
        device: the training device; off CUDA the reference's CUDA autocast is a no-op, so float32.
        config: a ``Config`` (``num_workers``); None: the platform default.
    """
    cuda = torch.device(device).type == "cuda"
    return TrainSettings("reference", amp_dtype="float16" if cuda else None, grad_scaler=cuda,
                         num_workers=None if config is None else config.num_workers)


def float32_settings(name: str = "float32") -> TrainSettings:
    """Float32, eager, DataLoader: the plain baseline (tf32 stays as PyTorch sets it)."""
    return TrainSettings(name)


# --------------------------------------------------------------------------- the step

def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``; a null context for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None, grad_clip: float) -> float:
    """Clip the gradient norm (after unscaling), step the optimizer and the scheduler, zero the gradients.

    Args:
        model: the unwrapped model whose parameters are clipped.
        optimizer: the optimizer.
        scaler: the ``GradScaler`` (skips the step when fp16 gradients overflowed).
        scheduler: stepped once, or None.
        grad_clip: max gradient norm; 0 or less: no clipping.

    Returns:
        The learning rate this step used.
    """
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return lr


def _dice_from_counts(inter: torch.Tensor, psum: torch.Tensor, gsum: torch.Tensor) -> torch.Tensor:
    denom = psum + gsum
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], criterion: nn.Module,
             device: torch.device, dtype: torch.dtype | None = None, threshold: float = 0.5,
             info: DistInfo | None = None) -> dict[str, float]:
    """Loss and Dice on validation patches, pooled over all patches (and ranks).

    Dice per class is ``2 |P & G| / (|P| + |G|)`` with ``P = sigmoid(logits) > threshold``, counted over
    every validation voxel at once (1.0 when both are empty); whole tumour (WT) is the union of the three
    channels.

    Args:
        model: the network (switched to eval mode and back to train mode afterwards).
        loader: batches of (image (B, 4, pd, ph, pw), mask (B, 3, pd, ph, pw)).
        criterion: the training loss.
        device: where to compute.
        dtype: autocast dtype or None.
        threshold: probability threshold.
        info: DDP ranks to pool over; None: this process only.

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
        pred = (torch.sigmoid(logits) > threshold).float()
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
        from tumorlib.losses import loss_from_config
        from tumorlib.model import model_from_config

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
        from tumorlib.schedule import warmup_cosine_scheduler

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
        lr = optimizer_step(self.model, self.optimizer, self.scaler, self.scheduler, self.config.grad_clip)
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
        try:
            return self._run(micro_batches)
        except FloatingPointError:
            raise
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            self.compile_error = f"{type(err).__name__}: {err}".strip()[:800]
            warnings.warn(f"torch.compile failed for settings {self.settings.name}; running eager instead "
                          f"({self.compile_error.splitlines()[0]})", RuntimeWarning, stacklevel=2)
            self.net = self._eager
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.settings.grad_scaler)
            return self._run(micro_batches)

    def __call__(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``train_step(micro_batches).loss``: the mean loss of the step's patches."""
        return self.train_step(micro_batches).loss

    def validation_step(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """``validate`` with this trainer's net, loss, autocast and ``config.threshold``."""
        return validate(self.net, loader, self.criterion, self.device, self.dtype, self.config.threshold,
                        self.info)

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
        from tumorlib.checkpoint import atomic_torch_save

        atomic_torch_save({**self.state_dict(), **extra}, path)
