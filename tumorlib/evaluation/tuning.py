"""Tune a run's post-processing on its validation split: the small-enhancing-tumour threshold.

``tune_postprocessing(run_dir)`` predicts every validation volume once, through the path ``evaluate``
scores (``tumorlib.evaluation.scoring.predicted_channels``, without post-processing), and picks the
``et_min_voxels`` of ``tumorlib.inference.postprocess.et_threshold_grid`` (0 to 750 voxels by 10 at full
size, scaled to the volumes' source shape) with the best mean ET Dice on those label maps
(``tune_et_min_voxels``; ties: the smallest). The choice goes to ``RUN/postprocessing.json`` (written
atomically; ``config.json`` stays what training wrote), which ``evaluate`` and ``predict`` then apply.
The test split is scored with and without the chosen value, for the report.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from tumorlib.core.brats import channels_to_labels
from tumorlib.core.device import resolve_device
from tumorlib.evaluation.evaluate import run_split
from tumorlib.evaluation.scoring import predicted_channels
from tumorlib.inference.postprocess import (
    et_threshold_grid,
    remove_small_et,
    tune_et_min_voxels,
    write_postprocessing,
)
from tumorlib.inference.predictor import load_run

__all__ = ["tune_postprocessing"]


def _label_maps(model: torch.nn.Module, config: Any, cache: Any, ids: list[int], device: torch.device,
                index: dict[str, Any], amp: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds, refs = [], []
    for vid in ids:
        pred, target = predicted_channels(model, config, cache, vid, device, index, amp=amp)[:2]
        preds.append(channels_to_labels(pred))
        refs.append(channels_to_labels(target))
    return preds, refs


def _mean_et_dice(preds: list[np.ndarray], refs: list[np.ndarray], et_min_voxels: int) -> float:
    _, table = tune_et_min_voxels([remove_small_et(p, et_min_voxels) for p in preds], refs, [0])
    return float(table[0]["mean_dice_et"])


def tune_postprocessing(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        amp: bool = True, progress: bool = True) -> dict[str, Any]:
    """Pick ``et_min_voxels`` on the run's validation split and write ``RUN/postprocessing.json``.

    Args:
        run_dir: the run folder.
        data_dir: Kaggle-format data the cache is built from when missing; None: the workspace's.
        cache_dir: the ``.npy`` cache; None: the workspace's.
        device: None: CUDA when available, else CPU.
        amp: bf16 autocast on CUDA.
        progress: print the choice and the test ET Dice with and without it.

    Returns:
        The record written: ``et_min_voxels``, ``split`` (``val``), ``volumes``, ``shape`` (the source
        shape the grid was scaled to), ``table`` (one row per threshold: ``et_min_voxels``,
        ``mean_dice_et``, ``cases_relabelled``), ``test_dice_et_without`` and ``test_dice_et_with``
        (None when the test split is empty).

    Raises:
        ValueError: an empty validation split; see ``evaluate`` for the run and cache errors.
    """
    from tumorlib.data.cache import check_cache_order, load_cache_index
    from tumorlib.data.resolve import resolve_cache

    dev = resolve_device(device)
    model, config = load_run(run_dir, dev)
    cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
    index = load_cache_index(cache)
    check_cache_order(cache, index, config.kaggle_channel_order)
    cached = sorted(int(k) for k in index["volumes"])
    val_ids = run_split(run_dir, config, cached, "val")
    if not val_ids:
        raise ValueError(f"the validation split of {run_dir} is empty: nothing to tune et_min_voxels on")
    shape = tuple(int(n) for n in index["volumes"][str(val_ids[0])]["source_shape"])
    grid = et_threshold_grid(shape)
    preds, refs = _label_maps(model, config, cache, val_ids, dev, index, amp)
    best, table = tune_et_min_voxels(preds, refs, grid)
    test_ids = run_split(run_dir, config, cached, "test")
    without = with_ = None
    if test_ids:
        test_preds, test_refs = _label_maps(model, config, cache, test_ids, dev, index, amp)
        without, with_ = _mean_et_dice(test_preds, test_refs, 0), _mean_et_dice(test_preds, test_refs, best)
    record = {"et_min_voxels": int(best), "split": "val", "volumes": [int(v) for v in val_ids],
              "shape": list(shape), "table": table, "test_dice_et_without": without, "test_dice_et_with": with_}
    path = write_postprocessing(run_dir, record)
    if progress:
        from tumorlib.core.sources import display_path

        print(f"et_min_voxels {best} (of {len(grid)} thresholds 0-{grid[-1]} for {shape} volumes, "
              f"{len(val_ids)} val volumes) -> {display_path(path)}")
        if without is not None:
            print(f"test ET Dice ({len(test_ids)} volumes): without {without:.4f}, with {with_:.4f}")
    return record
