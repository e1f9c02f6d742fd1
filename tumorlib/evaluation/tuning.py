"""Choose a run's post-processing on its validation split by the BraTS 2023 ranking score.

``tune_postprocessing(run_dir)`` predicts every validation volume once, through the path ``evaluate``
scores (``tumorlib.evaluation.scoring.predicted_channels``, without post-processing), and then searches the
rule of ``tumorlib.inference.postprocess.PostProcessing`` on those label maps (cheap: connected components,
no network): region by region in their nesting order (WT, then TC given the WT part, then ET given both),
each minimum component size of ``MIN_MM3_GRID`` with and without "keep the largest component". A candidate
scores the mean over the validation volumes of the mean lesion-wise Dice of WT, TC and ET (BraTS 2023,
``tumorlib.evaluation.lesions``); a candidate that lowers any region's legacy Dice by more than
``MAX_DICE_DROP`` below the labels without post-processing is refused; ties go to the earlier candidate
(smaller sizes, without "keep the largest"), so "off" wins unless something helps. The chosen rule and the
score of every candidate go to ``RUN/postprocessing.json`` (written atomically; ``config.json`` stays what
training wrote), which ``predict``, ``evaluate``, ``report``, the notebooks and the viewer then apply. The
test split is scored with and without the rule, for the report.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tumorlib.core.brats import REGION_KEYS, channels_to_labels, labels_to_regions
from tumorlib.data.splits import run_split
from tumorlib.evaluation.lesions import region_lesion_scores
from tumorlib.evaluation.metrics import dice
from tumorlib.evaluation.scoring import predicted_channels
from tumorlib.inference.postprocess import PostProcessing, check_postprocessing_replaceable, write_postprocessing
from tumorlib.inference.run import Run

__all__ = ["MAX_DICE_DROP", "MIN_MM3_GRID", "LabelCase", "choose_postprocessing", "label_cases", "rule_scores",
           "tune_postprocessing"]

#: Minimum component sizes tried per region (mm^3; 0 = off).
MIN_MM3_GRID: tuple[float, ...] = (0, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000)
#: A candidate may lower no region's mean legacy Dice by more than this.
MAX_DICE_DROP = 0.005


class LabelCase:
    """One predicted label map with its reference, and the scores of the region masks seen so far.

    Many candidate rules leave a region's mask as it was (sizes below the smallest component), so the
    scores are kept by a hash of the mask: each distinct mask is scored once.
    """

    def __init__(self, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        pred, ref = np.asarray(pred), np.asarray(ref)
        if pred.shape != ref.shape or pred.ndim != 3:
            raise ValueError(f"prediction {pred.shape} and reference {ref.shape} must be one 3-D shape")
        self.pred, self.ref, self.spacing = pred, ref, tuple(float(s) for s in spacing)
        self.ref_regions = labels_to_regions(ref)
        self._seen: dict[tuple[int, bytes], tuple[float, float]] = {}

    def scores(self, labels: np.ndarray) -> dict[str, float]:
        """``lesion_dice_<r>`` and ``dice_<r>`` of each region of ``labels`` against the reference."""
        out: dict[str, float] = {}
        for i, (region, mask) in enumerate(zip(REGION_KEYS, labels_to_regions(labels))):
            key = (i, hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest())
            if key not in self._seen:
                lesion = region_lesion_scores(mask, self.ref_regions[i], self.spacing, hd95=False)["dice"]
                self._seen[key] = (float(lesion), float(dice(mask[None], self.ref_regions[i][None])[0]))
            out[f"lesion_dice_{region}"], out[f"dice_{region}"] = self._seen[key]
        return out


def rule_scores(rule: PostProcessing, cases: Sequence[LabelCase]) -> dict[str, float]:
    """The means over ``cases`` of each region's lesion-wise and legacy Dice after ``rule``, and
    ``mean_lesion_dice`` (the mean of the three lesion-wise Dice: the tuning score)."""
    rows = [case.scores(rule.apply(case.pred, case.spacing)) for case in cases]
    out = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    out["mean_lesion_dice"] = float(np.mean([out[f"lesion_dice_{r}"] for r in REGION_KEYS]))
    return out


def choose_postprocessing(cases: Sequence[LabelCase], base: PostProcessing = PostProcessing(),
                          grid: Sequence[float] = MIN_MM3_GRID,
                          max_drop: float = MAX_DICE_DROP) -> tuple[PostProcessing, list[dict[str, Any]]]:
    """Search the per-region rule region by region (WT, TC, ET) on validation label maps.

    Args:
        cases: the validation volumes (``LabelCase``: predictions before post-processing).
        base: the rule to start from (its ``et_min_voxels`` is kept; its region parts are replaced).
        grid: minimum component sizes (mm^3) to try per region, each without and with "keep the largest".
        max_drop: a candidate that lowers a region's mean legacy Dice by more than this is refused.

    Returns:
        ``(rule, candidates)``: the chosen rule and one row per candidate tried: ``stage`` (the region),
        ``min_mm3``, ``keep_largest``, the ``rule_scores`` and ``admissible``.

    Raises:
        ValueError: no cases, an empty grid or a negative size.
    """
    if not cases:
        raise ValueError("no validation cases to tune the post-processing on")
    sizes = [float(v) for v in grid]
    if not sizes or min(sizes) < 0:
        raise ValueError(f"the size grid must hold sizes >= 0 (mm^3), got {list(grid)}")
    rule = PostProcessing(et_min_voxels=base.et_min_voxels)
    raw = rule_scores(PostProcessing(), cases)  # the labels without any post-processing, as evaluate's raw_*
    candidates: list[dict[str, Any]] = []
    for stage, region in enumerate(REGION_KEYS):
        best_rule, best_score = rule, rule_scores(rule, cases)["mean_lesion_dice"]
        for largest in (False, True):
            for size in sizes:
                min_mm3 = tuple(size if i == stage else v for i, v in enumerate(rule.min_mm3))
                keep = tuple(largest if i == stage else v for i, v in enumerate(rule.keep_largest))
                candidate = PostProcessing(min_mm3, keep, rule.et_min_voxels)
                scores = rule_scores(candidate, cases)
                admissible = all(scores[f"dice_{r}"] >= raw[f"dice_{r}"] - max_drop for r in REGION_KEYS)
                candidates.append({"stage": region, "min_mm3": size, "keep_largest": largest, **scores,
                                   "admissible": bool(admissible)})
                if admissible and scores["mean_lesion_dice"] > best_score + 1e-12:
                    best_rule, best_score = candidate, scores["mean_lesion_dice"]
        rule = best_rule
    return rule, candidates


def label_cases(model: torch.nn.Module, config: Any, cache: Any, ids: list[int], device: torch.device,
                index: dict[str, Any], amp: bool) -> list[LabelCase]:
    """The cached volumes ``ids`` predicted once each, as ``evaluate`` decodes them (before post-processing)."""
    cases = []
    for vid in ids:
        done = predicted_channels(model, config, cache, vid, device, index, amp=amp)
        cases.append(LabelCase(channels_to_labels(done.pred), channels_to_labels(done.target), done.spacing))
    return cases


def _line(scores: dict[str, float]) -> str:
    def three(kind: str) -> str:
        return " / ".join(f"{scores[kind + '_' + r]:.3f}" for r in REGION_KEYS)

    return f"Dice WT/TC/ET {three('dice')}, lesion-wise {three('lesion_dice')}"


def tune_postprocessing(run_dir: str | os.PathLike | Run, data_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        amp: bool = True, progress: bool = True, score_test: bool = True) -> dict[str, Any]:
    """Choose the post-processing rule on the run's validation split and write ``RUN/postprocessing.json``.

    Args:
        run_dir: the run folder, or a ``Run`` already open (its model is reused).
        data_dir: Kaggle-format data the cache is built from when missing; None: the workspace's.
        cache_dir: the ``.npy`` cache; None: the workspace's.
        device: None: CUDA when available, else CPU.
        amp: autocast at the run's precision.
        progress: print the choice and the test scores with and without it.
        score_test: also predict the test split and score it with and without the rule (``evaluate``
            reports both as well: a caller that evaluates next skips it).

    Returns:
        The record written: ``rule`` (``PostProcessing.to_dict``), ``rule_text``, ``score``
        (what was maximised), ``max_legacy_dice_drop``, ``split`` (``val``), ``volumes``, ``val_without`` and
        ``val_with`` (``rule_scores``), ``candidates`` (every candidate's validation scores), ``test_without``
        and ``test_with`` (None when the test split is empty or ``score_test`` is False).

    Raises:
        ValueError: an empty validation split; see ``evaluate`` for the run and cache errors.
        FileExistsError: ``RUN/postprocessing.json`` is there and tuning did not write it (never replaced).
    """
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir, device)
    model, config, dev, run_dir = run.model, run.config, run.device, run.run_dir
    check_postprocessing_replaceable(run_dir)  # before the predictions, not after them
    base = PostProcessing(et_min_voxels=config.et_min_voxels)  # the config's total-ET rule, kept
    cache = run.cache(data_dir, cache_dir, progress=progress)
    index = run.index
    val_ids = run_split(run_dir, config, run.cached_ids(), "val")
    if not val_ids:
        raise ValueError(f"the validation split of {run_dir} is empty: nothing to tune the post-processing on")
    val_cases = label_cases(model, config, cache, val_ids, dev, index, amp)
    rule, candidates = choose_postprocessing(val_cases, base)
    test_ids = run_split(run_dir, config, run.cached_ids(), "test") if score_test else []
    without = with_ = None
    if test_ids:
        test_cases = label_cases(model, config, cache, test_ids, dev, index, amp)
        without, with_ = rule_scores(PostProcessing(), test_cases), rule_scores(rule, test_cases)
    record = {"rule": rule.to_dict(), "rule_text": rule.describe(),
              "score": "mean lesion-wise Dice of WT, TC, ET (BraTS 2023)", "max_legacy_dice_drop": MAX_DICE_DROP,
              "split": "val", "volumes": [int(v) for v in val_ids],
              "val_without": rule_scores(PostProcessing(), val_cases), "val_with": rule_scores(rule, val_cases),
              "candidates": candidates, "test_without": without, "test_with": with_}
    path = write_postprocessing(run_dir, record)
    if progress:
        from tumorlib.core.sources import display_path

        print(f"post-processing: {rule.describe()} (best of {len(candidates)} candidates on {len(val_ids)} val "
              f"volumes) -> {display_path(path)}")
        if without is not None:
            print(f"test ({len(test_ids)} volumes) without: {_line(without)}")
            print(f"test ({len(test_ids)} volumes) with:    {_line(with_)}")
    return record
