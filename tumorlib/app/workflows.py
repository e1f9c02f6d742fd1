"""What the command line and the notebooks run: training with the whole-volume validator, continuing a
run, and the notebooks' bootstrap of a trained run.

- ``train``: ``tumorlib.training.loop.train`` handed ``tumorlib.evaluation.validation.VolumeValidator``
  (training never imports evaluation); ``tumorlib train`` and the notebooks call this.
- ``train_or_resume``: what 04_train calls: continue an unfinished run of the same config (here, or from
  an earlier Kaggle session attached as input: ``tumorlib.training.resume.prepare_resume``), else train.
- ``ensure_run`` / ``RunContext``: what 05 and 06 start with: the preset's run (trained first when
  missing, as 04_train trains it), its model, its cache and its splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tumorlib.core.config import Config, workspace
from tumorlib.evaluation.validation import VolumeValidator
from tumorlib.training import loop
from tumorlib.training.resume import prepare_resume

__all__ = ["RunContext", "ensure_run", "train", "train_or_resume"]


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


@dataclass(frozen=True)
class RunContext:
    """What a notebook needs of a preset's trained run.

    Attributes:
        model: the trained network, in eval mode.
        config: the run's config (``RUN/config.json``).
        run_dir: the run folder.
        cache_dir: the cache it was trained on.
    """

    model: torch.nn.Module
    config: Config
    run_dir: Path
    cache_dir: Path

    @property
    def postprocessing(self) -> Any:
        """The run's post-processing rule (``RUN/postprocessing.json`` or the config), as ``predict`` applies it."""
        from tumorlib.inference.postprocess import run_postprocessing

        return run_postprocessing(self.run_dir, self.config)

    def split(self, name: str = "test") -> list[int]:
        """The volume ids of one split of the run (``train``, ``val``, ``test`` or ``all``)."""
        from tumorlib.data.cache import cached_volume_ids
        from tumorlib.evaluation.evaluate import run_split

        return run_split(self.run_dir, self.config, cached_volume_ids(self.cache_dir), name)


def ensure_run(config: Config, device: str | torch.device | None = "cpu", progress: bool = False) -> RunContext:
    """The workspace's run of ``config``, trained first (as 04_train trains it) when it is missing.

    An unfinished run of the same config (``checkpoints/last.pth`` with fewer than ``config.epochs``), in
    the run folder or restored from a previous Kaggle session attached as input (``prepare_resume``), is
    trained to its end first (within ``config.time_limit_h``).

    Args:
        config: the preset's config (its workspace names the run and cache folders).
        device: where to put the model.
        progress: progress bars and lines while training or building the cache.

    Returns:
        The ``RunContext``.

    Raises:
        FileNotFoundError, ValueError: see ``tumorlib.inference.predictor.load_run``.
    """
    from tumorlib.core.sources import display_path
    from tumorlib.data.resolve import resolve_cache
    from tumorlib.inference.predictor import load_run
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
    model, run_config = load_run(run_dir, device=device)
    return RunContext(model, run_config, run_dir, resolve_cache(run_config, progress=progress))
