"""The CPU table: training steps and one full-size case, engines x precisions, on the machine it runs on.

``benchmark_cpu`` measures, in one run (so the ratios compare like with like):

- training: the demo preset's training step (``engine.Trainer``, as ``tumorlib train`` runs it) in
  patches/s, float32 eager, bf16 autocast and bf16 + ``torch.compile``;
- inference: one random volume (155x240x240) through the full preset's model by sliding window (16
  windows of 64x160x160 at overlap 0.5) in seconds, torch float32 and bf16, OpenVINO f32 and bf16
  (``tumorlib.inference.engines``; skipped without openvino, the row says so), measured warm: each engine
  is built (conversion, compilation: ``setup_s``) and called once on one batch of windows
  (``first_call_s``: OpenVINO's first inference finishes its compilation), both outside the timed runs;
  then ``repeats`` runs of the whole case per engine, interleaved across engines (A, B, C, D, A, B, ...) so
  that a slow spell of a shared machine falls on all of them; minimum (``seconds``) and median reported.
  Then the same with 8-flip TTA (``tta_rows``). Beside them the labels agreement of each with torch float32
  (decoded with ``tumorlib.core.regions.Decoder``) and the largest logit difference.

The result records the CPU's bf16 capability (``tumorlib.core.device.cpu_bf16_support``, and whether
OpenVINO lists BF16), its name and the threads each engine computes with (``torch.get_num_threads()``,
OpenVINO's ``INFERENCE_NUM_THREADS``); ``format_cpu_table`` turns it into the markdown table of the README.
All sizes are arguments, so a test runs it in seconds.
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


def _engine_threads(predictor: Any) -> int | None:
    return getattr(predictor, "threads", None)


def _build_engines(model: torch.nn.Module, config: Any, image: torch.Tensor, engines: Sequence[str],
                   log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Each engine asked for, built and warmed up by one call, in ``INFER_COLUMNS`` order.

    Returns:
        ``(predictors, rows)``: the warm engines by column, and per column ``setup_s`` (conversion and
        compilation), ``first_call_s`` (the first call, on ``sw_batch_size`` windows: OpenVINO compiles its
        kernels there), ``engine`` and ``threads``; or ``{"skipped": why}``.
    """
    from tumorlib.inference.engines import make_engine
    from tumorlib.inference.openvino_model import openvino_available

    gen = torch.Generator().manual_seed(config.seed + 1)
    windows = torch.randn(config.sw_batch_size, image.shape[1], *config.patch_size, generator=gen)
    predictors: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for column, engine, precision in INFER_COLUMNS:
        if engine not in engines:
            rows[column] = {"skipped": f"engine {engine} not asked for"}
            continue
        if engine == "openvino" and not openvino_available():
            rows[column] = {"skipped": "openvino is not installed (pip install 'tumorlib[openvino]')"}
            continue
        t0 = time.perf_counter()
        predictor = make_engine(model, engine, "cpu", precision, config.patch_size, config.sw_batch_size)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictor(windows)
        first_call_s = time.perf_counter() - t0
        predictors[column] = predictor
        rows[column] = {"setup_s": setup_s, "first_call_s": first_call_s, "engine": predictor.describe(),
                        "threads": _engine_threads(predictor)}
        log(f"inference, {column}: set-up {setup_s:.1f} s, first call {first_call_s:.1f} s "
            f"({predictor.describe()})")
    return predictors, rows


def _labels(logits: torch.Tensor, threshold: float) -> np.ndarray:
    from tumorlib.core.regions import Decoder

    return Decoder("classes", threshold).labels(torch.sigmoid(logits[0]))


def _timed_runs(predictors: dict[str, Any], image: torch.Tensor, config: Any, repeats: int, tta: bool,
                log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``repeats`` timed runs of the whole case per engine, interleaved: A, B, C, D, A, B, C, D, ...

    Returns:
        ``(rows, order)``: per column ``runs`` (seconds of each run), ``seconds_min``, ``seconds_median``,
        ``seconds`` (the minimum) and, beside torch float32, ``labels_equal_pct`` and
        ``max_abs_logit_diff`` (of the first run); ``order`` the columns in the order they ran.
    """
    from tumorlib.inference.sliding_window import sliding_window_inference

    runs: dict[str, list[float]] = {column: [] for column in predictors}
    rows: dict[str, dict[str, Any]] = {column: {} for column in predictors}
    order: list[str] = []
    reference: tuple[np.ndarray, torch.Tensor] | None = None
    what = "8-flip TTA" if tta else "no TTA"
    for repeat in range(repeats):
        for column, predictor in predictors.items():
            t0 = time.perf_counter()
            logits = sliding_window_inference(image, predictor, config.patch_size, overlap=config.sw_overlap,
                                              blend=config.sw_blend, batch_size=config.sw_batch_size, tta=tta)
            runs[column].append(time.perf_counter() - t0)
            order.append(column)
            log(f"inference, {column}, {what}, run {repeat + 1}/{repeats}: {runs[column][-1]:.1f} s")
            if repeat:
                continue
            labels = _labels(logits, config.threshold)
            if reference is None and column == "float32 eager":
                reference = labels, logits
            if reference is not None:
                rows[column]["labels_equal_pct"] = float(100.0 * np.mean(labels == reference[0]))
                rows[column]["max_abs_logit_diff"] = float((logits - reference[1]).abs().max())
    for column, seconds in runs.items():
        rows[column].update(runs=seconds, seconds_min=min(seconds), seconds_median=float(np.median(seconds)),
                            seconds=min(seconds))
    return rows, order


def _infer_rows(preset: str, volume: Sequence[int], patch: Sequence[int] | None, features: Sequence[int] | None,
                engines: Sequence[str], log: Callable[[str], None], sw_batch: int | None = None,
                repeats: int = 3, tta: bool = True, tta_repeats: int = 1) -> dict[str, Any]:
    from tumorlib.inference.sliding_window import FLIP_AXES, window_starts
    from tumorlib.nn.unet import count_parameters, model_from_config

    if repeats < 1 or (tta and tta_repeats < 1):
        raise ValueError(f"repeats and tta_repeats must be >= 1, got {repeats} and {tta_repeats}")
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
    predictors, rows = _build_engines(model, config, image, engines, log)
    timed, order = _timed_runs(predictors, image, config, repeats, False, log)
    for column, row in timed.items():
        rows[column].update(row)
        log(f"inference, {column}: min {row['seconds_min']:.1f} s, median {row['seconds_median']:.1f} s "
            f"of {repeats} warm runs")
    infer = {"preset": preset, "volume": list(volume), "patch_size": list(config.patch_size),
             "features": list(config.features), "parameters": count_parameters(model), "windows": windows,
             "sw_batch_size": config.sw_batch_size, "overlap": config.sw_overlap, "tta": False, "rows": rows,
             "repeats": repeats, "order": order,
             "warmup": f"one untimed call per engine on {config.sw_batch_size} windows before the timed runs"}
    if tta:
        timed, order = _timed_runs(predictors, image, config, tta_repeats, True, log)
        tta_rows = {c: (timed[c] if c in timed else dict(r)) for c, r in rows.items()}
        infer["tta_rows"], infer["tta_repeats"], infer["tta_order"] = tta_rows, tta_repeats, order
        infer["tta_flips"] = len(FLIP_AXES)
    return infer


def _openvino_bf16() -> bool | None:
    """Whether OpenVINO lists ``BF16`` among the CPU's ``OPTIMIZATION_CAPABILITIES`` (None: it cannot say)."""
    from tumorlib.inference.openvino_model import openvino_core

    try:
        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except (RuntimeError, TypeError):
        return None


def benchmark_cpu(train_preset: str = "demo", train_patch: Sequence[int] = (32, 64, 64),
                  train_features: Sequence[int] | None = None, train_batch: int = 2, train_steps: int = 5,
                  train_warmup: int = 2, compile: bool = True, infer_preset: str = "full",
                  volume: Sequence[int] = (155, 240, 240), infer_patch: Sequence[int] | None = None,
                  infer_features: Sequence[int] | None = None,
                  engines: Sequence[str] = ("torch", "openvino"), train: bool = True,
                  infer: bool = True, log: Callable[[str], None] | None = None,
                  infer_sw_batch: int | None = None, repeats: int = 3, tta: bool = True,
                  tta_repeats: int = 1) -> dict[str, Any]:
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
        repeats: timed runs of the case per engine, after each engine's untimed warm-up call, interleaved
            across engines (A, B, C, D, A, B, C, D, ...), so a slow spell of a shared machine is spread
            over all of them; the minimum and the median are reported.
        tta: also time the case with 8-flip TTA (the same warm engines, interleaved the same way).
        tta_repeats: timed TTA runs per engine (each is 8 runs' worth of windows).

    Returns:
        ``{"cpu", "bf16", "bf16_reason", "threads", "openvino_threads", "openvino_bf16", "torch",
        "openvino", "train", "infer"}``; ``train`` and ``infer`` hold per-column ``rows`` (``patches_per_s``
        / ``seconds``, or ``skipped``). An inference row holds ``seconds`` (= ``seconds_min``),
        ``seconds_median``, ``runs``, ``setup_s`` and ``first_call_s`` (not in the timed runs), ``threads``
        and ``engine``; ``infer["order"]`` lists the columns in the order they ran; with ``tta``,
        ``infer["tta_rows"]`` holds the same timing keys for the TTA runs.
    """
    from tumorlib.inference.openvino_model import openvino_available

    native, reason = cpu_bf16_support()
    ov_version = ov_bf16 = None
    if openvino_available():
        import openvino

        ov_version, ov_bf16 = openvino.__version__.split("-")[0], _openvino_bf16()
    result: dict[str, Any] = {"cpu": cpu_name(), "bf16": native, "bf16_reason": reason,
                              "threads": torch.get_num_threads(), "openvino_threads": None,
                              "openvino_bf16": ov_bf16, "torch": torch.__version__, "openvino": ov_version}
    if train:
        result["train"] = _train_rows(train_preset, train_patch, train_features, train_batch, train_steps,
                                      train_warmup, compile, log or (lambda line: None))
    if infer:
        result["infer"] = _infer_rows(infer_preset, volume, infer_patch, infer_features, engines,
                                      log or (lambda line: None), infer_sw_batch, repeats, tta, tta_repeats)
        counts = [r["threads"] for c, e, _ in INFER_COLUMNS if e == "openvino"
                  for r in [result["infer"]["rows"][c]] if r.get("threads") is not None]
        result["openvino_threads"] = counts[0] if counts else None
    return result


def _cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not row or row.get(key) is None:
        return "-"
    return format(row[key], fmt)


def _first_call(row: dict[str, Any] | None) -> str:
    if not row or "setup_s" not in row:
        return "-"
    return f"{row['setup_s']:.1f} + {row['first_call_s']:.1f}"


def format_cpu_table(result: dict[str, Any]) -> str:
    """The markdown table of a ``benchmark_cpu`` result, with its capability line above it.

    Returns:
        A capability line (bf16 as the CPU flags and OpenVINO see it, the threads of each engine), a
        blank line, then the table: a training row (patches/s) and the inference rows (seconds per case:
        minimum and median of the warm runs, without and with TTA; set-up + first call; threads), one
        column per engine and precision; ``-`` where a cell was not measured.
    """
    ov = f"OpenVINO {result['openvino']}" if result.get("openvino") else "no OpenVINO"
    ov_bf16 = result.get("openvino_bf16")
    ov_sees = "" if ov_bf16 is None else f", OpenVINO lists BF16: {'yes' if ov_bf16 else 'no'}"
    ov_threads = result.get("openvino_threads")
    threads = f"{result['threads']} torch threads" + (f", {ov_threads} OpenVINO threads" if ov_threads else "")
    lines = [f"CPU: {result['cpu']}; bf16 native: {'yes' if result['bf16'] else 'no'} ({result['bf16_reason']}"
             f"{ov_sees}); {threads}; torch {result['torch']}; {ov}", "",
             "| what | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]

    def row(what: str, cells: list[str]) -> None:
        lines.append(f"| {what} | " + " | ".join(cells) + " |")

    train = result.get("train")
    if train:
        what = (f"{train['preset']} training step ({'-'.join(map(str, train['features']))} U-Net, batch "
                f"{train['batch_size']}, {'x'.join(map(str, train['patch_size']))}), patches/s")
        row(what, [_cell(train["rows"].get(c), "patches_per_s", ".1f") for c in _COLUMNS])
    infer = result.get("infer")
    if infer:
        n = infer.get("repeats", 1)
        rows = infer["rows"]
        what = (f"one {'x'.join(map(str, infer['volume']))} case, {infer['parameters'] / 1e6:.1f}M-parameter "
                f"model, {infer['windows']} window{'s' if infer['windows'] != 1 else ''} of "
                f"{'x'.join(map(str, infer['patch_size']))}, no TTA, "
                f"min of {n} warm runs, s")
        row(what, [_cell(rows.get(c), "seconds", ".1f") for c in _COLUMNS])
        if n > 1:
            row(f"the same, median of {n} warm runs, s", [_cell(rows.get(c), "seconds_median", ".1f")
                                                          for c in _COLUMNS])
        if "tta_rows" in infer:
            m, tta = infer["tta_repeats"], infer["tta_rows"]
            row(f"the same with {infer['tta_flips']}-flip TTA, min of {m} warm run{'s' if m > 1 else ''}, s",
                [_cell(tta.get(c), "seconds", ".1f") for c in _COLUMNS])
            if m > 1:
                row(f"the same with TTA, median of {m} warm runs, s",
                    [_cell(tta.get(c), "seconds_median", ".1f") for c in _COLUMNS])
        b = infer["sw_batch_size"]
        row(f"not in the runs: engine set-up (conversion, compilation) + first call ({b} window"
            f"{'s' if b != 1 else ''}), s", [_first_call(rows.get(c)) for c in _COLUMNS])
        row("threads", [_cell(rows.get(c), "threads", "d") for c in _COLUMNS])
        agree = [f"{c}: {r['labels_equal_pct']:.3f} % (max logit diff {r['max_abs_logit_diff']:.3g})"
                 for c, r in rows.items() if "labels_equal_pct" in r and c != "float32 eager"]
        if agree:
            lines += ["", "Labels equal to torch float32's: " + "; ".join(agree) + "."]
        agree = [f"{c}: {r['labels_equal_pct']:.3f} %" for c, r in infer.get("tta_rows", {}).items()
                 if "labels_equal_pct" in r and c != "float32 eager"]
        if agree:
            lines += ["Labels with TTA equal to torch float32's with TTA: " + "; ".join(agree) + "."]
    return "\n".join(lines)
