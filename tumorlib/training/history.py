"""The training history: its columns, ``history.csv`` and the figure of its curves.

``write_history`` writes one row per finished epoch (``HISTORY_COLUMNS``) atomically;
``plot_training_curves`` draws loss, mean and per-class validation Dice (``RUN/training_curves.png``; the
notebooks' ``tumorlib.viz.plot_training_curves`` is this function).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumorlib.core.brats import CLASS_KEYS, CLASS_NAMES
from tumorlib.core.colors import CLASS_COLORS, rgb01
from tumorlib.core.safety import atomic_open, atomic_path

__all__ = ["HISTORY_COLUMNS", "TIMING_COLUMNS", "plot_training_curves", "write_history"]

#: One row per finished epoch. ``skipped_steps``: the epoch's optimizer steps skipped for non-finite gradients
#: (``Trainer.skipped_steps``; bf16 on some CPUs), so their sum is the run's total; histories written before
#: the column existed have no value there.
HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_dice_mean", "val_dice_ncr", "val_dice_ed",
                   "val_dice_et", "val_volume_dice", "epoch_s", "patches_per_s", "skipped_steps"]
#: The columns that vary between identical runs (wall-clock time).
TIMING_COLUMNS = ["epoch_s", "patches_per_s"]



def write_history(rows: list[dict[str, float]], path: str | os.PathLike) -> pd.DataFrame:
    """Write the history as ``path`` (CSV, ``HISTORY_COLUMNS``) in one atomic step.

    Args:
        rows: one dict per finished epoch.
        path: the CSV file (its folder must exist).

    Returns:
        The history as a DataFrame.
    """
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    with atomic_open(Path(path), "w", newline="") as f:
        frame.to_csv(f, index=False)
    return frame


def _history_frame(history_df: Any) -> pd.DataFrame:
    df = pd.read_csv(history_df) if isinstance(history_df, (str, bytes)) or hasattr(history_df, "__fspath__") else history_df
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    if "epoch" not in df.columns:
        raise ValueError(f"history has no 'epoch' column; columns are {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("history has no rows")
    return df


def plot_training_curves(history_df: Any, path: Any | None = None, title: str | None = "Training history", *,
                         figure: Callable[..., Any] | None = None) -> Any:
    """Loss, mean validation Dice and per-class validation Dice against epoch, with the learning rate.

    Args:
        history_df: ``pandas.DataFrame`` (or a path to ``history.csv``) with column ``epoch`` and any of
            ``train_loss``, ``val_loss``, ``lr``, ``val_dice_mean``, ``val_dice_ncr``, ``val_dice_ed``,
            ``val_dice_et``, ``val_volume_dice`` (whole-volume selection score, drawn beside the mean);
            missing columns and NaN rows (epochs without validation) are skipped.
        path: optional file to save the figure to (format from the suffix, 120 dpi).
        title: figure title, or None.
        figure: makes the empty figure from ``figsize`` and ``layout`` (``tumorlib.viz`` passes a figure
            that notebooks show as PNG); None: a pyplot-free ``matplotlib.figure.Figure``.

    Returns:
        ``matplotlib.figure.Figure`` with three panels: loss (with lr on a second axis), mean Dice,
        per-class Dice in the class colours.

    Raises:
        ValueError: if there is no ``epoch`` column or no rows.
    """
    df = _history_frame(history_df)
    epoch = df["epoch"].to_numpy(dtype=float)

    def series(ax: Any, col: str, **kw: Any) -> bool:
        if col not in df.columns:
            return False
        v = df[col].to_numpy(dtype=float)
        ok = np.isfinite(v)
        if not ok.any():
            return False
        ax.plot(epoch[ok], v[ok], marker="o" if ok.sum() <= 30 else None, markersize=3, **kw)
        return True

    if figure is None:
        from matplotlib.figure import Figure as figure
    fig = figure(figsize=(13.0, 3.6), layout="constrained")
    ax_loss, ax_mean, ax_cls = fig.subplots(1, 3)
    series(ax_loss, "train_loss", label="train", color="C0")
    series(ax_loss, "val_loss", label="validation", color="C1")
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("loss")
    if "lr" in df.columns and np.isfinite(df["lr"].to_numpy(dtype=float)).any():
        ax_lr = ax_loss.twinx()
        series(ax_lr, "lr", color="0.5", linestyle="--", label="lr")
        ax_lr.set_ylabel("learning rate", color="0.4")
        ax_lr.tick_params(axis="y", colors="0.4")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        h1, l1 = ax_loss.get_legend_handles_labels()
        h2, l2 = ax_lr.get_legend_handles_labels()
        ax_loss.legend(h1 + h2, l1 + l2, frameon=False, fontsize=8)
    elif ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(frameon=False, fontsize=8)
    series(ax_mean, "val_dice_mean", color="k", label="patches: mean of classes")
    if series(ax_mean, "val_volume_dice", color="C3", label="whole volumes: mean of WT/TC/ET"):
        ax_mean.legend(frameon=False, fontsize=8)
    ax_mean.set_title("validation Dice")
    for k, name in enumerate(CLASS_NAMES):
        series(ax_cls, f"val_dice_{CLASS_KEYS[k]}", color=rgb01(CLASS_COLORS[k]), label=name, linewidth=2)
    ax_cls.set_title("validation Dice per class")
    if ax_cls.get_legend_handles_labels()[0]:
        ax_cls.legend(frameon=False, fontsize=8)
    for ax in (ax_mean, ax_cls):
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice")
    for ax in (ax_loss, ax_mean, ax_cls):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    return fig
