"""The run folder of a training: what it holds, checking it, and what a stopped run kept.

``RUN/config.json`` and ``RUN/splits.json`` are written before the first epoch (``prepare_run_folder``);
a new run over a finished one moves the old files aside first. ``config_diff`` is the one comparison of a
checkpoint's config with the current one (resuming in the loop and in ``tumorlib.training.resume``);
``stop_reason`` and ``explain_interrupt`` say what the folder kept when a run stops early.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.config import Config, resume_fields
from tumorlib.core.folders import discard_previous, move_aside
from tumorlib.core.safety import atomic_write
from tumorlib.nn.checkpoint import BEST_NAME, LAST_NAME

__all__ = ["RESULT_FILES", "RUN_FILES", "check_resumable", "config_diff", "discard_previous_runs", "explain_interrupt",
           "prepare_run_folder", "previous_runs", "stop_reason", "stopped_before_first_epoch"]

#: What makes a finished run (relative to ``RUN``); a new run moves these aside, or refuses, first.
RESULT_FILES = (f"checkpoints/{BEST_NAME}", f"checkpoints/{LAST_NAME}", "history.csv", "training_curves.png")
#: Everything a new run replaces: the results plus the config and splits they belong to.
RUN_FILES = ("config.json", "splits.json", *RESULT_FILES)
_PREVIOUS_NAME = re.compile(r"^previous-\d{8}-\d{6}(-\d+)?$")  # as ``folders.move_aside`` names them


def config_diff(saved: dict[str, Any], config: Config) -> list[str]:
    """The fields that keep a checkpoint from being resumed with ``config``.

    Args:
        saved: the config stored in a checkpoint (``Config.to_dict`` of its run).
        config: the config now.

    Returns:
        One line per differing resume field (``Config`` fields not marked runtime), and one per resume
        field the checkpoint does not record (an older tumorlib wrote it: what it trained with is unknown,
        so it is not resumed); runtime fields may differ or be missing. Empty when the run may be resumed.
    """
    now = config.to_dict()
    missing = [f"{k} is not recorded in the checkpoint (an older tumorlib wrote it), {now.get(k)!r} now"
               for k in sorted(resume_fields() - set(saved))]
    keys = sorted(resume_fields() & set(saved))
    return missing + [f"{k}={saved.get(k)!r} in the checkpoint but {now.get(k)!r} now" for k in keys
                      if saved.get(k) != now.get(k)]


def previous_runs(run: Path) -> list[Path]:
    """The ``previous-<time>`` folders of ``run`` that ``prepare_run_folder`` made: the name it gives and
    only files it moves there (``RUN_FILES``); anything else in ``run`` is never counted.

    Args:
        run: the run folder.

    Returns:
        Those folders, sorted by name (oldest first).
    """
    found = []
    for folder in sorted(run.glob("previous-*")) if run.is_dir() else []:
        if not folder.is_dir() or folder.is_symlink() or not _PREVIOUS_NAME.match(folder.name):
            continue
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
        if names <= {*RUN_FILES, "checkpoints"} and not any(
                (folder / n).is_symlink() or ((folder / n).is_dir() and n != "checkpoints") for n in names):
            found.append(folder)
    return found


def discard_previous_runs(run: Path, keep: Path | None = None) -> None:
    """Delete the ``previous_runs`` of ``run`` (all but ``keep``): a newer run superseded them.

    Called when a new run writes its first ``best_model.pth`` (``keep`` None: the run it replaced goes
    too) and when a finished run is moved aside (``keep``: its new ``previous-*`` folder), so folders
    left by runs killed before their first epoch do not pile up.
    """
    for folder in previous_runs(run):
        if keep is None or folder.resolve() != Path(keep).resolve():
            discard_previous(folder)


def stopped_before_first_epoch(run: Path) -> list[str]:
    """The ``RUN_FILES`` present in a run folder without any result (a run stopped before its first
    epoch left ``config.json``/``splits.json``); empty when it holds a result or nothing."""
    if any((run / name).exists() for name in RESULT_FILES):
        return []
    return [name for name in RUN_FILES if (run / name).exists()]


def check_resumable(run: Path, last_path: Path, show: bool = False) -> None:
    """``--resume`` where there is no ``last.pth``: refused for a folder that holds a run (nothing to
    continue), else a new run starts (one line says so with ``show``).

    Raises:
        FileNotFoundError: names the folder, what it holds and what is missing (one line).
    """
    held = stopped_before_first_epoch(run)
    if held and not last_path.is_file():
        raise FileNotFoundError(f"cannot resume {run}: it holds only {', '.join(held)} and no "
                                f"checkpoints/{LAST_NAME} (the run stopped before its first epoch); rerun "
                                f"without --resume to start it again")
    if show:
        print(f"nothing to resume in {last_path.parent}: starting a new run", flush=True)


def prepare_run_folder(run: Path, config: Config, splits: dict[str, list[int]] | None, resumed: bool,
                       overwrite: bool, show: bool = False) -> Path | None:
    """Check the run folder, move a finished run aside, then write ``config.json`` and ``splits.json``.

    Nothing is written before the checks pass. A resumed run must keep its volumes: a ``splits.json``
    that differs from ``splits`` is refused. A new run over a finished one moves ``RUN_FILES`` into
    ``RUN/previous-<time>/`` (a loadable run folder) with ``overwrite``, else refuses (older
    ``previous-*`` folders it made are then deleted: ``discard_previous_runs``). A folder holding only
    the ``config.json``/``splits.json`` of a run stopped before its first epoch holds no result: the new
    run is written over it, with or without ``overwrite`` (one line says so with ``show``).

    Args:
        run: the run folder (created).
        config: the resolved config, written as ``config.json``.
        splits: the volume split, written as ``splits.json`` (None: not written).
        resumed: the run continues a checkpoint.
        overwrite: a finished run there may be moved aside.
        show: print what was chosen for a folder left by a run stopped before its first epoch.

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
        discard_previous_runs(run, keep=prev)
    elif show and stopped_before_first_epoch(run):
        print(f"{run} holds only {', '.join(stopped_before_first_epoch(run))} of a run stopped before its "
              f"first epoch: starting a new run over it", flush=True)
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
