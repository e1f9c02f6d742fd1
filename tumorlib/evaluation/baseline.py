"""An intensity-only baseline: what a per-voxel lookup of the four intensities scores.

A quadratic discriminant (scikit-learn's ``QuadraticDiscriminantAnalysis``) is fitted on the four
z-scored intensities of brain voxels of the training split, four classes (healthy brain,
necrosis/NET, edema, enhancing), with the classes' true frequencies as priors; it sees one voxel at
a time and no spatial context. Its test-split Dice is the floor that a segmentation network must
beat: on data where it scores high, Dice says nothing about the method.

The table has the columns of ``tumorlib.evaluation.evaluate`` (``EVAL_COLUMNS``), scored by the same
``volume_scores`` (legacy and lesion-wise metrics) on the cache's grid, so ``evaluate`` and ``baseline``
tables sit side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumorlib.core.brats import channels_to_classes
from tumorlib.core.config import Config
from tumorlib.evaluation.evaluate import EVAL_COLUMNS, summarize, summary_path
from tumorlib.evaluation.scoring import volume_scores

__all__ = ["IntensityBaseline", "baseline", "fit_baseline"]


def _features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain voxels of a cached (4, D, H, W) image: ((N, 4) float32 features, (D, H, W) bool brain)."""
    brain = np.any(image != 0, axis=0)
    return np.asarray(image[:, brain], dtype=np.float32).T, brain


class IntensityBaseline:
    """A per-voxel classifier of the four intensities (no spatial context).

    Args:
        model: a fitted scikit-learn classifier over 4 features with classes 0..3.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class channels for one cached volume.

        Args:
            image: (4, D, H, W) z-scored intensities, 0 outside the brain.

        Returns:
            (3, D, H, W) uint8 necrosis/NET, edema, enhancing (disjoint).
        """
        feats, brain = _features(np.asarray(image))
        labels = np.zeros(brain.shape, np.int64)
        if len(feats):
            labels[brain] = self.model.predict(feats)
        return np.stack([labels == c for c in (1, 2, 3)]).astype(np.uint8)


def fit_baseline(cache_dir: str | os.PathLike, volume_ids: Sequence[int], voxels_per_volume: int = 40000,
                 seed: int = 0) -> IntensityBaseline:
    """Fit the quadratic discriminant on brain voxels of some cached volumes.

    Each volume gives up to ``voxels_per_volume`` healthy voxels and as many of each tumour class
    (sampled without replacement); the priors are the classes' true voxel frequencies.

    Args:
        cache_dir: the ``.npy`` cache.
        volume_ids: the training volumes.
        voxels_per_volume: cap per class and volume.
        seed: sampling seed.

    Returns:
        The fitted baseline.

    Raises:
        ValueError: no volumes, or no tumour voxel of some class in all of them.
    """
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    from tumorlib.data.cache import load_cache_index, load_cached_volume

    if not volume_ids:
        raise ValueError(f"no training volumes to fit the baseline on (cache {cache_dir})")
    rng = np.random.default_rng(seed)
    index = load_cache_index(cache_dir)
    xs, ys, counts = [], [], np.zeros(4)
    for vid in volume_ids:
        image, mask = load_cached_volume(cache_dir, int(vid), index=index)
        feats, brain = _features(np.asarray(image))
        labels = channels_to_classes(mask)[brain].astype(np.int64)  # 0 healthy, 1 NCR/NET, 2 ED, 3 ET
        counts += np.bincount(labels, minlength=4)
        for c in range(4):
            where = np.flatnonzero(labels == c)
            if len(where) > voxels_per_volume:
                where = rng.choice(where, voxels_per_volume, replace=False)
            xs.append(feats[where])
            ys.append(labels[where])
    missing = [name for name, n in zip(("healthy", "necrosis/NET", "edema", "enhancing"), counts) if n == 0]
    if missing:
        raise ValueError(f"the baseline's training volumes {list(volume_ids)} hold no {', '.join(missing)} voxel")
    model = QuadraticDiscriminantAnalysis(priors=counts / counts.sum(), reg_param=1e-3)
    model.fit(np.concatenate(xs), np.concatenate(ys))
    return IntensityBaseline(model)


def baseline(config: Config, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """Fit the intensity baseline on a preset's training split and score its test split.

    The split is the one training uses (``split_volumes`` with the config's ``val_fraction``,
    ``test_fraction`` and ``split_seed`` over the cached volumes). Scores are computed on the cache's
    grid (1 mm spacing assumed for Kaggle data, as ``evaluate`` does).

    Args:
        config: the preset's config.
        data_dir: Kaggle-format data the cache is built from when missing; None: the workspace's.
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        out: CSV path; None: ``OUT/baseline_test.csv`` of the workspace. The summary goes beside it.
        progress: print the summary.

    Returns:
        One row per test volume, columns ``EVAL_COLUMNS`` (``seconds``: the prediction time).

    Raises:
        ValueError: an empty training or test split.
    """
    from tumorlib.core.config import workspace
    from tumorlib.data.cache import CacheError, load_cache_index, load_cached_volume, open_source
    from tumorlib.data.resolve import resolve_cache
    from tumorlib.data.splits import run_splits
    from tumorlib.core.outputs import check_output_file
    from tumorlib.core.safety import atomic_path

    out_path = Path(out) if out is not None else workspace(config).out_dir / "baseline_test.csv"
    for path in (out_path, summary_path(out_path)):  # before any work (the one guard)
        check_output_file(path, writer="baseline")

    cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
    index = load_cache_index(cache)
    split = run_splits(config, cache)
    train_ids, test_ids = split["train"], split["test"]
    if not train_ids or not test_ids:
        raise ValueError(f"the training or test split of the volumes in {cache} is empty")
    try:
        source = open_source(index)  # voxel spacing, as evaluate scores it
    except CacheError:
        source = None  # a cache from a custom reader: 1 mm voxels
    model = fit_baseline(cache, train_ids, seed=config.seed)
    rows = []
    for vid in test_ids:
        image, mask = load_cached_volume(cache, vid, index=index, check=True)
        start = time.perf_counter()
        pred = model.predict(np.asarray(image))
        seconds = time.perf_counter() - start
        spacing = source.spacing(vid) if source is not None else (1.0, 1.0, 1.0)
        rows.append({"volume": vid, **volume_scores(pred, np.asarray(mask), spacing), "et_min_voxels": 0,
                     "seconds": seconds})
    frame = pd.DataFrame(rows, columns=list(EVAL_COLUMNS))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (atomic_path(out_path, writer="baseline") as tmp_csv,
          atomic_path(summary_path(out_path), writer="baseline") as tmp_summary):
        frame.to_csv(tmp_csv, index=False)
        summarize(frame).to_csv(tmp_summary, index_label="statistic")
    if progress:
        print(f"intensity baseline: fitted on {len(train_ids)} volumes, scored {len(frame)} test volumes -> {out_path}")
        print(summarize(frame).round(4).to_string())
    return frame
