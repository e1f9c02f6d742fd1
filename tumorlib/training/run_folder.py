"""The run folder of a training: what it holds, checking it, and what a stopped run kept.

``RUN/config.json`` and ``RUN/splits.json`` are written before the first epoch (``prepare_run_folder``);
a new run over a finished one moves the old files aside first. ``config_diff`` is the one comparison of a
checkpoint's config with the current one (resuming in the loop and in ``tumorlib.training.resume``);
``stop_reason`` and ``explain_interrupt`` say what the folder kept when a run stops early.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.config import Config, resume_fields
from tumorlib.core.folders import move_aside
from tumorlib.core.safety import atomic_write
from tumorlib.nn.checkpoint import BEST_NAME, LAST_NAME

__all__ = ["RESULT_FILES", "RUN_FILES", "config_diff", "explain_interrupt", "prepare_run_folder", "stop_reason"]

#: What makes a finished run (relative to ``RUN``); a new run moves these aside, or refuses, first.
RESULT_FILES = (f"checkpoints/{BEST_NAME}", f"checkpoints/{LAST_NAME}", "history.csv", "training_curves.png")
#: Everything a new run replaces: the results plus the config and splits they belong to.
RUN_FILES = ("config.json", "splits.json", *RESULT_FILES)


def config_diff(saved: dict[str, Any], config: Config) -> list[str]:
    """The fields that keep a checkpoint from being resumed with ``config``.

    Args:
        saved: the config stored in a checkpoint (``Config.to_dict`` of its run).
        config: the config now.

    Returns:
        One line per differing resume field (``Config`` fields not marked runtime); fields newer than the
        checkpoint are not compared. Empty when the run may be resumed.
    """
    now = config.to_dict()
    keys = sorted(resume_fields() & set(saved))
    return [f"{k}={saved.get(k)!r} in the checkpoint but {now.get(k)!r} now" for k in keys
            if saved.get(k) != now.get(k)]


def prepare_run_folder(run: Path, config: Config, splits: dict[str, list[int]] | None, resumed: bool,
                       overwrite: bool) -> Path | None:
    """Check the run folder, move a finished run aside, then write ``config.json`` and ``splits.json``.

    Nothing is written before the checks pass. A resumed run must keep its volumes: a ``splits.json``
    that differs from ``splits`` is refused. A new run over a finished one moves ``RUN_FILES`` into
    ``RUN/previous-<time>/`` (a loadable run folder) with ``overwrite``, else refuses.

    Args:
        run: the run folder (created).
        config: the resolved config, written as ``config.json``.
        splits: the volume split, written as ``splits.json`` (None: not written).
        resumed: the run continues a checkpoint.
        overwrite: a finished run there may be moved aside.

    Returns:
        The ``previous-*`` folder holding the earlier run, or None.

    Raises:
        ValueError: resuming with other splits (names the split and the volumes).
        FileExistsError: a finished run is there and neither ``resume`` nor ``overwrite`` was given.
    """
    prev = None
    saved_path = run / "splits.json"
    if resumed:
        if splits is not None and saved_path.is_file():
            from tumorlib.data.splits import load_splits

            saved = load_splits(saved_path)
            diff = [f"{k}: {sorted(set(saved.get(k, [])) ^ set(v))}" for k, v in splits.items()
                    if sorted(saved.get(k, [])) != sorted(v)]
            if diff:
                raise ValueError(f"cannot resume {run}: {saved_path.name} holds other volumes than the split of "
                                 f"this cache now (differing volumes {'; '.join(diff)}); resume with the same cache "
                                 f"and split settings, or start a new run in another --out folder")
    elif any((run / name).exists() for name in RESULT_FILES):
        prev = move_aside(run, RUN_FILES, overwrite=overwrite, what="training run")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write(run / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    if splits is not None:
        atomic_write(saved_path, json.dumps(splits, indent=1) + "\n")
    return prev


def stop_reason(micro_batches: Any | None, history: list[dict[str, float]], last_path: Path,
                prev: Path | None) -> str:
    """What a run stopped by a non-finite loss kept, and the likely cause (bad input or the settings).

    Args:
        micro_batches: the optimizer step's batches (None: the validation loss was non-finite).
        history: the finished epochs' rows.
        last_path: ``RUN/checkpoints/last.pth``.
        prev: the folder holding the run moved aside, or None.

    Returns:
        One sentence for the error message.
    """
    if history:
        kept = f"{last_path} keeps the last good epoch ({int(history[-1]['epoch'])})"
    elif prev is not None:
        kept = f"no epoch finished; the previous run is kept whole in {prev}"
    else:
        kept = "no epoch finished, so no checkpoint was written"
    if micro_batches is None:  # validation: its patches were not kept
        hint = "check the validation volumes for NaN, else lower --lr or train in float32 (--amp_dtype float32)"
    elif any(not bool(torch.isfinite(t).all()) for batch in micro_batches for t in batch[:2]):
        hint = "the input patches hold NaN or inf values: check the data and rebuild the cache"
    else:
        hint = "the inputs are finite: lower --lr or train in float32 (--amp_dtype float32)"
    return f"{kept}; {hint}"


@contextlib.contextmanager
def explain_interrupt(last_path: Path, epochs: int, prev: Path | None) -> Iterator[None]:
    """On Ctrl-C / SIGTERM, attach ``kept`` to the exception: what the run folder holds and how to continue.

    Args:
        last_path: ``RUN/checkpoints/last.pth``.
        epochs: the run's ``config.epochs``.
        prev: the folder holding the run moved aside, or None.

    Yields:
        Nothing; a ``KeyboardInterrupt`` leaves with a ``kept`` attribute.
    """
    try:
        yield
    except KeyboardInterrupt as err:
        if last_path.is_file():
            with contextlib.suppress(Exception):
                done = int(torch.load(last_path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
                err.kept = (f"{last_path} keeps epoch {done}/{epochs}; rerun with --resume to continue from it")
        elif prev is not None and prev.exists():
            err.kept = (f"no epoch finished; the previous run is kept whole in {prev}; rerun the same command "
                        f"to start again")
        else:
            err.kept = "no epoch finished, nothing was saved; rerun the same command to start again"
        raise
