"""Lesion-wise Dice and HD95 with the BraTS 2023 glioma rules (the challenge's ranking metrics).

The rules are those of the official BraTS 2023 metrics code (``metrics.py`` of
github.com/rachitsaluja/BraTS-2023-Metrics, challenge ``BraTS-GLI``), for each region WT, TC and ET:

1. Ground-truth lesions: the 26-connected components of the region, grouped by a dilation of the whole
   ground truth (3 iterations of ``scipy.ndimage.generate_binary_structure(3, 2)``, the 18-neighbour
   cross-and-edges element the official code uses, not the full 3 x 3 x 3 cube): components that fall
   in one connected part of the dilated ground truth are one lesion.
2. Predicted lesions: the 26-connected components of the predicted region.
3. Matching: a predicted lesion belongs to every ground-truth lesion whose own dilation (same element,
   3 iterations) it touches; the ground-truth lesion is then a true positive, scored by the Dice and the
   HD95 (``surface_distance.robust_hausdorff``) between it and the union of its predicted lesions. A
   ground-truth lesion without one is a false negative (Dice 0, HD95 374); a predicted lesion that
   belongs to no ground-truth lesion is a false positive (Dice 0, HD95 374).
4. Ground-truth lesions of ``MIN_LESION_VOLUME`` (50) mm^3 or less (voxel count times the voxel volume;
   50 voxels at 1 mm) leave the score; predicted lesions matched to them are not false positives.
5. Per case and region: ``sum over the remaining ground-truth lesions / (TP + FN + FP)``, the false
   positives adding 0 to the Dice sum and 374 each to the HD95 sum. When nothing is left to count
   (no ground-truth lesion above the size limit and no false positive, e.g. both masks empty), the Dice
   is 1 and the HD95 0.

Labels are BraTS label maps in {0, 1, 2, 4} (``tumorlib.core.brats``; the 2023 files use 3 for
enhancing, tumorlib keeps the 2020 label 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tumorlib.core.brats import REGION_KEYS, labels_to_regions
from tumorlib.core.regions import COMPONENT_STRUCTURE
from tumorlib.evaluation.surface_distance import robust_hausdorff

__all__ = [
    "DILATION_ITERATIONS",
    "LESION_COLUMNS",
    "LESION_COUNT_COLUMNS",
    "LESION_MISS_HD95",
    "MIN_LESION_VOLUME",
    "lesion_scores",
    "region_lesion_scores",
]

#: The lesion-wise metric columns, in the order ``lesion_scores`` returns them.
LESION_COLUMNS: tuple[str, ...] = (*(f"lesion_dice_{r}" for r in REGION_KEYS),
                                   *(f"lesion_hd95_{r}" for r in REGION_KEYS))
#: Lesion counts per region (true positives, false negatives, false positives), after the metric columns.
LESION_COUNT_COLUMNS: tuple[str, ...] = tuple(f"lesions_{kind}_{r}" for kind in ("tp", "fn", "fp")
                                              for r in REGION_KEYS)
#: Dilations of the ground truth that group its components and match predicted lesions (BraTS-GLI).
DILATION_ITERATIONS = 3
#: Ground-truth lesions of this volume (mm^3) or less are left out of the score (BraTS-GLI).
MIN_LESION_VOLUME = 50.0
#: HD95 of a false-positive or false-negative lesion (BraTS 2023).
LESION_MISS_HD95 = 374.0

_COMPONENTS = COMPONENT_STRUCTURE  # 26-connectivity
_DILATION = ndimage.generate_binary_structure(3, 2)  # the official dilation element (18 neighbours)


def _grown_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes))
                 for i in range(len(boxes[0])))


def _ground_truth_lesions(gt: np.ndarray, iterations: int) -> tuple[np.ndarray, int]:
    """Lesion ids 1..n of the ground truth: its 26-connected components grouped by the dilation."""
    dilated = ndimage.binary_dilation(gt, structure=_DILATION, iterations=iterations) if iterations else gt
    groups, n = ndimage.label(dilated, structure=_COMPONENTS)
    return np.where(gt, groups, 0), int(n)


def _score_lesion(lesion: np.ndarray, pred_cc: np.ndarray, matched: np.ndarray,
                  spacing: tuple[float, ...], hd95: bool = True) -> tuple[float, float]:
    """Dice and HD95 (NaN unless ``hd95``) of one ground-truth lesion against the union of its predicted
    lesions (cropped)."""
    pred = np.isin(pred_cc, matched)
    inter = np.count_nonzero(lesion & pred)
    dice = 2.0 * inter / (np.count_nonzero(lesion) + np.count_nonzero(pred))
    return float(dice), float(robust_hausdorff(lesion, pred, spacing, 95.0)) if hd95 else float("nan")


def region_lesion_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         iterations: int = DILATION_ITERATIONS,
                         min_volume: float = MIN_LESION_VOLUME, hd95: bool = True) -> dict[str, float]:
    """Lesion-wise Dice and HD95 of one binary region (see the module text for the rules).

    Args:
        pred: (D, H, W) binary predicted region (non-zero = inside).
        gt: (D, H, W) binary ground-truth region, same shape.
        spacing: voxel size along the three axes (mm): distances and lesion volumes.
        iterations: dilations of the ground truth (3 for BraTS glioma).
        min_volume: ground-truth lesions of this volume (mm^3) or less are left out.
        hd95: compute the lesions' HD95 (the costly part); False: ``hd95`` is NaN (the Dice alone, for
            tuning post-processing).

    Returns:
        ``dice``, ``hd95``, ``tp``, ``fn``, ``fp`` (counts over the lesions that are scored).

    Raises:
        ValueError: the shapes differ or are not 3-D.
    """
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"lesion-wise scores need two 3-D masks of one shape, got {pred.shape} and {gt.shape}")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = float(np.prod(spacing))
    lesions, n_gt = _ground_truth_lesions(gt, iterations)
    pred_cc, n_pred = ndimage.label(pred, structure=_COMPONENTS)
    pred_boxes = ndimage.find_objects(pred_cc)
    matched_any: set[int] = set()
    dices: list[float] = []
    hds: list[float] = []
    tp = fn = 0
    for gid, box in enumerate(ndimage.find_objects(lesions, max_label=n_gt), start=1):
        if box is None:
            continue
        near = _grown_box(box, iterations, gt.shape)
        own = lesions[near] == gid
        reach = ndimage.binary_dilation(own, structure=_DILATION, iterations=iterations) if iterations else own
        matched = np.unique(pred_cc[near][reach])
        matched = matched[matched != 0]
        matched_any.update(int(m) for m in matched)
        if np.count_nonzero(own) * voxel_volume <= min_volume:
            continue  # too small to score; its predicted lesions are not false positives
        if matched.size == 0:
            fn += 1
            dices.append(0.0)
            hds.append(LESION_MISS_HD95)
            continue
        tp += 1
        ubox = _union_box([box, *(pred_boxes[m - 1] for m in matched)])
        dice, hd = _score_lesion(lesions[ubox] == gid, pred_cc[ubox], matched, spacing, hd95)
        dices.append(dice)
        hds.append(LESION_MISS_HD95 if np.isinf(hd) else hd)
    fp = n_pred - len(matched_any)
    total = len(dices) + fp
    if total == 0:
        return {"dice": 1.0, "hd95": 0.0, "tp": 0, "fn": 0, "fp": 0}
    hd = (float(np.sum(hds)) + fp * LESION_MISS_HD95) / total if hd95 else float("nan")
    return {"dice": float(np.sum(dices)) / total, "hd95": hd,
            "tp": tp, "fn": fn, "fp": fp}


def lesion_scores(pred_labels: np.ndarray, ref_labels: np.ndarray,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 for WT, TC and ET of one case.

    Args:
        pred_labels: (D, H, W) predicted BraTS labels in {0, 1, 2, 4}.
        ref_labels: (D, H, W) reference labels, same shape.
        spacing: voxel size along the three axes (mm).

    Returns:
        ``{name: value}`` for ``LESION_COLUMNS`` (lesion_dice_wt, ..., lesion_hd95_et) and then the
        counts ``LESION_COUNT_COLUMNS`` (lesions_tp_wt, ..., lesions_fp_et).

    Raises:
        ValueError: the shapes differ, are not 3-D, or a label is outside {0, 1, 2, 4}.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape or pred_labels.ndim != 3:
        raise ValueError(f"prediction {pred_labels.shape} and reference {ref_labels.shape} must be one 3-D shape")
    pred_r, ref_r = labels_to_regions(pred_labels), labels_to_regions(ref_labels)
    per_region = {r: region_lesion_scores(pred_r[i], ref_r[i], spacing) for i, r in enumerate(REGION_KEYS)}
    out: dict[str, float] = {}
    for metric in ("dice", "hd95"):
        out.update({f"lesion_{metric}_{r}": float(per_region[r][metric]) for r in REGION_KEYS})
    for kind in ("tp", "fn", "fp"):
        out.update({f"lesions_{kind}_{r}": int(per_region[r][kind]) for r in REGION_KEYS})
    return out
