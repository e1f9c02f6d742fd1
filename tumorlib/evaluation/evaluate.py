"""Evaluate a trained run on whole volumes: scores per volume, summaries and report tables.

``evaluate(run_dir, data_dir, cache_dir, split="test")`` predicts every volume of a split with the
sliding window (``tumorlib.inference.sliding_window``), decodes the sigmoid outputs into labels by the one rule
``tumorlib.core.brats.decode_to_channels`` (the labels ``predict`` writes) and scores them with
``tumorlib.evaluation.metrics.brats_scores``; it writes one CSV row per volume (``EVAL_COLUMNS``) and a summary
(mean, median, std of each column) beside it. Loading a run lives in ``tumorlib.inference.predictor``, NIfTI label
files in ``tumorlib.inference.predict``, the box plot in ``tumorlib.viz``; the whole-volume validator of
training (``volume_dice``) in ``tumorlib.evaluation.validation``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tumorlib.core.brats import CLASS_KEYS, REGION_KEYS, decode_to_channels
from tumorlib.core.config import Config
from tumorlib.core.device import resolve_device
from tumorlib.evaluation.confidence import UNCERTAINTY_COLUMNS, confidence_scores
from tumorlib.evaluation.metrics import METRIC_COLUMNS, brats_scores
from tumorlib.inference.predictor import load_run, make_predictor, predict_volume

__all__ = [
    "EVAL_COLUMNS",
    "SPLITS",
    "evaluate",
    "metric_table",
    "patch_predictions",
    "run_split",
    "score_volumes",
    "summarize",
    "summary_path",
    "volume_dice",
]

#: Columns of the per-volume metrics CSV.
EVAL_COLUMNS = ("volume", *METRIC_COLUMNS, "seconds")
#: Split names ``evaluate`` accepts.
SPLITS = ("train", "val", "test", "all")


def run_split(run_dir: str | os.PathLike, config: Config, volume_ids: Sequence[int], split: str) -> list[int]:
    """The volume ids of one split of a run.

    Uses ``RUN/splits.json`` when present, else recomputes ``split_ids`` with the config's
    fractions and seed (what training does).

    Args:
        run_dir: the run folder.
        config: the run's config.
        volume_ids: the volumes in the cache.
        split: ``train``, ``val``, ``test`` or ``all``.

    Returns:
        Sorted ids.

    Raises:
        ValueError: an unknown split name, or split volumes missing from the cache.
    """
    from tumorlib.data.splits import split_ids

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    ids = sorted(int(v) for v in volume_ids)
    if split == "all":
        return ids
    path = Path(run_dir) / "splits.json"
    if path.is_file():
        chosen = sorted(int(v) for v in json.loads(path.read_text())[split])
        missing = sorted(set(chosen) - set(ids))
        if missing:
            raise ValueError(f"{path}: {split} volumes {missing} are not in the cache; was the run trained "
                             "on other data?")
        return chosen
    return split_ids(config, ids)[split]


def summary_path(csv_path: str | os.PathLike) -> Path:
    """Where the summary of a metrics CSV goes: ``metrics.csv`` -> ``metrics_summary.csv``."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}_summary.csv")


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and std of each metric column.

    Args:
        frame: the per-volume table from ``evaluate`` (``EVAL_COLUMNS``).

    Returns:
        Rows ``mean``, ``median``, ``std``; columns the metrics and ``seconds``.
    """
    return frame.drop(columns=["volume"]).agg(["mean", "median", "std"])


def score_volumes(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike,
                  volume_ids: Sequence[int], device: torch.device, tta: bool = False, amp: bool = True,
                  index: dict[str, Any] | None = None, progress: bool = False,
                  desc: str = "score", uncertainty: bool = False) -> list[dict[str, float]]:
    """Predict whole cached volumes and score the decoded labels: the one scoring path of ``evaluate``
    and of whole-volume model selection during training.

    Each volume is predicted with the sliding window (``predict_volume``), decoded by
    ``tumorlib.core.brats.decode_to_channels`` at ``config.threshold`` (the labels ``predict`` writes) and
    scored with ``brats_scores``. Dice and HD95 are computed in the cache's frame: the crop holds every
    tumour voxel, so they equal the full-volume values. A cache resampled in-plane (``cache_hw`` below
    the native size) is scored at the source resolution instead (the probabilities are mapped back
    with ``uncrop``, then decoded).

    Args:
        model: the network, on ``device``, in eval mode.
        config: the run's config (sliding window, ``threshold``).
        cache_dir: the cache.
        volume_ids: the volumes to score.
        device: where the windows run.
        tta: average over the 8 flips.
        amp: autocast on CUDA.
        index: the cache index (read when None).
        progress: tqdm bar over the volumes.
        desc: the bar's label.
        uncertainty: add ``tumorlib.evaluation.confidence.UNCERTAINTY_COLUMNS`` (8 more passes a volume).

    Returns:
        One dict per volume: ``volume``, the ``METRIC_COLUMNS``, ``seconds`` (sliding window, sigmoid
        and decoding, without the metrics) and with ``uncertainty`` the uncertainty columns.

    Raises:
        CacheError: a resampled cache whose source cannot be reopened.
    """
    from tumorlib.core.progress import tqdm

    from tumorlib.data.cache import CacheError, load_cache_index, load_cached_volume, open_source, uncrop

    index = index if index is not None else load_cache_index(cache_dir)
    try:
        source = open_source(index)
    except CacheError:
        source = None  # a cache from a custom reader: 1 mm voxels, scored in the cache frame only
    rows = []
    for vid in tqdm(list(volume_ids), desc=desc, unit="vol", disable=not progress):
        entry = index["volumes"][str(vid)]
        image, mask = load_cached_volume(cache_dir, vid, index=index)
        start = time.perf_counter()
        prob = predict_volume(model, image, config, device, tta=tta, amp=amp)
        resampled = not all(abs(z - 1.0) < 1e-9 for z in entry["zoom"])
        if resampled:
            if source is None:
                open_source(index)  # raises CacheError naming the reader
            pred = decode_to_channels(uncrop(prob.cpu().numpy(), entry, fill=0.0), config.threshold)
        else:
            pred = decode_to_channels(prob, config.threshold)
        seconds = time.perf_counter() - start
        spacing = source.spacing(vid) if source is not None else (1.0, 1.0, 1.0)
        target = source.read(vid)[1] if resampled else np.asarray(mask)
        rows.append({"volume": int(vid), **brats_scores(pred, target, spacing), "seconds": seconds})
        if uncertainty:
            rows[-1].update(confidence_scores(model, config, image, prob, decode_to_channels(prob, config.threshold),
                                              np.asarray(mask), device, amp))
    return rows


def volume_dice(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                device: torch.device, amp: bool = True) -> float:
    """The model-selection score on whole volumes: the mean over volumes of the mean of the WT, TC and
    ET Dice of the decoded labels, computed by ``score_volumes`` exactly as ``evaluate`` computes them.

    Args:
        model: the network (put in eval mode for the call, its mode restored after).
        config: the run's config.
        cache_dir: the cache.
        volume_ids: the validation volumes.
        device: where the windows run.
        amp: autocast on CUDA.

    Returns:
        The score in [0, 1].
    """
    was_training = model.training
    model.eval()
    try:
        rows = score_volumes(model, config, cache_dir, volume_ids, device, amp=amp)
    finally:
        model.train(was_training)
    return float(np.mean([np.mean([r["dice_wt"], r["dice_tc"], r["dice_et"]]) for r in rows]))


def evaluate(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, split: str = "test", tta: bool = False,
             out: str | os.PathLike | None = None, device: str | torch.device | None = None,
             amp: bool = True, progress: bool = True,
             volume_ids: Sequence[int] | None = None, uncertainty: bool = False) -> pd.DataFrame:
    """Score a trained run on whole volumes of one split.

    Each volume of the split is read from the cache (normalised, cropped to the brain), predicted
    with the sliding window (the config's ``patch_size``, ``sw_overlap``, ``sw_blend``,
    ``sw_batch_size``), passed through the sigmoid and decoded into labels by the one rule
    (``tumorlib.core.brats.decode_to_channels``: tumour where the union probability passes
    ``config.threshold``, then the most probable class), so the scores are those of the labels
    ``predict`` writes (``score_volumes``).

    Args:
        run_dir: the run folder.
        data_dir: Kaggle-format data the cache is built from when it is missing; None: the
            workspace's data.
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        split: ``test`` (default), ``val``, ``train`` or ``all``.
        tta: average over the 8 flips.
        out: CSV path; None: ``RUN/metrics_<split>.csv``. The summary is written beside it
            (``summary_path``).
        device: None: CUDA when available, else CPU.
        amp: bf16 autocast on CUDA.
        progress: tqdm bar over the volumes and a printed summary.
        volume_ids: score these volumes instead of the split's.
        uncertainty: add the columns ``mean_entropy_tumour``, ``uncertain_fraction`` and the ECE per
            region ``ece_wt``, ``ece_tc``, ``ece_et`` (``tumorlib.evaluation.confidence``; 8 flip passes
            more per volume); their mean, median and std join the summary.

    Returns:
        One row per volume, columns ``EVAL_COLUMNS`` (then ``UNCERTAINTY_COLUMNS`` with ``uncertainty``);
        ``seconds`` is the inference time (sliding window, sigmoid, decoding) without the metrics.

    Raises:
        FileNotFoundError, ValueError: see ``load_run``; unknown split; volumes not in the cache.
        CacheError: the cache folder holds other data, or its Kaggle channel order differs from the run's.
    """
    from tumorlib.data.cache import check_cache_order, load_cache_index
    from tumorlib.data.resolve import resolve_cache

    dev = resolve_device(device)
    model, config = load_run(run_dir, dev)
    cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
    index = load_cache_index(cache)
    check_cache_order(cache, index, config.kaggle_channel_order)
    cached = sorted(int(k) for k in index["volumes"])
    if volume_ids is None:
        ids = run_split(run_dir, config, cached, split)
    else:
        ids = [int(v) for v in volume_ids]
        missing = sorted(set(ids) - set(cached))
        if missing:
            raise ValueError(f"volumes {missing} are not in the cache {cache}")
    if not ids:
        raise ValueError(f"the {split} split of {run_dir} is empty")
    rows = score_volumes(model, config, cache, ids, dev, tta=tta, amp=amp, index=index,
                         progress=progress, desc=f"evaluate {split}", uncertainty=uncertainty)
    frame = pd.DataFrame(rows, columns=list(EVAL_COLUMNS) + (list(UNCERTAINTY_COLUMNS) if uncertainty else []))
    out_path = Path(out) if out is not None else Path(run_dir) / f"metrics_{split}.csv"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_path, index=False)
    summary = summarize(frame)
    summary.to_csv(summary_path(out_path), index_label="statistic")
    if progress:
        from tumorlib.core.sources import display_path

        print(f"{len(frame)} volumes ({split}{', TTA' if tta else ''}) -> {display_path(out_path)}")
        print(summary.round(4).to_string())
    return frame


def metric_table(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Per-class and per-region "mean ± std" table for reports.

    Args:
        frame: the per-volume table from ``evaluate``.
        digits: decimals shown.

    Returns:
        Rows NCR, ED, ET (classes) and WT, TC, ET (regions) with columns ``kind``, ``Dice`` and
        ``HD95 (mm)`` (HD95 is reported for the regions only, as BraTS does).
    """
    def cell(col: str) -> str:
        if col not in frame:
            return "–"
        values = frame[col].astype(float)
        return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}"

    rows = [{"name": name.upper(), "kind": "class", "Dice": cell(f"dice_{name}"), "HD95 (mm)": "–"}
            for name in CLASS_KEYS]
    rows += [{"name": name.upper(), "kind": "region", "Dice": cell(f"dice_{name}"),
              "HD95 (mm)": cell(f"hd95_{name}")} for name in REGION_KEYS]
    return pd.DataFrame(rows).set_index("name")


def _tumour_window(mask: np.ndarray, patch_size: Sequence[int]) -> tuple[slice, ...]:
    """A patch-sized window centred on the tumour's bounding box (or the volume), clipped to it."""
    shape = mask.shape[1:]
    tumour = mask.any(axis=0)
    if tumour.any():
        idx = np.nonzero(tumour)
        centre = [(int(i.min()) + int(i.max())) // 2 for i in idx]
    else:
        centre = [s // 2 for s in shape]
    out = []
    for c, p, s in zip(centre, patch_size, shape):
        start = min(max(c - p // 2, 0), max(s - p, 0))
        out.append(slice(start, start + min(p, s)))
    return tuple(out)


def patch_predictions(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike,
                      volume_ids: Sequence[int], device: str | torch.device | None = None,
                      amp: bool = True) -> dict[str, Any]:
    """One tumour-centred patch per volume, predicted in a single forward pass (the reference design's figure).

    Args:
        model: the trained network.
        config: the run's config (``patch_size``).
        cache_dir: the cache.
        volume_ids: the volumes (one patch each).
        device: None: the model's device.
        amp: autocast on CUDA.

    Returns:
        ``{"images": (N, 4, d, h, w) float32, "gts": (N, 3, d, h, w) uint8,
        "probs": (N, 3, d, h, w) float32 sigmoid outputs, "titles": ["volume 3", ...]}``; patches
        are cut at the config's ``patch_size`` (smaller where the volume is smaller).
    """
    from tumorlib.data.cache import load_cache_index, load_cached_volume

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    index = load_cache_index(cache_dir)
    predictor = make_predictor(model, amp)
    images, gts, probs = [], [], []
    for vid in volume_ids:
        image, mask = load_cached_volume(cache_dir, vid, index=index)
        window = (slice(None), *_tumour_window(np.asarray(mask), config.patch_size))
        patch = np.asarray(image[window], np.float32)
        x = torch.from_numpy(patch)[None].to(dev)
        probs.append(torch.sigmoid(predictor(x))[0].cpu().numpy())
        images.append(patch)
        gts.append(np.asarray(mask[window]))
    return {"images": np.stack(images), "gts": np.stack(gts), "probs": np.stack(probs),
            "titles": [f"volume {v}" for v in volume_ids]}
