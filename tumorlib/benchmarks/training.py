"""Timing the training engine: optimizer steps, full-volume inference, data paths, ``tumorlib train``.

``time_train_steps`` times ``engine.Trainer`` steps on batches from any source; ``end_to_end_source``
gives the batches of a settings' data path (DataLoader or GPU-resident sampler); ``time_inference``
times sliding-window inference over one volume; ``bench_train`` measures what ``tumorlib train`` runs
on a device (the settings it resolves), model step alone and end to end.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tumorlib.core.config import Config
from tumorlib.nn.precision import autocast
from tumorlib.training.engine import Trainer, compiled_or_eager
from tumorlib.training.settings import TrainSettings

__all__ = [
    "bench_train",
    "dataset_batches",
    "end_to_end_source",
    "format_train_result",
    "process_max_rss_gib",
    "time_inference",
    "time_train_steps",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def process_max_rss_gib() -> float:
    """The peak resident memory of this process so far, in GiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**30 if sys.platform == "darwin" else kib / 2**20  # bytes on macOS, KiB on Linux


def time_train_steps(step: Trainer, next_micro_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                     steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Patches per second of ``steps`` optimizer steps after ``warmup`` untimed ones.

    Args:
        step: the training step (its accumulation is ``step.config.accumulation_steps`` micro-batches).
        next_micro_batch: returns the next (image (B, 4, ...), mask (B, 3, ...)).
        steps: timed optimizer steps.
        warmup: untimed steps first (compilation, cuDNN autotuning, DataLoader workers starting).

    Returns:
        ``{"patches_per_s", "seconds", "warmup_s", "peak_memory_gib"}``; the peak is the steady state after
        warm-up (``torch.cuda.max_memory_allocated``; None on the CPU).
    """
    device = step.device
    accumulation = step.config.accumulation_steps
    with step.backend_flags():
        t0 = time.perf_counter()
        for _ in range(warmup):
            step([next_micro_batch() for _ in range(accumulation)])
        _sync(device)
        warmup_s = time.perf_counter() - t0
        _reset_peak(device)
        patches = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            micro = [next_micro_batch() for _ in range(accumulation)]
            step(micro)
            patches += sum(int(m[0].shape[0]) for m in micro)
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"patches_per_s": patches / seconds, "seconds": seconds, "warmup_s": warmup_s,
            "peak_memory_gib": _peak_gib(device)}


def time_inference(model: nn.Module, variant: TrainSettings, config: Config, device: str | torch.device,
                   volume_shape: Sequence[int] | None = None, repeats: int = 3) -> dict[str, Any]:
    """Seconds for one whole volume through ``sliding_window_inference`` with Gaussian blending.

    The volume is random (4, D, H, W) float32 already on the device; the output stays there. The model
    runs in eval mode under the variant's autocast, compiled separately for inference when the variant
    compiles (falling back to eager on failure).

    Args:
        model: the trained or fresh model (put back in train mode afterwards).
        variant: autocast dtype and compile settings.
        config: ``patch_size``, ``sw_overlap``, ``sw_batch_size``, ``synth_shape``.
        device: the device.
        volume_shape: (D, H, W); None: ``config.synth_shape`` (155x240x240 in ``full``).
        repeats: timed volumes after one untimed warm-up volume (the median is reported).

    Returns:
        ``{"inference_s", "inference_peak_memory_gib", "volume_shape", "windows_per_volume",
        "inference_compile_error"}``.
    """
    from tumorlib.inference.sliding_window import sliding_window_inference, window_starts

    device = torch.device(device)
    shape = tuple(int(s) for s in (volume_shape or config.synth_shape))
    gen = torch.Generator().manual_seed(config.seed)
    image = torch.randn(1, config.in_channels, *shape, generator=gen).to(device)
    dtype = variant.torch_amp_dtype
    mode = None if variant.compile_mode in (None, "default") else variant.compile_mode
    net: nn.Module = torch.compile(model, mode=mode, backend=variant.compile_backend) if variant.compile else model
    error = None

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return net(x)

    def to_eager(message: str) -> None:
        nonlocal net, error
        net, error = model, message

    def run() -> torch.Tensor:
        return sliding_window_inference(image, predictor, config.patch_size, overlap=config.sw_overlap,
                                        blend="gaussian", batch_size=config.sw_batch_size)

    was_training = model.training
    model.eval()
    times = []
    old_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    try:
        if net is model:
            run()
        else:
            compiled_or_eager(run, to_eager)
        _sync(device)
        _reset_peak(device)
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
        model.train(was_training)
    padded = [max(s, p) for s, p in zip(shape, config.patch_size)]
    windows = 1
    for s, p in zip(padded, config.patch_size):
        windows *= len(window_starts(s, p, config.sw_overlap))
    return {"inference_s": float(statistics.median(times)), "inference_peak_memory_gib": _peak_gib(device),
            "volume_shape": list(shape), "windows_per_volume": windows, "inference_compile_error": error}


def dataset_batches(config: Config, cache_dir: str | os.PathLike, volume_ids: Sequence[int], n_micro: int,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_micro`` micro-batches of epoch 0 (index order), on the CPU.

    Args:
        config: patch and batch fields.
        cache_dir: the cache.
        volume_ids: the volumes patches are drawn from.
        n_micro: micro-batches.

    Returns:
        ``[(image (B, 4, ...), mask (B, 3, ...)), ...]``.
    """
    from tumorlib.data.dataset import BraTS3DDataset

    b = config.batch_size
    ds = BraTS3DDataset(cache_dir, volume_ids, patch_size=config.patch_size, tumor_prob=config.tumor_prob,
                        ram_cache_bytes=config.ram_cache_bytes, augment=config.augment, seed=config.seed,
                        intensity_aug=config.intensity_aug, tumor_sampling=config.tumor_sampling,
                        samples_per_epoch=n_micro * b)
    out = []
    for k in range(n_micro):
        items = [ds[(0, k * b + j)] for j in range(b)]
        out.append((torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])))
    return out


def end_to_end_source(config: Config, variant: TrainSettings, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                      n_samples: int, device: torch.device,
                      progress: bool = False) -> tuple[Callable[[], Any], dict[str, Any], Callable[[], None]]:
    """The settings' data path over one epoch of ``n_samples`` patches.

    Returns:
        ``(next_micro_batch, info, close)``: ``next_micro_batch()`` gives (image (B, 4, ...), mask (B, 3, ...));
        ``info`` has ``resident_load_s`` and ``resident_gib`` (None for the DataLoader); ``close()`` ends it.
    """
    b = config.batch_size
    if variant.data == "device":
        from tumorlib.data.gpu_patches import DevicePatchSampler

        t0 = time.perf_counter()
        sampler = DevicePatchSampler(cache_dir, volume_ids, patch_size=config.patch_size,
                                     tumor_prob=config.tumor_prob, augment=config.augment, seed=config.seed,
                                     samples_per_epoch=n_samples, device=device, progress=progress,
                                     intensity_aug=config.intensity_aug, tumor_sampling=config.tumor_sampling)
        _sync(device)
        info = {"resident_load_s": time.perf_counter() - t0, "resident_gib": sampler.nbytes / 2**30}
        batches = iter(sampler.loader(b, shuffle=True, sampler_seed=config.seed))
        return (lambda: next(batches)), info, (lambda: None)
    from tumorlib.data.dataset import BraTS3DDataset, make_loader

    ds = BraTS3DDataset(cache_dir, volume_ids, patch_size=config.patch_size, tumor_prob=config.tumor_prob,
                        ram_cache_bytes=config.ram_cache_bytes, augment=config.augment, seed=config.seed,
                        intensity_aug=config.intensity_aug, tumor_sampling=config.tumor_sampling,
                        samples_per_epoch=n_samples)
    loader = make_loader(ds, config, shuffle=True, batch_size=b, num_workers=variant.num_workers,
                         pin_memory=variant.pin_memory and device.type == "cuda")
    batches = iter(loader)

    def close() -> None:
        nonlocal batches
        batches = None  # shuts down the workers

    return (lambda: next(batches)), {"resident_load_s": None, "resident_gib": None,
                                     "num_workers": loader.num_workers}, close


def _train_step_rate(trainer: Trainer, batches: Callable[[], Any], steps: int, warmup: int) -> dict[str, Any]:
    """Patches per second of ``steps`` optimizer steps of ``trainer`` (after ``warmup`` untimed ones)."""
    timed = time_train_steps(trainer, batches, steps, warmup)
    return {"patches_per_s": timed["patches_per_s"], "peak_gib": timed["peak_memory_gib"]}


def bench_train(config: Config, cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None, steps: int = 5,
                warmup: int = 2, with_data: bool = True, progress: bool = False) -> dict[str, Any]:
    """Training throughput of ``tumorlib train`` on one device, as JSON-ready keys.

    The step is ``engine.Trainer`` with the settings ``tumorlib train`` resolves for the device and cache
    (``tumorlib.training.settings.resolve_settings``), measured twice: the **model step alone** (random
    tensors already on the device) and **end to end** (patches from the run's data path, on the device, then the same step).

    Args:
        config: a ``Config`` (``features``, ``patch_size``, ``batch_size``, ``accumulation_steps``, ``amp``,
            the GPU speed fields, ...).
        cache_dir: a finished cache for the end-to-end measurement; None: the workspace's, built when missing.
        device: None: CUDA when available, else CPU.
        steps: timed optimizer steps.
        warmup: untimed optimizer steps first (compilation, allocator, page cache).
        with_data: also measure end to end.
        progress: tqdm bars while building a missing cache.

    Returns:
        Dict with ``train_device``, ``train_amp_dtype``, ``train_compile``, ``train_data``, ``train_parameters``,
        ``train_patch_size``, ``train_batch_size``, ``train_accumulation_steps``, ``train_step_patches_per_s``
        (model step alone), ``train_patches_per_s`` (end to end; None without ``with_data``),
        ``train_peak_memory_gib`` (CUDA only, else None), ``train_compile_error``.
    """
    from tumorlib.data.resolve import resolve_cache
    from tumorlib.data.splits import run_splits
    from tumorlib.core.device import resolve_device
    from tumorlib.training.settings import resolve_settings
    from tumorlib.nn.unet import count_parameters

    device = resolve_device(device)
    b, shape = config.batch_size, tuple(config.patch_size)
    cache = train_ids = None
    if with_data:
        cache = resolve_cache(config, cache_dir=cache_dir, progress=progress)
        train_ids = run_splits(config, cache)["train"]
    settings, _ = resolve_settings(config, device, cache, train_ids, name="train")
    trainer = Trainer(config, settings, device)
    init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    gen = torch.Generator().manual_seed(config.seed)
    image = torch.randn(b, config.in_channels, *shape, generator=gen).to(device)
    mask = (torch.rand(b, config.num_classes, *shape, generator=gen) > 0.9).float().to(device)
    alone = _train_step_rate(trainer, lambda: (image, mask), steps, warmup)
    result: dict[str, Any] = {
        "train_device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "train_amp_dtype": settings.amp_dtype, "train_compile": settings.compile, "train_data": settings.data,
        "train_parameters": count_parameters(trainer.model), "train_patch_size": list(shape),
        "train_batch_size": b, "train_accumulation_steps": config.accumulation_steps,
        "train_step_patches_per_s": alone["patches_per_s"], "train_patches_per_s": None,
        "train_peak_memory_gib": alone["peak_gib"], "train_compile_error": trainer.compile_error,
    }
    if with_data:
        trainer.reset(init)
        n = (warmup + steps) * config.accumulation_steps * b
        source, _, close = end_to_end_source(config, settings, cache, train_ids, n, device, progress)
        try:
            end_to_end = _train_step_rate(trainer, source, steps, warmup)
        finally:
            close()
        result["train_patches_per_s"] = end_to_end["patches_per_s"]
        if end_to_end["peak_gib"] is not None:
            result["train_peak_memory_gib"] = max(alone["peak_gib"], end_to_end["peak_gib"])
    return result


def format_train_result(result: dict[str, Any]) -> str:
    """A short text table of ``bench_train`` keys (for the command line)."""
    keys = [k for k in result if k.startswith("train_")]
    width = max(len(k) for k in keys)
    return "training benchmark:\n" + "\n".join(
        f"  {k:<{width}} {result[k]:.4g}" if isinstance(result[k], float) else f"  {k:<{width}} {result[k]}"
        for k in keys)
