"""Calibration of the region probabilities: expected calibration error and reliability curves.

Region probabilities. The BraTS regions are unions of classes (``tumorlib.core.brats.REGION_CLASSES``),
and the probability of a union is the noisy-OR the decoder uses for the tumour:
``p_region = 1 - prod_{c in region} (1 - p_c)``. WT is therefore ``tumour_probability``; ET is ``p_et``.
A run trained on regions (``targets = "regions"``) outputs the WT, TC, ET probabilities themselves, so they
are scored as they are (``targets`` of ``region_probabilities``, ``expected_calibration_error`` and
``CalibrationMetric``).

Binning, as MONAI's ``calibration_binning`` (``monai.metrics.CalibrationErrorMetric``, ``right=False``):
``bins`` equal-width bins with float32 edges ``linspace(0, 1 + eps32, bins + 1)``; a probability ``p``
falls in the first bin whose upper edge is ``>= p`` (so bin k holds ``(e_k, e_{k+1}]``, and 0 lies in
bin 0). Per bin: the count, the mean probability (confidence) and the fraction of positive voxels
(accuracy). The ECE is ``sum_k n_k |acc_k - conf_k| / sum_k n_k`` (MONAI's ``"expected"`` reduction, the L1
form); NaN when no voxel is scored.

Which voxels. By default every voxel of the volume counts, as in MONAI; background far from the brain is
then a large, well-calibrated bin that pulls the ECE down. Pass ``mask`` (e.g. the brain) to score only
those voxels.

``CalibrationMetric`` accumulates cases as MONAI's cumulative metrics do (``update`` / ``aggregate`` /
``reset``). ``aggregate("mean")`` is the mean over cases of the per-case ECE (MONAI's ``metric_reduction=
"mean"``, NaN-ignoring); ``aggregate("pooled")`` is the ECE of all scored voxels of all cases together
(the bins summed), the number a reliability diagram of the test set shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorlib.core.brats import CLASS_KEYS, REGION_CLASSES, REGION_KEYS, channels_to_regions
from tumorlib.core.regions import targets_of

__all__ = [
    "DEFAULT_BINS",
    "CalibrationMetric",
    "bin_statistics",
    "calibration_error",
    "expected_calibration_error",
    "region_probabilities",
    "reliability_curve",
]

#: Equal-width bins of the calibration error and the reliability diagram.
DEFAULT_BINS = 15


def _numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def region_probabilities(prob: Any, targets: Any = "classes") -> np.ndarray:
    """WT, TC and ET probabilities from the three sigmoid outputs (noisy-OR over each region's classes).

    Args:
        prob: (3, D, H, W) sigmoid probabilities (ncr, ed, et), numpy or torch.
        targets: ``"classes"`` (or a run's config with those): the noisy-OR; ``"regions"``: ``prob`` is
            already WT, TC, ET and is returned as float32 clipped to [0, 1].

    Returns:
        (3, D, H, W) float32, channels WT, TC, ET.

    Raises:
        ValueError: ``prob`` is not (3, ...).
    """
    p = np.clip(_numpy(prob).astype(np.float32, copy=False), 0.0, 1.0)
    if p.ndim < 2 or p.shape[0] != len(CLASS_KEYS):
        raise ValueError(f"prob must be (3, D, H, W) (ncr, ed, et), got shape {p.shape}")
    if targets_of(targets) == "regions":
        return p
    out = []
    for region in REGION_KEYS:
        idx = [CLASS_KEYS.index(c) for c in REGION_CLASSES[region]]
        out.append(1.0 - np.prod(1.0 - p[idx], axis=0))
    return np.stack(out).astype(np.float32)


def _edges(bins: int) -> np.ndarray:
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return np.linspace(0.0, 1.0 + np.finfo(np.float32).eps, int(bins) + 1, dtype=np.float32)


def bin_statistics(prob: Any, target: Any, bins: int = DEFAULT_BINS,
                   mask: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin counts and sums of one probability map against its binary target.

    Args:
        prob: (...) probabilities in [0, 1].
        target: (...) binary target (non-zero = positive), same shape.
        bins: number of equal-width bins.
        mask: (...) bool, the voxels to score; None: all.

    Returns:
        ``(counts, sum_prob, sum_target)``, each (bins,) float64.

    Raises:
        ValueError: the shapes differ, or ``bins < 1``.
    """
    p = _numpy(prob).astype(np.float32, copy=False)
    y = _numpy(target) != 0
    if p.shape != y.shape:
        raise ValueError(f"prob of shape {p.shape} and target of shape {y.shape} differ")
    if mask is not None:
        m = _numpy(mask).astype(bool)
        if m.shape != p.shape:
            raise ValueError(f"mask of shape {m.shape} does not match prob of shape {p.shape}")
        p, y = p[m], y[m]
    edges = _edges(bins)
    idx = np.minimum(np.searchsorted(edges[1:], p.ravel(), side="left"), len(edges) - 2)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p.ravel().astype(np.float64), minlength=bins)
    sum_y = np.bincount(idx, weights=y.ravel().astype(np.float64), minlength=bins)
    return counts, sum_p, sum_y


def calibration_error(counts: np.ndarray, sum_prob: np.ndarray, sum_target: np.ndarray) -> float:
    """The expected calibration error of binned statistics (``bin_statistics``).

    Returns:
        ``sum_k n_k |acc_k - conf_k| / sum_k n_k``; NaN when every bin is empty.
    """
    total = float(np.sum(counts))
    if total == 0:
        return float("nan")
    safe = np.maximum(counts, 1.0)
    return float(np.sum(np.abs(sum_target / safe - sum_prob / safe) * counts) / total)


def expected_calibration_error(prob: Any, target: Any, bins: int = DEFAULT_BINS, mask: Any = None,
                               regions: bool = True, targets: Any = "classes") -> dict[str, float]:
    """Expected calibration error per region (WT, TC, ET) of one case.

    Args:
        prob: (3, D, H, W) sigmoid probabilities (ncr, ed, et); with ``regions=False``, (C, ...)
            probabilities scored channel by channel as they are.
        target: (3, D, H, W) binary class channels (ncr, ed, et) as the cache stores them (turned into
            regions); with ``regions=False``, (C, ...) binary targets of the channels of ``prob``.
        bins: equal-width bins (default 15).
        mask: (D, H, W) bool, the voxels to score; None: all.
        regions: score the regions WT, TC, ET; False: the channels as given.
        targets: what ``prob`` is (``region_probabilities``): class or region probabilities.

    Returns:
        ``{"wt": ..., "tc": ..., "et": ...}`` (with ``regions=False``: ``{"0": ..., "1": ...}``) ECE per
        region, NaN where nothing is scored.

    Raises:
        ValueError: shapes that differ, or not 3 channels when ``regions`` is set.
    """
    stats = _case_statistics(prob, target, bins, mask, regions, targets)
    return {k: calibration_error(*arrays) for k, arrays in stats.items()}


def _case_statistics(prob: Any, target: Any, bins: int, mask: Any, regions: bool,
                     targets: Any = "classes") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    p, y = _numpy(prob), _numpy(target)
    if p.shape != y.shape:
        raise ValueError(f"prob of shape {p.shape} and target of shape {y.shape} differ")
    if regions:
        p, y = region_probabilities(p, targets), channels_to_regions(y)
        names = REGION_KEYS
    else:
        names = tuple(str(c) for c in range(p.shape[0]))
    return {name: bin_statistics(p[c], y[c], bins, mask) for c, name in enumerate(names)}


def reliability_curve(prob: Any, target: Any, bins: int = DEFAULT_BINS, mask: Any = None) -> dict[str, np.ndarray]:
    """The points of a reliability diagram for one probability map (a region, a class, a pooled set).

    Args:
        prob: (...) probabilities, e.g. ``region_probabilities(p)[0]`` for WT.
        target: (...) binary target, same shape.
        bins: equal-width bins (default 15).
        mask: (...) bool voxels to score; None: all.

    Returns:
        ``centres`` (bins,) bin centres, ``edges`` (bins + 1,), ``accuracy`` (fraction positive),
        ``confidence`` (mean probability), both NaN in empty bins, ``counts`` (bins,) and ``ece``.
    """
    return _curve(*bin_statistics(prob, target, bins, mask))


def _curve(counts: np.ndarray, sum_p: np.ndarray, sum_y: np.ndarray) -> dict[str, Any]:
    edges = _edges(len(counts)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, sum_y / counts, np.nan)
        confidence = np.where(counts > 0, sum_p / counts, np.nan)
    return {"centres": (edges[:-1] + edges[1:]) / 2, "edges": edges, "accuracy": accuracy,
            "confidence": confidence, "counts": counts, "ece": calibration_error(counts, sum_p, sum_y)}


class CalibrationMetric:
    """Cumulative calibration error per region over cases (``update`` / ``aggregate`` / ``reset``).

    Args:
        bins: equal-width bins (default 15).
        regions: score WT, TC, ET from class probabilities and class channels; False: channels as given.
        targets: what the probabilities are (``"classes"``, ``"regions"`` or a run's config; see
            ``region_probabilities``).

    Example::

        metric = CalibrationMetric()
        for prob, gt in cases:
            metric.update(prob, gt)         # (3, D, H, W) probabilities and class channels
        metric.aggregate()                  # {"wt": mean ECE over cases, "tc": ..., "et": ...}
        metric.aggregate("pooled")          # the ECE of all voxels together
    """

    def __init__(self, bins: int = DEFAULT_BINS, regions: bool = True, targets: Any = "classes") -> None:
        _edges(bins)
        self.bins = int(bins)
        self.regions = regions
        self.targets = targets_of(targets)
        self.reset()

    def reset(self) -> None:
        """Forget every case."""
        self._per_case: list[dict[str, float]] = []
        self._pooled: dict[str, list[np.ndarray]] = {}

    def update(self, prob: Any, target: Any, mask: Any = None) -> dict[str, float]:
        """Add one case.

        Args:
            prob: (3, D, H, W) sigmoid probabilities (see ``expected_calibration_error``).
            target: (3, D, H, W) binary class channels.
            mask: (D, H, W) bool voxels to score; None: all.

        Returns:
            The case's ECE per region.
        """
        stats = _case_statistics(prob, target, self.bins, mask, self.regions, self.targets)
        for name, arrays in stats.items():
            pooled = self._pooled.setdefault(name, [np.zeros(self.bins) for _ in range(3)])
            for total, part in zip(pooled, arrays):
                total += part
        case = {name: calibration_error(*arrays) for name, arrays in stats.items()}
        self._per_case.append(case)
        return case

    def __len__(self) -> int:
        return len(self._per_case)

    def per_case(self) -> list[dict[str, float]]:
        """The ECE per region of each case, in update order."""
        return [dict(c) for c in self._per_case]

    def aggregate(self, reduction: str = "mean") -> dict[str, float]:
        """The ECE per region over the cases so far.

        Args:
            reduction: ``"mean"``: mean of the per-case ECE, ignoring NaN (MONAI's ``"mean"``);
                ``"pooled"``: the ECE of all scored voxels together.

        Returns:
            ``{region: ECE}``; NaN for a region with no scored case (or before any ``update``).

        Raises:
            ValueError: an unknown ``reduction``.
        """
        names = list(self._pooled) or (list(REGION_KEYS) if self.regions else [])
        if reduction == "pooled":
            return {n: calibration_error(*self._pooled[n]) if n in self._pooled else float("nan") for n in names}
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'pooled', got {reduction!r}")
        out = {}
        for n in names:
            values = np.array([c[n] for c in self._per_case], dtype=np.float64)
            values = values[~np.isnan(values)]
            out[n] = float(values.mean()) if values.size else float("nan")
        return out

    def reliability(self, region: str) -> dict[str, Any]:
        """The pooled reliability curve of one region (see ``reliability_curve``).

        Raises:
            KeyError: a region no case was scored for.
        """
        if region not in self._pooled:
            raise KeyError(f"no case scored for region {region!r}; have {sorted(self._pooled)}")
        return _curve(*self._pooled[region])
