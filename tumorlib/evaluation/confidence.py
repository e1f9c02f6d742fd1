"""How sure a run is of each scored volume: the per-case uncertainty and calibration columns of ``evaluate``.

``confidence_scores`` adds to a volume's row (``evaluate(uncertainty=True)``, ``tumorlib evaluate
--uncertainty``):

- ``mean_entropy_tumour`` and ``uncertain_fraction``: ``tumorlib.inference.uncertainty.uncertainty_summary``
  of the normalised predictive entropy of the 8 flip members (``flip_members``; the four-way distribution of
  the run's ``targets``), inside the labels
  ``evaluate`` scores (voxels with entropy above ``DEFAULT_UNCERTAIN_THRESHOLD`` are uncertain);
- ``ece_wt``, ``ece_tc``, ``ece_et``: the expected calibration error of the region probabilities of the
  prediction ``evaluate`` decodes (the outputs themselves for a run trained on regions), 15 equal-width bins (``tumorlib.evaluation.calibration``), over every
  voxel of the cache's crop (the brain box plus the margin).

Everything is computed in the cache's frame (for a cache resampled in-plane: at the cache's resolution,
against the cache's mask). The summary's ``mean`` of an ``ece_*`` column is the mean over cases
(MONAI's ``metric_reduction="mean"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tumorlib.core.brats import REGION_KEYS
from tumorlib.evaluation.calibration import DEFAULT_BINS, expected_calibration_error
from tumorlib.inference.uncertainty import DEFAULT_UNCERTAIN_THRESHOLD, uncertainty_summary

__all__ = ["UNCERTAINTY_COLUMNS", "confidence_scores"]

#: The columns ``confidence_scores`` adds to a row of ``evaluate``.
UNCERTAINTY_COLUMNS: tuple[str, ...] = ("mean_entropy_tumour", "uncertain_fraction",
                                        *(f"ece_{r}" for r in REGION_KEYS))


def confidence_scores(maps: dict[str, Any], config: Any, prob: Any, pred: Any, target: Any,
                      bins: int = DEFAULT_BINS,
                      threshold: float = DEFAULT_UNCERTAIN_THRESHOLD) -> dict[str, float]:
    """The uncertainty and calibration columns of one volume (see the module text).

    Args:
        maps: ``uncertainty_maps`` of the volume's flip members (``predict_with_uncertainty``; 8 per run).
        config: the run's config (its ``targets``).
        prob: (3, D, H, W) sigmoid probabilities of the prediction that is scored.
        pred: (3, D, H, W) decoded class channels (or (D, H, W) labels) of ``prob``.
        target: (3, D, H, W) binary ground-truth class channels, same frame.
        bins: calibration bins.
        threshold: normalised entropy above which a voxel is uncertain.

    Returns:
        ``{column: value}`` for ``UNCERTAINTY_COLUMNS`` (``mean_entropy_tumour`` NaN when no tumour is
        predicted).

    Raises:
        ValueError: shapes that differ.
    """
    labels = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred)
    tumour = labels.any(axis=0) if labels.ndim == 4 else labels != 0
    summary = uncertainty_summary(maps["entropy"], tumour, threshold)
    ece = expected_calibration_error(prob, np.asarray(target), bins=bins, targets=config)
    return {"mean_entropy_tumour": float(summary["mean_entropy_tumour"]),
            "uncertain_fraction": float(summary["uncertain_fraction"]),
            **{f"ece_{r}": float(ece[r]) for r in REGION_KEYS}}
