"""GPU throughput: the reference design's settings against tumorlib's default, measured in one run.

Two settings (``speed.TrainSettings``) of the same ``engine.Trainer`` (model, loss, optimizer, batch and
accumulation), the one ``tumorlib train`` uses:

- **reference**: what the reference design does on CUDA: fp16 autocast with a ``GradScaler``, eager,
  contiguous tensors, patches from the ``DataLoader`` (the preset's workers, unpinned memory). On the
  CPU its CUDA autocast does nothing, so it trains in float32 there.
- **default**: what ``tumorlib train`` resolves for the device (``tumorlib.training.settings.resolve_settings``): bf16
  autocast without a ``GradScaler`` where the card supports bf16 (else fp16 with one), ``torch.compile``
  on CUDA (falling back to eager with the error recorded when compilation fails), ``cudnn.benchmark``,
  the whole cropped cache resident on the GPU with patches cut there (``DevicePatchSampler``) when it
  fits in half the free memory, else the ``DataLoader`` with persistent workers, pinned memory and
  non-blocking copies. On the CPU: float32, eager, the ``DataLoader``.

Each is timed for the **model step alone** (random tensors already on the device) and **end to end**
(patches cut from the cache, moved to the device, the same step), in patches per second with the peak
memory (``torch.cuda.max_memory_allocated``; null on the CPU, where only the process's peak RSS is
reported), plus **full-volume inference** seconds (sliding windows with Gaussian blending over the
preset's volume: 155x240x240 in ``full``). A **loss check** trains float32 eager, the reference and the
default from the same weights on the same batches for a few optimizer steps and reports the largest
absolute and relative loss differences, so a faster default is seen not to change training.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch

from tumorlib.core.config import Config
from tumorlib.training.engine import Trainer
from tumorlib.training.settings import (
    TrainSettings,
    compile_available,
    float32_settings,
    reference_settings,
    resolve_settings,
)
from tumorlib.benchmarks.training import (
    dataset_batches,
    process_max_rss_gib,
    end_to_end_source,
    time_inference,
    time_train_steps,
)

__all__ = [
    "THROUGHPUT_TARGETS",
    "auto_settings",
    "benchmark_throughput",
    "compare_losses",
    "compile_available",
    "default_variant",
    "format_throughput",
    "reference_settings",
]

#: Goals on one H100 with the ``full`` preset.
THROUGHPUT_TARGETS = {"e2e_patches_per_s": 100.0, "inference_s": 0.2}

def auto_settings(device: str | torch.device, config: Config | None = None, cache_dir: str | os.PathLike | None = None,
                  volume_ids: Sequence[int] | None = None, memory_fraction: float = 0.5,
                  compile_mode: str | None = "auto") -> dict[str, Any]:
    """tumorlib's default speed settings for a device (``resolve_settings``), as a JSON-ready dict.

    Args:
        device: the training device (``"cpu"``, ``"cuda"``, ``torch.device``).
        config: a ``Config`` (``amp``, the GPU speed fields, ``num_workers``); None: the defaults.
        cache_dir: a finished cache; with it, ``gpu_resident`` says whether the training volumes fit on
            the device. None: ``gpu_resident`` is False.
        volume_ids: the volumes to hold (None: every cached volume).
        memory_fraction: share of the free device memory the resident data may take.
        compile_mode: ``"auto"``: the config's ``compile`` field; None or ``"none"``: never; any other
            string: compile with that mode (on the CPU too).

    Returns:
        A dict with ``device``, ``amp_dtype`` (``"bfloat16"``, ``"float16"`` or None), ``grad_scaler``,
        ``compile``, ``compile_mode``, ``cudnn_benchmark``, ``channels_last`` (always False),
        ``pin_memory``, ``non_blocking``, ``num_workers``, ``persistent_workers``, ``resident_bytes``
        (None without a cache), ``gpu_resident``, and ``reasons`` (a short text per choice).
    """
    config = config if config is not None else Config()
    if compile_mode is None or str(compile_mode).lower() == "none":
        config = config.replace(compile="off")
    elif compile_mode != "auto":
        config = config.replace(compile=str(compile_mode))
    device = torch.device(device)
    settings, facts = resolve_settings(config, device, cache_dir, volume_ids, memory_fraction)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "device": str(device),
        "amp_dtype": settings.amp_dtype,
        "grad_scaler": settings.grad_scaler,
        "compile": settings.compile,
        "compile_mode": settings.compile_mode,
        "cudnn_benchmark": settings.cudnn_benchmark,
        "channels_last": settings.channels_last,
        "pin_memory": settings.pin_memory,
        "non_blocking": cuda,
        "num_workers": facts["num_workers"],
        "persistent_workers": facts["num_workers"] > 0,
        "resident_bytes": facts["resident_bytes"],
        "gpu_resident": settings.data == "device",
        "reasons": facts["reasons"],
    }


def default_variant(settings: dict[str, Any], **overrides: Any) -> TrainSettings:
    """The ``default`` settings from ``auto_settings`` output.

    Args:
        settings: from ``auto_settings``.
        **overrides: ``TrainSettings`` fields to change (e.g. ``data="device"`` to exercise the sampler
            on the CPU).
    """
    fields = dict(amp_dtype=settings["amp_dtype"], grad_scaler=settings["grad_scaler"], compile=settings["compile"],
                  compile_mode=settings["compile_mode"], channels_last=settings["channels_last"],
                  cudnn_benchmark=settings["cudnn_benchmark"],
                  data="device" if settings["gpu_resident"] else "loader",
                  num_workers=settings["num_workers"], pin_memory=settings["pin_memory"])
    name = overrides.pop("name", "default")
    fields.update(overrides)
    return TrainSettings(name, **fields)


def compare_losses(config: Config, steps_by_name: dict[str, Trainer], batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   n_steps: int, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Train each variant from the same weights on the same batches and compare the losses step by step.

    Args:
        config: the config (``accumulation_steps``).
        steps_by_name: ``{name: Trainer}``; each is reset to ``state_dict`` first. Every later name is
            compared with every earlier one: ``b_vs_a``, the relative difference taken against ``a``
            (e.g. ``{"float32", "reference", "default"}`` gives ``reference_vs_float32``,
            ``default_vs_float32``, ``default_vs_reference``).
        batches: at least ``n_steps * accumulation_steps`` micro-batches (image, mask) on any device.
        n_steps: optimizer steps compared.
        state_dict: the common initial weights.

    Returns:
        ``{"steps", "losses": {name: [...]}, "skipped_steps": {name: n}, "pairs": {"a_vs_b":
        {"max_abs_diff", "max_rel_diff"}}}``; a skipped step is one where the ``GradScaler`` found
        inf/NaN gradients and lowered its scale (the weights did not change).
    """
    acc = config.accumulation_steps
    if len(batches) < n_steps * acc:
        raise ValueError(f"compare_losses needs {n_steps * acc} micro-batches, got {len(batches)}")
    losses: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for name, step in steps_by_name.items():
        step.reset(state_dict)
        torch.manual_seed(config.seed)  # each variant's draws independent of the ones before it
        losses[name], skipped[name] = [], 0
        with step.backend_flags():
            for s in range(n_steps):
                before = step.scaler.get_scale() if step.scaler.is_enabled() else None
                losses[name].append(float(step(batches[s * acc:(s + 1) * acc]).item()))
                if before is not None and step.scaler.get_scale() < before:
                    skipped[name] += 1
    pairs = {}
    names = list(steps_by_name)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diffs = [abs(x - y) for x, y in zip(losses[b], losses[a])]
            rels = [d / max(abs(y), 1e-12) for d, y in zip(diffs, losses[a])]
            pairs[f"{b}_vs_{a}"] = {"max_abs_diff": max(diffs), "max_rel_diff": max(rels)}
    return {"steps": n_steps, "losses": losses, "skipped_steps": skipped, "pairs": pairs}


def _measure_variant(config: Config, variant: TrainSettings, device: torch.device, init: dict[str, torch.Tensor],
                     batch: tuple[torch.Tensor, torch.Tensor], cache: Any, train_ids: Sequence[int],
                     timing: tuple[int, int], progress: bool,
                     inference: tuple[Sequence[int] | None, int] | None) -> tuple[Trainer, dict[str, Any]]:
    """One variant of ``benchmark_throughput``: the step alone, end to end, then inference.

    torch is seeded first, so the variant's random draws (model build, shuffled patches) depend neither
    on the variants before it nor on what ran earlier in the process.

    Returns:
        ``(trainer, row)``: the variant's ``Trainer`` and its row of ``variants``.
    """
    steps, warmup = timing
    torch.manual_seed(config.seed)
    step = Trainer(config, variant, device, init)
    alone = time_train_steps(step, lambda: batch, steps, warmup)
    step.reset(init)
    torch.manual_seed(config.seed)
    n_samples = (warmup + steps) * config.accumulation_steps * config.batch_size
    source, info, close = end_to_end_source(config, variant, cache, train_ids, n_samples, device, progress)
    try:
        e2e = time_train_steps(step, source, steps, warmup)
    finally:
        close()
    row = {"settings": variant.to_dict(), "step_patches_per_s": alone["patches_per_s"],
           "step_peak_memory_gib": alone["peak_memory_gib"], "e2e_patches_per_s": e2e["patches_per_s"],
           "e2e_peak_memory_gib": e2e["peak_memory_gib"], "data": variant.data, **info,
           "warmup_s": alone["warmup_s"], "compile_error": step.compile_error}
    if inference is not None:
        row.update(time_inference(step.model, variant, config, device, inference[0], inference[1]))
    return step, row


def _report(config: Config, device: torch.device, variants: Sequence[TrainSettings], rows: dict[str, dict[str, Any]],
            settings: dict[str, Any], loss_check: dict[str, Any] | None, n_train: int, steps: int,
            warmup: int) -> dict[str, Any]:
    """The JSON-ready result of ``benchmark_throughput`` (ratios candidate / baseline, targets)."""
    base, cand = rows[variants[0].name], rows[variants[-1].name]

    def ratio(a: float | None, c: float | None) -> float | None:
        return float(c / a) if a and c is not None else None

    ratios = {
        "step_patches_per_s": ratio(base["step_patches_per_s"], cand["step_patches_per_s"]),
        "e2e_patches_per_s": ratio(base["e2e_patches_per_s"], cand["e2e_patches_per_s"]),
        "step_peak_memory": ratio(base["step_peak_memory_gib"], cand["step_peak_memory_gib"]),
        "inference_speedup": ratio(cand.get("inference_s"), base.get("inference_s")),
    }
    cuda = device.type == "cuda"
    targets_met = None
    if cuda and config.preset == "full":
        targets_met = {"e2e_patches_per_s": cand["e2e_patches_per_s"] >= THROUGHPUT_TARGETS["e2e_patches_per_s"],
                       "inference_s": (cand["inference_s"] <= THROUGHPUT_TARGETS["inference_s"]
                                       if cand.get("inference_s") is not None else None)}
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "preset": config.preset,
        "patch_size": list(config.patch_size),
        "features": list(config.features),
        "batch_size": config.batch_size,
        "accumulation_steps": config.accumulation_steps,
        "steps": steps,
        "warmup": warmup,
        "train_volumes": n_train,
        "auto_settings": settings,
        "variants": rows,
        "baseline": variants[0].name,
        "candidate": variants[-1].name,
        "ratios": ratios,
        "loss_check": loss_check,
        "peak_memory_source": "torch.cuda.max_memory_allocated" if cuda else None,
        "process_max_rss_gib": process_max_rss_gib(),
        "targets": dict(THROUGHPUT_TARGETS),
        "targets_met": targets_met,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
    }


def benchmark_throughput(config: Config, cache_dir: str | os.PathLike | None = None,
                         device: str | torch.device | None = None, steps: int = 10, warmup: int = 3,
                         loss_steps: int = 5, compile_mode: str | None = "auto",
                         variants: Sequence[TrainSettings] | None = None, inference: bool = True,
                         inference_repeats: int = 3, volume_shape: Sequence[int] | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Reference against default: model step alone and end to end, inference, loss check.

    Args:
        config: a ``Config`` (model, patch, batch, accumulation, loss, sliding-window settings).
        cache_dir: a finished cache for the end-to-end runs and the loss check (its training split is
            used); None: the workspace's, built when missing.
        device: None: CUDA when available, else the CPU.
        steps: timed optimizer steps per measurement.
        warmup: untimed optimizer steps first.
        loss_steps: optimizer steps of the loss check (0 skips it).
        compile_mode: for the default variant, see ``auto_settings``.
        variants: ``(reference, default)`` to measure instead of ``reference_settings`` and ``default_variant``
            (the first is the baseline of the ratios, the last the candidate).
        inference: time full-volume inference per variant.
        inference_repeats: timed volumes per variant.
        volume_shape: (D, H, W) of the inference volume; None: ``config.synth_shape``.
        progress: progress bars while building the cache and loading resident volumes.

    Returns:
        A JSON-ready dict: ``device``, ``device_name``, ``torch_version``, ``preset``, ``patch_size``,
        ``batch_size``, ``accumulation_steps``, ``steps``, ``warmup``, ``auto_settings``, ``variants``
        (per name: ``settings``, ``step_patches_per_s``, ``step_peak_memory_gib``, ``e2e_patches_per_s``,
        ``e2e_peak_memory_gib``, ``data``, ``resident_load_s``, ``resident_gib``, ``warmup_s``,
        ``compile_error``, ``inference_s``, ``inference_peak_memory_gib``, ...), ``baseline`` and
        ``candidate`` (the names compared), ``ratios`` (candidate / baseline for patches per second and
        peak memory; baseline / candidate seconds for ``inference_speedup``), ``loss_check`` (see
        ``compare_losses``), ``peak_memory_source``, ``process_max_rss_gib``, ``targets`` and
        ``targets_met`` (None off CUDA or outside the ``full`` preset).
    """
    from tumorlib.data.resolve import resolve_cache
    from tumorlib.data.splits import run_splits
    from tumorlib.core.device import resolve_device
    from tumorlib.nn.unet import model_from_config

    device = resolve_device(device)
    cache = resolve_cache(config, cache_dir=cache_dir, progress=progress)
    train_ids = run_splits(config, cache)["train"]
    settings = auto_settings(device, config, cache, train_ids, compile_mode=compile_mode)
    if variants is None:
        variants = [reference_settings(device, config), default_variant(settings)]
    variants = list(variants)
    if len({v.name for v in variants}) != len(variants):
        raise ValueError(f"variant names must differ: {[v.name for v in variants]}")
    b, acc = config.batch_size, config.accumulation_steps
    gen = torch.Generator().manual_seed(config.seed)
    image = torch.randn(b, config.in_channels, *config.patch_size, generator=gen).to(device)
    mask = (torch.rand(b, config.num_classes, *config.patch_size, generator=gen) > 0.9).float().to(device)
    torch.manual_seed(config.seed)
    init = {k: v.detach().clone() for k, v in model_from_config(config).state_dict().items()}
    runners: dict[str, Trainer] = {}
    rows: dict[str, dict[str, Any]] = {}
    for variant in variants:
        runners[variant.name], rows[variant.name] = _measure_variant(
            config, variant, device, init, (image, mask), cache, train_ids, (steps, warmup), progress,
            (volume_shape, inference_repeats) if inference else None)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    loss_check = None
    if loss_steps > 0:
        batches = dataset_batches(config, cache, train_ids, loss_steps * acc)
        checked: dict[str, Trainer] = {}
        ref = float32_settings()
        if not any(v.amp_dtype is None and not v.compile for v in variants) and ref.name not in runners:
            checked[ref.name] = Trainer(config, ref, device, init)
        checked.update(runners)
        loss_check = compare_losses(config, checked, batches, loss_steps, init)

    return _report(config, device, variants, rows, settings, loss_check, len(train_ids), steps, warmup)


def format_throughput(result: dict[str, Any], train: dict[str, Any] | None = None) -> str:
    """The benchmark as a text table (for the command line and the README).

    Args:
        result: from ``benchmark_throughput``.
        train: optional ``bench_train`` keys (``train_step_patches_per_s``, ``train_patches_per_s``, ...),
            shown as the ``train.py`` row: what ``tumorlib train`` runs today.

    Returns:
        The table with one row per variant, the ratio row and the loss check.
    """

    def num(v: Any, fmt: str = ".1f") -> str:
        return "-" if v is None else format(v, fmt)

    shape = "x".join(map(str, result["patch_size"]))
    lines = [f"GPU throughput benchmark on {result['device_name']} ({result['device']}), preset {result['preset']}, "
             f"patch {shape}, batch {result['batch_size']} x {result['accumulation_steps']} accumulation",
             f"{'variant':<10} {'settings':<44} {'step p/s':>9} {'e2e p/s':>9} {'peak GiB':>9} {'infer s':>8}"]
    rows = dict(result["variants"])
    for name, row in rows.items():
        lines.append(f"{name:<10} {row['settings']['description']:<44} {num(row['step_patches_per_s']):>9} "
                     f"{num(row['e2e_patches_per_s']):>9} {num(row['step_peak_memory_gib'], '.2f'):>9} "
                     f"{num(row.get('inference_s'), '.3f'):>8}")
        if row.get("compile_error"):
            lines.append(f"{'':<10} compile failed, ran eager: {row['compile_error'].splitlines()[0][:90]}")
    if train and train.get("train_step_patches_per_s") is not None:
        desc = f"{train.get('train_amp_dtype') or 'fp32'}, {'compile' if train.get('train_compile') else 'eager'}, DataLoader"
        lines.append(f"{'train.py':<10} {desc:<44} {num(train['train_step_patches_per_s']):>9} "
                     f"{num(train.get('train_patches_per_s')):>9} {num(train.get('train_peak_memory_gib'), '.2f'):>9} "
                     f"{'-':>8}")
    r = result["ratios"]

    def times(v: float | None, width: int) -> str:
        return f"{'-' if v is None else format(v, '.2f') + 'x':>{width}}"

    lines.append(f"{result['candidate'] + ' / ' + result['baseline'] + ' (same run)':<55} "
                 f"{times(r['step_patches_per_s'], 9)} {times(r['e2e_patches_per_s'], 9)} "
                 f"{times(r['step_peak_memory'], 9)} {times(r['inference_speedup'], 8)}")
    settings = [{k: v for k, v in row["settings"].items() if k not in ("name", "description")} for row in rows.values()]
    if len(settings) > 1 and all(s == settings[0] for s in settings[1:]):
        lines.append(f"note: on {result['device']} the variants resolve to the same settings; their ratio is "
                     "measurement noise")
    if result["peak_memory_source"] is None:
        lines.append(f"peak memory: not measured on {result['device']} (process peak RSS "
                     f"{result['process_max_rss_gib']:.2f} GiB); inference column: seconds per "
                     f"{'x'.join(map(str, next(iter(rows.values())).get('volume_shape', [])))} volume")
    check = result.get("loss_check")
    if check:
        pairs = ", ".join(f"{k} max abs {v['max_abs_diff']:.2e} rel {v['max_rel_diff']:.2e}"
                          for k, v in check["pairs"].items())
        lines.append(f"loss check over {check['steps']} steps from the same weights and batches: {pairs}")
        if any(check["skipped_steps"].values()):
            lines.append(f"  GradScaler skipped steps: {check['skipped_steps']}")
    if result.get("targets_met") is not None:
        met = result["targets_met"]
        lines.append(f"targets: e2e >= {THROUGHPUT_TARGETS['e2e_patches_per_s']:g} patches/s "
                     f"{'met' if met['e2e_patches_per_s'] else 'MISSED'}; inference <= "
                     f"{THROUGHPUT_TARGETS['inference_s']:g} s {'met' if met['inference_s'] else 'MISSED'}")
    return "\n".join(lines)
