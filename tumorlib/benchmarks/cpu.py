"""The CPU table: training steps and one full-size case, engines x precisions, on the machine it runs on.

``benchmark_cpu`` measures, in one run (so the ratios compare like with like):

- training: the demo preset's training step (``engine.Trainer``, as ``tumorlib train`` runs it) in
  patches/s, float32 eager, bf16 autocast and bf16 + ``torch.compile``;
- inference: one random volume (155x240x240) through the full preset's model by sliding window (16
  windows of 64x160x160 at overlap 0.5, no TTA) in seconds, torch float32 and bf16, OpenVINO f32 and bf16
  (``tumorlib.inference.engines``; skipped without openvino), plus the labels agreement of each with torch
  float32 (decoded with ``tumorlib.core.brats.decode_probabilities``) and the largest logit difference.

The result records the CPU's bf16 capability (``tumorlib.core.device.cpu_bf16_support``), its name and the
threads torch uses; ``format_cpu_table`` turns it into the markdown table of the README. All sizes are
arguments, so a test runs it in seconds.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tumorlib.core.config import get_config
from tumorlib.core.device import cpu_bf16_support

__all__ = ["INFER_COLUMNS", "TRAIN_COLUMNS", "benchmark_cpu", "cpu_name", "format_cpu_table"]

#: Training variants: (column, autocast dtype, torch.compile).
TRAIN_COLUMNS: tuple[tuple[str, str | None, bool], ...] = (
    ("float32 eager", None, False), ("bf16 autocast", "bfloat16", False), ("bf16 + torch.compile", "bfloat16", True))
#: Inference variants: (column, engine, precision).
INFER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("float32 eager", "torch", "float32"), ("bf16 autocast", "torch", "bfloat16"),
    ("OpenVINO f32", "openvino", "float32"), ("OpenVINO bf16", "openvino", "bfloat16"))
_COLUMNS = ("float32 eager", "bf16 autocast", "bf16 + torch.compile", "OpenVINO f32", "OpenVINO bf16")


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or ``"unknown CPU"``."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _train_rows(preset: str, patch: Sequence[int], features: Sequence[int] | None, batch: int, steps: int,
                warmup: int, compile: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from tumorlib.benchmarks.training import time_train_steps
    from tumorlib.training.engine import Trainer, TrainSettings

    overrides: dict[str, Any] = {"patch_size": tuple(patch), "batch_size": batch, "accumulation_steps": 1}
    if features is not None:
        overrides["features"] = tuple(features)
    config = get_config(preset, **overrides)
    gen = torch.Generator().manual_seed(config.seed)
    image = torch.randn(batch, config.in_channels, *config.patch_size, generator=gen)
    mask = (torch.rand(batch, config.num_classes, *config.patch_size, generator=gen) > 0.9).float()
    rows: dict[str, Any] = {}
    for column, dtype, compiled in TRAIN_COLUMNS:
        if compiled and not compile:
            rows[column] = {"skipped": "torch.compile not asked for"}
            continue
        settings = TrainSettings(name=column, amp_dtype=dtype, compile=compiled)
        step = Trainer(config, settings, "cpu")
        timing = time_train_steps(step, lambda: (image, mask), steps=steps, warmup=warmup)
        rows[column] = {"patches_per_s": timing["patches_per_s"], "seconds": timing["seconds"],
                        "warmup_s": timing["warmup_s"], "compile_error": step.compile_error}
        log(f"training, {column}: {timing['patches_per_s']:.2f} patches/s")
    return {"preset": preset, "patch_size": list(config.patch_size), "features": list(config.features),
            "batch_size": batch, "steps": steps, "warmup": warmup, "rows": rows}


def _infer_one(model: torch.nn.Module, image: torch.Tensor, config: Any, engine: str, precision: str) -> tuple:
    from tumorlib.inference.engines import make_engine
    from tumorlib.inference.sliding_window import sliding_window_inference

    t0 = time.perf_counter()
    predictor = make_engine(model, engine, "cpu", precision, config.patch_size, config.sw_batch_size)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = sliding_window_inference(image, predictor, config.patch_size, overlap=config.sw_overlap,
                                      blend=config.sw_blend, batch_size=config.sw_batch_size)
    return logits, {"seconds": time.perf_counter() - t0, "setup_s": setup_s, "engine": predictor.describe()}


def _labels(logits: torch.Tensor, threshold: float) -> np.ndarray:
    from tumorlib.core.brats import decode_probabilities

    return decode_probabilities(torch.sigmoid(logits[0]), threshold)


def _infer_rows(preset: str, volume: Sequence[int], patch: Sequence[int] | None, features: Sequence[int] | None,
                engines: Sequence[str], log: Callable[[str], None], sw_batch: int | None = None) -> dict[str, Any]:
    from tumorlib.inference.engines import openvino_available
    from tumorlib.inference.sliding_window import window_starts
    from tumorlib.nn.unet import count_parameters, model_from_config

    overrides: dict[str, Any] = {}
    if patch is not None:
        overrides["patch_size"] = tuple(patch)
    if features is not None:
        overrides["features"] = tuple(features)
    if sw_batch is not None:
        overrides["sw_batch_size"] = int(sw_batch)
    config = get_config(preset, **overrides)
    torch.manual_seed(config.seed)
    model = model_from_config(config).eval()
    gen = torch.Generator().manual_seed(config.seed)
    image = torch.randn(1, config.in_channels, *volume, generator=gen)
    windows = int(np.prod([len(window_starts(max(s, p), p, config.sw_overlap))
                           for s, p in zip(volume, config.patch_size)]))
    rows: dict[str, Any] = {}
    reference: np.ndarray | None = None
    reference_logits: torch.Tensor | None = None
    for column, engine, precision in INFER_COLUMNS:
        if engine not in engines:
            rows[column] = {"skipped": f"engine {engine} not asked for"}
            continue
        if engine == "openvino" and not openvino_available():
            rows[column] = {"skipped": "openvino is not installed (pip install 'tumorlib[openvino]')"}
            continue
        logits, row = _infer_one(model, image, config, engine, precision)
        labels = _labels(logits, config.threshold)
        if reference is None and column == "float32 eager":
            reference, reference_logits = labels, logits
        if reference is not None:
            row["labels_equal_pct"] = float(100.0 * np.mean(labels == reference))
            row["max_abs_logit_diff"] = float((logits - reference_logits).abs().max())
        rows[column] = row
        log(f"inference, {column}: {row['seconds']:.1f} s ({row['engine']})")
    return {"preset": preset, "volume": list(volume), "patch_size": list(config.patch_size),
            "features": list(config.features), "parameters": count_parameters(model), "windows": windows,
            "sw_batch_size": config.sw_batch_size, "overlap": config.sw_overlap, "tta": False, "rows": rows}


def benchmark_cpu(train_preset: str = "demo", train_patch: Sequence[int] = (32, 64, 64),
                  train_features: Sequence[int] | None = None, train_batch: int = 2, train_steps: int = 5,
                  train_warmup: int = 2, compile: bool = True, infer_preset: str = "full",
                  volume: Sequence[int] = (155, 240, 240), infer_patch: Sequence[int] | None = None,
                  infer_features: Sequence[int] | None = None,
                  engines: Sequence[str] = ("torch", "openvino"), train: bool = True,
                  infer: bool = True, log: Callable[[str], None] | None = None,
                  infer_sw_batch: int | None = None) -> dict[str, Any]:
    """The CPU table for this machine: training patches/s and seconds per full-size case.

    Args:
        train_preset: the preset whose model trains (``demo``: the 8-16-32-64 U-Net).
        train_patch: training patch (d, h, w).
        train_features: U-Net widths (None: the preset's).
        train_batch: patches per step.
        train_steps: timed optimizer steps per variant (after ``train_warmup`` untimed ones).
        train_warmup: untimed steps (the compiled variant compiles in them).
        compile: time the bf16 + ``torch.compile`` variant (compiling takes minutes on a CPU).
        infer_preset: the preset whose model predicts (``full``: 22.6M parameters, patch 64x160x160).
        volume: the case (D, H, W), random intensities.
        infer_patch: window (None: the preset's patch).
        infer_features: U-Net widths for inference (None: the preset's).
        engines: which engines to time (``"torch"``, ``"openvino"``).
        train: time the training rows.
        infer: time the inference rows.
        log: called with one line per measured cell (e.g. ``print``), so a long run shows its progress.
        infer_sw_batch: windows per call (None: the preset's ``sw_batch_size``; OpenVINO's static batch).

    Returns:
        ``{"cpu", "bf16", "bf16_reason", "threads", "torch", "openvino", "train", "infer"}``; ``train``
        and ``infer`` hold per-column ``rows`` (``patches_per_s`` / ``seconds``, or ``skipped``).
    """
    from tumorlib.inference.engines import openvino_available

    native, reason = cpu_bf16_support()
    ov_version = None
    if openvino_available():
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    result: dict[str, Any] = {"cpu": cpu_name(), "bf16": native, "bf16_reason": reason,
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "openvino": ov_version}
    if train:
        result["train"] = _train_rows(train_preset, train_patch, train_features, train_batch, train_steps,
                                      train_warmup, compile, log or (lambda line: None))
    if infer:
        result["infer"] = _infer_rows(infer_preset, volume, infer_patch, infer_features, engines,
                                      log or (lambda line: None), infer_sw_batch)
    return result


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not row or key not in row:
        return "-"
    return format(row[key], fmt)


def format_cpu_table(result: dict[str, Any]) -> str:
    """The markdown table of a ``benchmark_cpu`` result, with its capability line above it.

    Returns:
        A capability line, a blank line, then the table: a training row (patches/s) and an inference row
        (seconds per case), one column per engine and precision; ``-`` where a cell was not measured.
    """
    ov = f"OpenVINO {result['openvino']}" if result.get("openvino") else "no OpenVINO"
    lines = [f"CPU: {result['cpu']}; bf16 native: {'yes' if result['bf16'] else 'no'} ({result['bf16_reason']}); "
             f"{result['threads']} torch threads; torch {result['torch']}; {ov}", "",
             "| what | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    train = result.get("train")
    if train:
        what = (f"{train['preset']} training step ({'-'.join(map(str, train['features']))} U-Net, batch "
                f"{train['batch_size']}, {'x'.join(map(str, train['patch_size']))}), patches/s")
        lines.append(f"| {what} | " + " | ".join(_cell(train["rows"].get(c), "patches_per_s", ".1f")
                                                 for c in _COLUMNS) + " |")
    infer = result.get("infer")
    if infer:
        what = (f"one {'x'.join(map(str, infer['volume']))} case, {infer['parameters'] / 1e6:.1f}M-parameter "
                f"model, {infer['windows']} windows of {'x'.join(map(str, infer['patch_size']))}, no TTA, s")
        lines.append(f"| {what} | " + " | ".join(_cell(infer["rows"].get(c), "seconds", ".1f")
                                                 for c in _COLUMNS) + " |")
        agree = [f"{c}: {r['labels_equal_pct']:.3f} % (max logit diff {r['max_abs_logit_diff']:.3g})"
                 for c, r in infer["rows"].items() if "labels_equal_pct" in r and c != "float32 eager"]
        if agree:
            lines += ["", "Labels equal to torch float32's: " + "; ".join(agree) + "."]
    return "\n".join(lines)
