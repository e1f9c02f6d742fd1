"""Continue a run where it stopped: here, or in an earlier Kaggle session whose output is attached.

A Kaggle session ends after 9 hours and wipes ``/kaggle/working``; a notebook's saved output, attached to
the next session as input, holds the run folder read-only under
``/kaggle/input/<name>/tumorlib/outputs/<preset>/run`` (``tumorlib.core.sources.find_previous_run``).
``prepare_resume`` copies such a run into the workspace's run folder (the input itself is never written)
and says whether training should continue from its ``checkpoints/last.pth``;
``tumorlib.app.workflows.train_or_resume`` (04_train) and ``ensure_run`` (05, 06) use it. A checkpoint is only
continued when its config matches the current one (every field not marked runtime; ``time_limit_h`` may
differ), as ``train(resume=True)`` demands.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


from tumorlib.core.config import Config, workspace

__all__ = ["RESTORED_FILES", "ResumeCheck", "prepare_resume"]

#: What is copied from a previous session's run folder; ``checkpoints/last.pth`` last, so that a copy cut
#: short never leaves a checkpoint without its config.
RESTORED_FILES = ("config.json", "splits.json", "history.csv", "training_curves.png", "checkpoints/best_model.pth",
                  "checkpoints/last.pth")


@dataclass(frozen=True)
class ResumeCheck:
    """What ``prepare_resume`` found in a run folder.

    Attributes:
        run_dir: the run folder checked.
        resume: ``checkpoints/last.pth`` exists and matches the config: ``train(resume=True)`` continues it.
        epoch: epochs held by ``last.pth`` (0 when there is none or it does not match).
        finished: ``resume`` and ``epoch`` reaches ``config.epochs``.
        restored_from: the previous session's run folder copied in, or None.
        message: one line for the user ("" when there is nothing to say: no run, or a finished one here).
    """

    run_dir: Path
    resume: bool
    epoch: int
    finished: bool
    restored_from: Path | None
    message: str


def _checkpoint_state(last: Path, config: Config) -> tuple[int, list[str]]:
    """``(epoch, differences)`` of a ``last.pth`` against ``config`` resolved for this machine."""
    from tumorlib.core.device import resolve_device
    from tumorlib.nn.checkpoint import load_checkpoint
    from tumorlib.training.run_folder import config_diff
    from tumorlib.training.settings import pick_amp_dtype

    ckpt = load_checkpoint(last, map_location="cpu")
    dtype, _ = pick_amp_dtype(resolve_device(), config)
    return int(ckpt.get("epoch", 0)), config_diff(ckpt["config"], config.replace(amp_dtype=dtype or "float32"))


def _copy_run(source: Path, run: Path) -> bool:
    """Copy ``RESTORED_FILES`` of ``source`` into ``run``, each file written atomically, holding the run
    folder's writer lock (the one ``train`` holds) so no training writes there meanwhile.

    Returns:
        False when, once the lock was held, ``run`` had a ``last.pth`` of its own (nothing copied).

    Raises:
        FolderBusyError: another process holds the run folder (names it and its PID).
    """
    from tumorlib.core.safety import folder_lock

    from tumorlib.nn.checkpoint import LAST_NAME

    with folder_lock(run, "training run"):
        if (run / "checkpoints" / LAST_NAME).is_file():  # a training wrote one since it was looked for
            return False
        _copy_files(source, run)
    return True


def _copy_files(source: Path, run: Path) -> None:
    """The copy of ``_copy_run`` (its caller holds the lock)."""
    from tumorlib.core.safety import atomic_path

    for name in RESTORED_FILES:
        src = source / name
        if not src.is_file():
            continue
        dest = run / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


def prepare_resume(config: Config, run_dir: str | os.PathLike | None = None) -> ResumeCheck:
    """Whether training ``config`` into ``run_dir`` should continue a checkpoint, restoring one first.

    When ``run_dir`` holds no ``checkpoints/last.pth`` but an earlier Kaggle session's run of the same
    preset is attached as input (``find_previous_run``) with a matching config, its files
    (``RESTORED_FILES``) are copied into ``run_dir``. Nothing is written when there is nothing to restore.

    Args:
        config: the config about to be trained.
        run_dir: the run folder; None: the workspace's ``run_dir``.

    Returns:
        The ``ResumeCheck``; its ``message`` says what was found (restored, unfinished, another config).

    Raises:
        ValueError: a ``last.pth`` that is not a tumorlib checkpoint (names the file).
        FolderBusyError: a run is to be restored but another process holds the run folder's lock.
    """
    from tumorlib.nn.checkpoint import LAST_NAME
    from tumorlib.core.sources import find_previous_run

    from tumorlib.core.sources import display_path as shown

    run = Path(run_dir).expanduser().resolve() if run_dir is not None else workspace(config).run_dir
    last = run / "checkpoints" / LAST_NAME
    restored = None
    if not last.is_file():
        previous = find_previous_run(config.preset)
        if previous is None or previous.resolve() == run:
            return ResumeCheck(run, False, 0, False, None, "")
        epoch, diff = _checkpoint_state(previous / "checkpoints" / LAST_NAME, config)
        if diff:
            return ResumeCheck(run, False, 0, False, None,
                               f"not resuming the previous session's run {shown(previous)}: it was trained with "
                               f"another config ({'; '.join(diff)})")
        restored = previous if _copy_run(previous, run) else None
    epoch, diff = _checkpoint_state(last, config)
    if diff:
        return ResumeCheck(run, False, 0, False, None,
                           f"{shown(last)} was trained with another config ({'; '.join(diff)}): not resumed")
    finished = epoch >= config.epochs
    state = "complete" if finished else "resuming"
    if restored is not None:
        message = (f"{state}: the previous session's run {shown(restored)} ({epoch}/{config.epochs} epochs), "
                   f"copied into {shown(run)}")
    elif finished:
        message = ""  # a finished run here: nothing to say
    else:
        message = f"resuming the unfinished run in {shown(run)} ({epoch}/{config.epochs} epochs, same config)"
    return ResumeCheck(run, True, epoch, finished, restored, message)
