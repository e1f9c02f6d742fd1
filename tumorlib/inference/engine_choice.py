"""``--engine auto``: the fastest engine and precision of those allowed, measured on this CPU.

On first use, one window of the run's own model goes through each allowed candidate (OpenVINO and torch,
bf16 where the CPU computes it natively and float32): a warm-up call, then one timed call; a candidate
whose warm-up already takes over ``DROP_FACTOR`` times the best timed call so far is not timed again. The
choice is kept beside the converted model, ``best_model.openvino/engine_choice.json``, with the CPU it
was measured on (``tumorlib.core.device.cpu_signature``: model name, bf16 flags, thread counts), the
checkpoint's blake2b, the window and the candidates; a later run on the same CPU reuses it, a different
CPU (or model, window, candidates) measures again. The engines themselves are built by the caller
(``tumorlib.inference.engines.make_engine`` passes ``build``), so this module only measures and keeps. Without OpenVINO, auto means torch at the precision
rule's choice, and says so; without a checkpoint (a model in memory) it measures each time, keeping nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.device import cpu_bf16_support, cpu_signature
from tumorlib.core.integrity import file_record
from tumorlib.core.safety import atomic_write

__all__ = ["CHOICE_FILE", "DROP_FACTOR", "choose_engine", "engine_candidates", "measure_candidates"]

CHOICE_FILE = "engine_choice.json"
DROP_FACTOR = 3.0
_WRITER = "tumorlib.inference.engine_choice"
_FORMAT = 1
#: ``build(engine, precision, batch_size)``: an engine (with ``name``, ``precision``, ``reason``) of the run's model
Build = Callable[[str, str, int], Any]


def engine_candidates(precision: str = "auto", openvino: bool = True) -> list[tuple[str, str]]:
    """The ``(engine, precision)`` pairs that ``--engine auto`` may pick, likely fastest first.

    Args:
        precision: ``"auto"`` (bf16 where the CPU computes it natively, and float32), or one precision.
        openvino: whether OpenVINO is installed.

    Returns:
        E.g. ``[("openvino", "bfloat16"), ("openvino", "float32"), ("torch", "bfloat16"), ("torch", "float32")]``.
    """
    precisions = [precision]
    if precision == "auto":
        precisions = ["bfloat16", "float32"] if cpu_bf16_support()[0] else ["float32"]
    return [(e, p) for e in (["openvino", "torch"] if openvino else ["torch"]) for p in precisions]


def measure_candidates(build: Build, candidates: Sequence[tuple[str, str]],
                       window: Sequence[int]) -> list[dict[str, Any]]:
    """Time one window through each candidate (built for batch 1): a warm-up call, then one timed call.

    Args:
        build: makes a candidate's engine (see ``Build``).
        candidates: ``(engine, precision)`` pairs, likely fastest first.
        window: one window's shape (C, d, h, w).

    Returns:
        One row per candidate: ``engine``, ``precision``, ``warm_up_s`` and ``seconds`` (the timed call, None
        where the warm-up alone was over ``DROP_FACTOR`` times the best so far).
    """
    x = torch.randn(1, *(int(n) for n in window), generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    for name, precision in candidates:
        engine = build(name, precision, 1)
        t0 = time.perf_counter()
        engine(x)
        warm = time.perf_counter() - t0
        best = min((r["seconds"] for r in rows if r["seconds"] is not None), default=None)
        seconds = None
        if best is None or warm <= DROP_FACTOR * best:
            t0 = time.perf_counter()
            engine(x)
            seconds = time.perf_counter() - t0
        rows.append({"engine": name, "precision": precision, "warm_up_s": round(warm, 4),
                     "seconds": None if seconds is None else round(seconds, 4)})
        del engine
    return rows


def _summary(rows: Sequence[dict[str, Any]], best: dict[str, Any]) -> str:
    others = ", ".join(f"{r['engine']} {r['precision']} "
                       + (f"{r['seconds']:.2f} s" if r["seconds"] is not None else f"warm-up {r['warm_up_s']:.2f} s")
                       for r in rows if r is not best)
    return f"{best['seconds']:.2f} s a window" + (f"; {others}" if others else "")


def _read_choice(path: Path) -> dict[str, Any] | None:
    try:
        choice = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return choice if isinstance(choice, dict) and choice.get("written_by") == _WRITER else None


def choose_engine(build: Build, precision: str, window: Sequence[int], openvino: bool,
                  checkpoint: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
                  folder_is_ours: Callable[[Path], bool] = lambda f: True, batch_size: int = 4,
                  quiet: bool = False) -> Any:
    """The engine ``--engine auto`` means on the CPU, chosen by measurement (or by the kept choice).

    Args:
        build: makes an engine of the run's model (see ``Build``).
        precision: ``"auto"`` or one precision (``inference_precision``).
        window: one window's shape (C, d, h, w).
        openvino: whether OpenVINO is installed (False: torch, without measuring, and the reason says so).
        checkpoint: the checkpoint the model came from (its blake2b is part of what a kept choice holds for).
        folder: the converted-model folder the choice is kept in (None: measured each time, nothing kept).
        folder_is_ours: whether tumorlib wrote ``folder`` (the choice is never written into a stranger's).
        batch_size: windows per call of the engine returned.
        quiet: True: do not print the one line saying which engine was chosen and why.

    Returns:
        The chosen engine; its ``reason`` says why (measured now, or the kept choice).

    Raises:
        ValueError: a precision no candidate can run (e.g. float16 on the CPU).
    """
    candidates = engine_candidates(precision, openvino)
    if not openvino:
        engine = build("torch", precision, batch_size)
        engine.reason = f"auto: torch, openvino is not installed; {engine.reason}"
    else:
        folder = Path(folder) if folder is not None else None
        wanted = {"format": _FORMAT, "written_by": _WRITER, "cpu": cpu_signature(),
                  "checkpoint_blake2b": file_record(checkpoint, checksum=True)["blake2b"] if checkpoint else None,
                  "window": [int(n) for n in window], "candidates": [list(c) for c in candidates]}
        kept = _read_choice(folder / CHOICE_FILE) if folder is not None else None
        measured = kept is None or any(kept.get(k) != v for k, v in wanted.items())
        rows = measure_candidates(build, candidates, window) if measured else kept["timings"]
        how = f"measured now on {wanted['cpu']['model']}" if measured else f"kept in {CHOICE_FILE}, same CPU"
        best = min((r for r in rows if r["seconds"] is not None), key=lambda r: r["seconds"])
        engine = build(best["engine"], best["precision"], batch_size)
        if measured and folder is not None and folder.is_dir() and folder_is_ours(folder):
            try:
                atomic_write(folder / CHOICE_FILE, json.dumps({**wanted, "timings": rows, "chosen": best},
                                                              indent=2) + "\n")
            except OSError:  # a read-only run folder: measured again next time
                how += f" (not kept: {folder} is not writable)"
        engine.reason = f"auto: fastest of {len(rows)} ({how}; {_summary(rows, best)})"
    if not quiet:
        print(f"engine: {engine.name} {engine.precision} ({engine.reason})")
    return engine
