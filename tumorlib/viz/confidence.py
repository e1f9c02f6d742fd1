"""Figures of how sure a run is: the reliability diagram and Dice against mean uncertainty.

Both take what ``tumorlib.evaluation`` computes: reliability curves (``calibration.reliability_curve`` or
``CalibrationMetric.reliability``) and the per-case table of ``evaluate(uncertainty=True)``. Pyplot-free,
like every tumorlib figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tumorlib.viz.notebook_figure import new_figure

__all__ = ["dice_uncertainty_correlation", "plot_dice_vs_uncertainty", "plot_reliability"]

_REGION_COLORS = {"wt": "tab:green", "tc": "tab:red", "et": "tab:orange"}


def plot_reliability(curves: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Any:
    """Reliability diagram: fraction positive against mean probability per bin, one line per region.

    Args:
        curves: ``{region: reliability_curve(...)}`` (keys ``confidence``, ``accuracy``, ``counts``, ``ece``).
        title: figure title.

    Returns:
        The figure: the diagram (the diagonal is perfect calibration) and the voxels per bin (log scale).
    """
    fig = new_figure((9.0, 4.0))
    ax, ax_n = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfectly calibrated")
    for region, curve in curves.items():
        color = _REGION_COLORS.get(region)
        ok = np.asarray(curve["counts"]) > 0
        ax.plot(np.asarray(curve["confidence"])[ok], np.asarray(curve["accuracy"])[ok], "o-", ms=4, color=color,
                label=f"{region.upper()} (ECE {curve['ece']:.3f})")
        edges = np.asarray(curve.get("edges", np.linspace(0, 1, len(curve["counts"]) + 1)))
        ax_n.stairs(np.maximum(np.asarray(curve["counts"]), 0.5), edges, color=color, label=region.upper())
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="fraction of positive voxels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.set(yscale="log", xlim=(0, 1), xlabel="predicted probability", ylabel="voxels per bin")
    ax_n.grid(alpha=0.3)
    fig.suptitle(title if title is not None else "Reliability diagram")
    return fig


def dice_uncertainty_correlation(frame: Any, region: str = "wt",
                                 column: str = "mean_entropy_tumour") -> float:
    """Pearson correlation over cases of a region's Dice and an uncertainty column (NaN rows dropped).

    Returns:
        The correlation, NaN with fewer than 3 cases or a constant column.
    """
    x = np.asarray(frame[column], dtype=np.float64)
    y = np.asarray(frame[f"dice_{region}"], dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def plot_dice_vs_uncertainty(frame: Any, column: str = "mean_entropy_tumour", title: str | None = None) -> Any:
    """Dice of each region against a per-case uncertainty column, one dot per case.

    Args:
        frame: ``evaluate(uncertainty=True)``'s table (``dice_wt/tc/et``, ``volume`` and ``column``).
        column: ``mean_entropy_tumour`` or ``uncertain_fraction``.
        title: figure title.

    Returns:
        The figure, the Pearson r of each region in the legend.
    """
    fig = new_figure((5.5, 4.0))
    ax = fig.subplots()
    for region, color in _REGION_COLORS.items():
        r = dice_uncertainty_correlation(frame, region, column)
        ax.plot(frame[column], frame[f"dice_{region}"], "o", color=color, alpha=0.8,
                label=f"{region.upper()} (r = {'n/a' if math.isnan(r) else f'{r:.2f}'})")
    ax.set(xlabel=column.replace("_", " "), ylabel="Dice", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title if title is not None else f"Dice against {column.replace('_', ' ')}")
    return fig
