"""Speed settings of the training engine, and how tumorlib chooses them for a device.

A ``TrainSettings`` says how ``engine.Trainer`` runs and is fed without changing the maths: autocast
dtype, ``GradScaler``, ``torch.compile``, cuDNN autotuning, where patches come from. Two matter:
``reference_settings`` (the reference design: fp16 autocast + ``GradScaler``, eager, unpinned
``DataLoader``) and ``resolve_settings`` (tumorlib's default: each ``auto`` speed field of the config
resolved for the device: bf16 where supported, else fp16 with a scaler; compile on CUDA with triton;
cuDNN autotuning on CUDA; the cache resident on the GPU when it fits; pinned memory on CUDA).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tumorlib.core.config import Config
from tumorlib.core.device import AMP_DTYPES, auto_amp_dtype

__all__ = [
    "TrainSettings",
    "compile_available",
    "float32_settings",
    "pick_amp_dtype",
    "resolved_config",
    "reference_settings",
    "resolve_settings",
]



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
    """The autocast dtype for ``config.amp_dtype`` on ``device``, with the reason: the one rule for training
    and inference, on the CPU as on a GPU.

    ``auto``: ``tumorlib.core.device.auto_amp_dtype`` (bf16 on GPUs with native bf16, else fp16; on the CPU
    bf16 where it computes bf16 natively, else float32); ``float32``, ``bfloat16`` and ``float16`` are taken
    as asked; ``config.amp`` False always gives float32.

    Args:
        device: the device the network runs on.
        config: a ``Config``; None: ``amp`` on, ``amp_dtype`` auto.

    Returns:
        ``("bfloat16" | "float16" | None, reason)``.
    """
    device = torch.device(device)
    asked = "auto" if config is None else config.amp_dtype
    if config is not None and not config.amp:
        return None, "config.amp is off"
    if asked == "float32":
        return None, "amp_dtype float32 asked for"
    if asked in AMP_DTYPES:
        return asked, f"amp_dtype {asked} asked for"
    return auto_amp_dtype(device)


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


def resolved_config(config: Config, settings: TrainSettings) -> Config:
    """``config`` with its ``auto`` speed fields replaced by what ``settings`` resolved them to."""
    def on(flag: bool) -> str:
        return "on" if flag else "off"

    return config.replace(amp_dtype=settings.amp_dtype or "float32",
                          compile=(settings.compile_mode or "default") if settings.compile else "off",
                          cudnn_benchmark=on(settings.cudnn_benchmark), data_placement=settings.data,
                          pin_memory=on(settings.pin_memory))
