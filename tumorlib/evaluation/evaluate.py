"""Evaluate a trained run on whole volumes: scores per volume, summaries and report tables.

``evaluate(run_dir, data_dir, cache_dir, split="test")`` predicts every volume of a split with the
sliding window (``tumorlib.inference.sliding_window``), decodes the sigmoid outputs into labels by the run's rule
``tumorlib.core.regions.Decoder`` (its ``targets``; the labels ``predict`` writes) and scores them with
``tumorlib.evaluation.scoring`` (the legacy ``tumorlib.evaluation.metrics.brats_scores`` and the BraTS 2023
lesion-wise ``tumorlib.evaluation.lesions.lesion_scores``); it writes one CSV row per volume (``EVAL_COLUMNS``) and a summary
(mean, median, std of each column) beside it. Loading a run lives in ``tumorlib.inference.predictor``, NIfTI label
files in ``tumorlib.inference.predict``, the box plot in ``tumorlib.viz``; the whole-volume validator of
training in ``tumorlib.evaluation.validation`` (``scoring.volume_dice``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tumorlib.core.brats import CLASS_KEYS, REGION_KEYS
from tumorlib.core.config import Config
from tumorlib.evaluation.calibration import CalibrationMetric
from tumorlib.evaluation.confidence import UNCERTAINTY_COLUMNS
from tumorlib.evaluation.lesions import LESION_COLUMNS
from tumorlib.evaluation.metrics import METRIC_COLUMNS
from tumorlib.evaluation.scoring import RAW_COLUMNS, REMOVED_COLUMNS, Predicted, score_volumes
from tumorlib.inference.postprocess import PostProcessing
from tumorlib.inference.predictor import cache_frame_channels, engine_record, inference_precision, make_predictor
from tumorlib.inference.run import Run

__all__ = [
    "EVAL_COLUMNS",
    "KeptPredictions",
    "evaluate",
    "inference_path",
    "metric_table",
    "patch_predictions",
    "summarize",
    "summary_path",
]

#: Columns of the per-volume metrics CSV: the legacy BraTS 2020 metrics, then the BraTS 2023 lesion-wise ones,
#: of the post-processed labels (the run's rule, ``tumorlib.inference.postprocess``); the same scores of the
#: labels before it (``raw_<column>``); the components the rule removed per region; ``et_min_voxels``: the
#: total-ET part of the rule (0: off).
EVAL_COLUMNS = ("volume", *METRIC_COLUMNS, *LESION_COLUMNS, *RAW_COLUMNS, *REMOVED_COLUMNS, "et_min_voxels",
                "seconds")
def summary_path(csv_path: str | os.PathLike) -> Path:
    """Where the summary of a metrics CSV goes: ``metrics.csv`` -> ``metrics_summary.csv``."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}_summary.csv")


def inference_path(csv_path: str | os.PathLike) -> Path:
    """Where ``evaluate`` records how it predicted: ``metrics.csv`` -> ``metrics_inference.json``."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}_inference.json")


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and std of each metric column.

    Args:
        frame: the per-volume table from ``evaluate`` (``EVAL_COLUMNS``) or the per-case table of
            ``tumorlib.evaluation.label_files`` (its ``case`` column is dropped like ``volume``).

    Returns:
        Rows ``mean``, ``median``, ``std``; columns the metrics (and ``seconds``).
    """
    return frame.drop(columns=[c for c in ("volume", "case") if c in frame]).agg(["mean", "median", "std"])


def evaluate(run_dir: str | os.PathLike | Sequence[str | os.PathLike] | Run, data_dir: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, split: str = "test", tta: bool = False,
             out: str | os.PathLike | None = None, device: str | torch.device | None = None,
             amp: bool = True, progress: bool = True,
             volume_ids: Sequence[int] | None = None, engine: str = "torch",
             uncertainty: bool = False,
             on_volume: Callable[[int, Predicted], None] | None = None) -> pd.DataFrame:
    """Score a trained run on whole volumes of one split.

    Each volume of the split is read from the cache (normalised, cropped to the brain), predicted
    with the sliding window (the config's ``patch_size``, ``sw_overlap``, ``sw_blend``,
    ``sw_batch_size``), passed through the sigmoid and decoded into labels by the run's rule
    (``tumorlib.core.regions.Decoder`` with its ``targets``; for ``classes`` tumour where
    the union probability passes ``config.threshold``, then the most probable class), then post-processed by the
    run's rule (``run_postprocessing``): the labels ``predict`` writes; ``raw_`` columns score them before it.

    Args:
        run_dir: the run folder, several (an ensemble), or a ``Run`` already open (its model is reused).
        data_dir: Kaggle-format data the cache is built from when it is missing; None: the
            workspace's data.
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        split: ``test`` (default), ``val``, ``train`` or ``all``.
        tta: average over the 8 flips.
        out: CSV path; None: ``RUN/metrics_<split>.csv`` (``metrics_<split>_ensemble<N>.csv`` for N
            runs). The summary is written beside it (``summary_path``).
        device: None: CUDA when available, else CPU.
        amp: autocast at the run's ``amp_dtype`` (``inference_precision``); False: float32.
        progress: tqdm bar over the volumes and a printed summary.
        volume_ids: score these volumes instead of the split's.
        engine: ``"torch"``, ``"openvino"`` or ``"auto"`` (OpenVINO on the CPU when installed); the engine
            and precision used go to ``inference_path(out)`` (JSON) beside the CSV.
        uncertainty: add ``UNCERTAINTY_COLUMNS`` (``tumorlib.evaluation.confidence``) from the 8 flip passes
            of each volume, which without ``tta`` also give its labels (scores as without); summarised too.
        on_volume: called with each volume's id and prediction (``KeptPredictions``).

    Returns:
        One row per volume, columns ``EVAL_COLUMNS`` (then ``UNCERTAINTY_COLUMNS`` with ``uncertainty``);
        ``seconds`` is the inference time (sliding window, sigmoid, decoding) without the metrics.

    Raises:
        FileNotFoundError, ValueError: see ``load_run``; unknown split; volumes not in the cache.
        CacheError: the cache folder holds other data, or its Kaggle channel order differs from the run's.
    """
    from tumorlib.core.outputs import check_output_file, reserve_space

    runs = run_dir.run_dirs if isinstance(run_dir, Run) else (
        [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir))
    name = f"metrics_{split}.csv" if len(runs) == 1 else f"metrics_{split}_ensemble{len(runs)}.csv"
    out_path = Path(out) if out is not None else Path(runs[0]) / name  # the first run's folder
    for path in (out_path, summary_path(out_path), inference_path(out_path)):  # before any work (the one guard)
        check_output_file(path, writer="evaluate")
    if out_path.parent.is_dir():
        reserve_space(out_path)  # a full disk is found now, not after the volumes are scored
    run = run_dir if isinstance(run_dir, Run) else Run.open(runs, device)
    cache = run.cache(data_dir, cache_dir, progress=progress)
    ids = run.split(split, volume_ids)
    rule, runner, dev = run.postprocessing, run.engine(engine, amp), run.device
    rows = score_volumes(run.model, run.config, cache, ids, dev, tta=tta, amp=amp, index=run.index,
                         progress=progress, desc=f"evaluate {split}", postprocessing=rule, engine=runner,
                         uncertainty=uncertainty, on_volume=on_volume)
    columns = list(EVAL_COLUMNS) + (list(UNCERTAINTY_COLUMNS) if uncertainty else [])
    frame = pd.DataFrame([{**r, "et_min_voxels": rule.et_min_voxels} for r in rows], columns=columns)
    summary = summarize(frame)
    record = {**engine_record(runner), "asked": engine, "device": str(dev), "tta": bool(tta), "split": split,
              "volumes": len(frame), "runs": [str(r) for r in runs], "postprocessing": rule.to_dict()}
    _write_results(out_path, frame, summary, record)
    if progress:
        from tumorlib.core.sources import display_path

        print(f"{len(frame)} volumes ({split}{', TTA' if tta else ''}) -> {display_path(out_path)}; "
              f"post-processing: {rule.describe()}")
        print(summary.round(4).to_string())
    return frame


class KeptPredictions:
    """What ``evaluate(..., on_volume=kept)`` predicted, kept for figures, with calibration on the way: each
    volume is predicted once however many figures and tables show it.

    Each volume's (3, D, H, W) float32 probabilities are kept in memory (about 100 MB a volume at BraTS
    size; the ``ci``/``demo`` volumes take a few MB).

    Args:
        config: the run's config (decoding).
        cache_dir: the cache ``evaluate`` read (the images and ground truth are read again from it).
        postprocessing: the run's rule, applied in the cache's frame (``cache_frame_channels``).
        calibration: updated with each volume's probabilities and cache-frame ground truth (None: none).
    """

    def __init__(self, config: Config, cache_dir: str | os.PathLike, postprocessing: PostProcessing | None = None,
                 calibration: CalibrationMetric | None = None) -> None:
        self.config, self.cache_dir, self.postprocessing = config, Path(cache_dir), postprocessing
        self.calibration = calibration
        self.prob: dict[int, torch.Tensor] = {}

    def __call__(self, volume_id: int, done: Predicted) -> None:
        prob = done.prob.detach().float().cpu()
        if self.calibration is not None:
            self.calibration.update(prob, done.mask)
        self.prob[int(volume_id)] = prob

    def volume(self, volume_id: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
        """``predict_cached_volume``'s ``(image, gt, prob, pred)`` of a kept volume, without predicting it.

        Raises:
            KeyError: the volume was not evaluated.
        """
        from tumorlib.data.cache import load_cache_index, load_cached_volume

        if int(volume_id) not in self.prob:
            raise KeyError(f"volume {volume_id} was not evaluated (kept: {sorted(self.prob)})")
        index = load_cache_index(self.cache_dir)
        image, gt = load_cached_volume(self.cache_dir, volume_id, index=index)
        prob = self.prob[int(volume_id)]
        pred = cache_frame_channels(prob, self.config, index, volume_id, self.postprocessing)
        return np.array(image, dtype=np.float32), np.array(gt), prob, pred


def _write_results(out_path: Path, frame: pd.DataFrame, summary: pd.DataFrame, record: dict[str, Any]) -> None:
    """The metrics CSV, its summary and the inference record, each written beside its target first and then
    renamed in place: a full disk or a kill leaves the earlier files as they were."""
    from tumorlib.core.safety import atomic_path, atomic_write

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (atomic_path(out_path, writer="evaluate") as tmp_csv,
          atomic_path(summary_path(out_path), writer="evaluate") as tmp_summary):
        frame.to_csv(tmp_csv, index=False)
        summary.to_csv(tmp_summary, index_label="statistic")
    atomic_write(inference_path(out_path), json.dumps(record, indent=2) + "\n", writer="evaluate")


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
        "probs": (N, 3, d, h, w) float32 sigmoid outputs (in the order of the run's ``targets``),
        "preds": (N, 3, d, h, w) uint8 class channels decoded by the run's rule
        (``tumorlib.core.regions.Decoder`` at ``config.threshold``), "titles":
        ["volume 3", ...]}``; patches are cut at the config's ``patch_size`` (smaller where the volume is
        smaller).
    """
    from tumorlib.core.regions import Decoder
    from tumorlib.data.cache import load_cache_index, load_cached_volume

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    index = load_cache_index(cache_dir)
    predictor = make_predictor(model, amp, inference_precision(config, amp, dev))
    images, gts, probs = [], [], []
    for vid in volume_ids:
        image, mask = load_cached_volume(cache_dir, vid, index=index)
        window = (slice(None), *_tumour_window(np.asarray(mask), config.patch_size))
        patch = np.asarray(image[window], np.float32)
        x = torch.from_numpy(patch)[None].to(dev)
        probs.append(torch.sigmoid(predictor(x))[0].cpu().numpy())
        images.append(patch)
        gts.append(np.asarray(mask[window]))
    preds = [Decoder.of(config).channels(p) for p in probs]
    return {"images": np.stack(images), "gts": np.stack(gts), "probs": np.stack(probs), "preds": np.stack(preds),
            "titles": [f"volume {v}" for v in volume_ids]}
