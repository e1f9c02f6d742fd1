"""What the command line and the notebooks run: training with the whole-volume validator, continuing a
run, and the notebooks' bootstrap of a trained run.

- ``train``: ``tumorlib.training.loop.train`` handed ``tumorlib.evaluation.validation.VolumeValidator``
  (training never imports evaluation); ``tumorlib train`` and the notebooks call this.
- ``train_or_resume``: what 04_train calls: continue an unfinished run of the same config (here, or from
  an earlier Kaggle session attached as input: ``tumorlib.training.resume.prepare_resume``), else train.
- ``ensure_run``: what 05 and 06 start with: the preset's run (trained first when missing, as 04_train
  trains it), opened as every command opens one (``tumorlib.inference.run.Run``, its cache opened).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import torch

from tumorlib.core.config import Config, workspace
from tumorlib.evaluation.validation import VolumeValidator
from tumorlib.inference.run import Run
from tumorlib.training import loop
from tumorlib.training.resume import prepare_resume

__all__ = ["ensure_run", "train", "train_or_resume"]


def train(config: Config, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
          **kwargs: Any) -> pd.DataFrame:
    """Train ``config`` and write the run folder, selecting the model on whole volumes when
    ``config.val_volume_every`` > 0 (``VolumeValidator``).

    Args:
        config: the run's config.
        data_dir: Kaggle-format data; None: the workspace's.
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        out_dir: the run folder; None: the workspace's ``run_dir``.
        resume: continue from ``RUN/checkpoints/last.pth``.
        progress: bars and per-epoch lines.
        **kwargs: ``device``, ``stop_after_epoch``, ``on_epoch_end``, ``overwrite`` of
            ``tumorlib.training.loop.train``.

    Returns:
        The history (``tumorlib.training.history.HISTORY_COLUMNS``).

    Raises:
        ValueError, FileExistsError, FolderBusyError, FloatingPointError: see ``tumorlib.training.loop.train``.
    """
    from tumorlib.core.outputs import check_output_folder

    check_output_folder(out_dir if out_dir is not None else workspace(config).run_dir, "run")
    return loop.train(config, data_dir, cache_dir, out_dir, resume=resume, progress=progress,
                      validator=VolumeValidator, **kwargs)


def train_or_resume(config: Config, cache_dir: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """Train ``config``, continuing an unfinished run of the same config or a previous session's run.

    An unfinished ``last.pth`` in ``out_dir``, or any run restored from a previous session, is continued
    (``train(resume=True)``: a complete restored run trains no further); otherwise a new run is trained
    (a complete run of the same config in ``out_dir`` is trained again, as ``tumorlib train --overwrite``:
    its files stay in ``RUN/previous-<time>/`` until the new run has its first best model; a run of another
    config is refused, never replaced).

    Args:
        config: the run's config.
        cache_dir: the ``.npy`` cache; None: the workspace's.
        out_dir: the run folder; None: the workspace's ``run_dir``.
        progress: bars and lines (the check's one line included).

    Returns:
        The history (``tumorlib.training.history.HISTORY_COLUMNS``).

    Raises:
        ValueError, FloatingPointError: see ``tumorlib.training.loop.train``.
    """
    check = prepare_resume(config, out_dir)
    resume = check.resume and (not check.finished or check.restored_from is not None)
    if progress and check.message and (resume or not check.resume):
        print(check.message, flush=True)
    return train(config, cache_dir=cache_dir, out_dir=check.run_dir, resume=resume, progress=progress,
                 overwrite=check.resume and check.finished)  # never replace a run of another config


def ensure_run(config: Config, device: str | torch.device | None = "cpu", progress: bool = False) -> Run:
    """The workspace's run of ``config``, trained first (as 04_train trains it) when it is missing.

    An unfinished run of the same config (``checkpoints/last.pth`` with fewer than ``config.epochs``), in
    the run folder or restored from a previous Kaggle session attached as input (``prepare_resume``), is
    trained to its end first (within ``config.time_limit_h``).

    Args:
        config: the preset's config (its workspace names the run and cache folders).
        device: where to put the model.
        progress: progress bars and lines while training or building the cache.

    Returns:
        The ``Run`` (``tumorlib.inference.run``), its cache opened: model, config, run folder, cache, splits
        and post-processing, as every command opens a run.

    Raises:
        FileNotFoundError, ValueError: see ``tumorlib.inference.predictor.load_run``.
    """
    from tumorlib.core.sources import display_path
    from tumorlib.nn.checkpoint import BEST_NAME

    run_dir = workspace(config).run_dir
    check = prepare_resume(config, run_dir)  # restores a previous Kaggle session's run when one is attached
    if check.message:
        print(check.message, flush=True)
    if (check.resume and not check.finished) or not (run_dir / "checkpoints" / BEST_NAME).is_file():
        if not check.resume:
            print(f"no trained run in {display_path(run_dir)}: training one with the {config.preset!r} preset "
                  "(as 04_train does)")
        train(config, resume=check.resume, progress=progress)  # never replaces a run of another config
    run = Run.open(run_dir, device)
    run.cache(progress=progress)
    return run
