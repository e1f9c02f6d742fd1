"""Evaluate a trained run on whole volumes, and predict BraTS label files.

``evaluate(run_dir, data_dir, cache_dir, split="test")`` predicts every volume of a split with the
sliding window (``tumorlib.inference``), thresholds the sigmoid outputs and scores them with
``tumorlib.metrics.brats_scores``; it writes one CSV row per volume (``EVAL_COLUMNS``) and a summary
(mean, median, std of each column) beside it. ``predict(run_dir, out, ...)`` writes a NIfTI file with
BraTS labels 0/1/2/4 for one raw volume (Kaggle HDF5 or an official NIfTI case), at the input's full
size, normalised by the cache's own code (``tumorlib.data.cache.prepare_volume``).

A run folder is what ``tumorlib.train.train`` writes: ``RUN/config.json``, ``RUN/splits.json`` and
``RUN/checkpoints/best_model.pth``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tumorlib.config import Config, load_config
from tumorlib.inference import labels_from_probabilities, sliding_window_inference
from tumorlib.metrics import CLASS_NAMES, METRIC_COLUMNS, REGION_NAMES, brats_scores

__all__ = [
    "EVAL_COLUMNS",
    "SPLITS",
    "evaluate",
    "load_run",
    "make_predictor",
    "metric_table",
    "patch_predictions",
    "plot_metric_boxes",
    "predict",
    "predict_volume",
    "run_split",
    "summarize",
    "summary_path",
]

#: Columns of the per-volume metrics CSV.
EVAL_COLUMNS = ("volume", *METRIC_COLUMNS, "seconds")
#: Split names ``evaluate`` accepts.
SPLITS = ("train", "val", "test", "all")
_MODEL_FIELDS = ("in_channels", "num_classes", "features")


# --------------------------------------------------------------------------- model

def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available; use --device cpu")
    return device


def load_run(run_dir: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[torch.nn.Module, Config]:
    """The trained model of a run folder, in eval mode, and the run's config.

    Args:
        run_dir: a folder written by ``tumorlib.train.train`` (``config.json`` and
            ``checkpoints/best_model.pth``).
        device: where to put the model; None: CUDA when available, else CPU.

    Returns:
        ``(model, config)`` with the config read from ``RUN/config.json``.

    Raises:
        FileNotFoundError: the folder, its config or its checkpoint is missing (names the path).
        ValueError: the checkpoint was trained with another model configuration than ``config.json``
            says, or its weights do not fit the model (names both files).
    """
    from tumorlib.checkpoint import BEST_NAME, load_checkpoint
    from tumorlib.model import model_from_config

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train one with `tumorlib train`")
    config_path = run / "config.json"
    ckpt_path = run / "checkpoints" / BEST_NAME
    config = load_config(config_path)
    ckpt = load_checkpoint(ckpt_path)
    saved = ckpt.get("config") or {}
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint but {config.to_dict()[k]!r} in {config_path.name}"
             for k in _MODEL_FIELDS if k in saved and saved[k] != config.to_dict()[k]]
    if diffs:
        raise ValueError(f"{ckpt_path} does not match {config_path}: " + "; ".join(diffs))
    model = model_from_config(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise ValueError(f"{ckpt_path}: weights do not fit the model described by {config_path} "
                         f"({' '.join(first)})") from err
    return model.to(_device(device)).eval(), config


def make_predictor(model: torch.nn.Module, amp: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a model for ``sliding_window_inference``: no gradients, autocast on CUDA.

    Args:
        model: maps (N, C, d, h, w) to (N, K, d, h, w) logits.
        amp: run under bf16 autocast (fp16 where bf16 is unsupported) on CUDA; ignored on the CPU.

    Returns:
        ``predictor(x) -> logits`` as float32.
    """
    def predictor(x: torch.Tensor) -> torch.Tensor:
        if amp and x.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            ctx = torch.autocast("cuda", dtype=dtype)
        else:
            ctx = contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return model(x).float()

    return predictor


def predict_volume(model: torch.nn.Module, image: np.ndarray | torch.Tensor, config: Config,
                   device: str | torch.device | None = None, tta: bool = False, amp: bool = True,
                   progress: bool = False) -> torch.Tensor:
    """Sigmoid probabilities of one whole (normalised) volume by sliding window.

    Args:
        model: the trained network (on ``device``).
        image: (C, D, H, W) normalised image (e.g. a cached volume, float16 or float32).
        config: the run's config (``patch_size``, ``sw_overlap``, ``sw_blend``, ``sw_batch_size``).
        device: where the windows run; None: the model's device.
        tta: average over the 8 flips of (D, H, W).
        amp: autocast on CUDA.
        progress: tqdm bar over the windows.

    Returns:
        (K, D, H, W) float32 probabilities on ``device`` (logits are blended, then the sigmoid).

    Raises:
        ValueError: the image does not have ``config.in_channels`` channels.
    """
    if image.shape[0] != config.in_channels:
        raise ValueError(f"image has {image.shape[0]} channels, the model expects {config.in_channels} "
                         f"(shape {tuple(image.shape)})")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(image, torch.Tensor):
        x = image.to(dev, torch.float32)[None]
    else:  # a read-only memory map from the cache: copy it once, as float32
        x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(dev)
    logits = sliding_window_inference(x, make_predictor(model, amp), config.patch_size,
                                      overlap=config.sw_overlap, blend=config.sw_blend,
                                      batch_size=config.sw_batch_size, device=dev, tta=tta,
                                      progress=progress)
    return torch.sigmoid_(logits[0])


# --------------------------------------------------------------------------- evaluate

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
    from tumorlib.data.resolve import split_ids

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


def evaluate(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, split: str = "test", tta: bool = False,
             out: str | os.PathLike | None = None, device: str | torch.device | None = None,
             amp: bool = True, progress: bool = True,
             volume_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Score a trained run on whole volumes of one split.

    Each volume of the split is read from the cache (normalised, cropped to the brain), predicted
    with the sliding window (the config's ``patch_size``, ``sw_overlap``, ``sw_blend``,
    ``sw_batch_size``), passed through the sigmoid and thresholded at ``config.threshold``. Dice and
    HD95 are computed in the cache's frame: the crop holds every tumour voxel, so they equal the
    full-volume values. A cache resampled in-plane (``cache_hw`` below the native size) is scored
    at the source resolution instead (the probabilities are mapped back with ``uncrop``).

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

    Returns:
        One row per volume, columns ``EVAL_COLUMNS``; ``seconds`` is the inference time (sliding
        window, sigmoid, threshold) without the metrics.

    Raises:
        FileNotFoundError, ValueError: see ``load_run``; unknown split; volumes not in the cache.
        CacheError: the cache folder holds other data.
    """
    from tqdm.auto import tqdm

    from tumorlib.data.cache import CacheError, load_cache_index, load_cached_volume, open_source, uncrop
    from tumorlib.data.resolve import resolve_cache

    dev = _device(device)
    model, config = load_run(run_dir, dev)
    cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
    index = load_cache_index(cache)
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
    try:
        source = open_source(index)
    except CacheError:
        source = None  # a cache from a custom reader: 1 mm voxels, scored in the cache frame only
    rows = []
    for vid in tqdm(ids, desc=f"evaluate {split}", unit="vol", disable=not progress):
        entry = index["volumes"][str(vid)]
        image, mask = load_cached_volume(cache, vid, index=index)
        start = time.perf_counter()
        prob = predict_volume(model, image, config, dev, tta=tta, amp=amp)
        pred = (prob > config.threshold)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        spacing = source.spacing(vid) if source is not None else (1.0, 1.0, 1.0)
        if all(abs(z - 1.0) < 1e-9 for z in entry["zoom"]):
            scores = brats_scores(pred.cpu().numpy(), np.asarray(mask), spacing)
        else:  # a resampled cache: scored at the source resolution, against the source's ground truth
            full = uncrop(prob.cpu().numpy(), entry, fill=0.0) > config.threshold
            if source is None:
                open_source(index)  # raises CacheError naming the reader
            scores = brats_scores(full, source.read(vid)[1], spacing)
        rows.append({"volume": vid, **scores, "seconds": seconds})
    frame = pd.DataFrame(rows, columns=list(EVAL_COLUMNS))
    out_path = Path(out) if out is not None else Path(run_dir) / f"metrics_{split}.csv"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_path, index=False)
    summary = summarize(frame)
    summary.to_csv(summary_path(out_path), index_label="statistic")
    if progress:
        print(f"{len(frame)} volumes ({split}{', TTA' if tta else ''}) -> {out_path}")
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
            for name in CLASS_NAMES]
    rows += [{"name": name.upper(), "kind": "region", "Dice": cell(f"dice_{name}"),
              "HD95 (mm)": cell(f"hd95_{name}")} for name in REGION_NAMES]
    return pd.DataFrame(rows).set_index("name")


def plot_metric_boxes(frame: pd.DataFrame, title: str | None = None) -> Any:
    """Box plots of Dice (classes and regions) and HD95 (regions) over the volumes.

    Args:
        frame: the per-volume table from ``evaluate``.
        title: figure title; None: the number of volumes.

    Returns:
        ``matplotlib.figure.Figure`` with two panels (Dice, HD95), each volume drawn as a dot.
    """
    from matplotlib.figure import Figure

    dice_cols = [f"dice_{n}" for n in (*CLASS_NAMES, "wt", "tc")]
    hd_cols = [f"hd95_{n}" for n in REGION_NAMES]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_d, ax_h = fig.subplots(1, 2, gridspec_kw={"width_ratios": [5, 3]})
    for ax, cols, label in ((ax_d, dice_cols, "Dice"), (ax_h, hd_cols, "HD95 (mm)")):
        data = [frame[c].astype(float).to_numpy() for c in cols]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(cols) + 1), [c.split("_")[1].upper() for c in cols])
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.08, 0.08, len(values)), values, ".", color="0.3", alpha=0.6)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax_d.set_ylim(-0.02, 1.02)
    ax_d.set_title("Dice: classes | regions")
    ax_h.set_title("HD95: regions")
    fig.suptitle(title if title is not None else f"{len(frame)} volumes")
    return fig


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
    """One tumour-centred patch per volume, predicted in a single forward pass (the seed's figure).

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


# --------------------------------------------------------------------------- predict

def predict(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            volume_id: int | None = None, nifti_case: str | os.PathLike | None = None, tta: bool = False,
            device: str | torch.device | None = None, amp: bool = True,
            progress: bool = False) -> Path:
    """Segment one raw volume and write BraTS labels as NIfTI.

    The input is prepared exactly as the cache prepares it (``prepare_volume``: optional in-plane
    zoom to ``cache_hw``, crop to the brain plus ``cache_margin``, per-channel z-score), predicted by
    sliding window, mapped back to the full input size (``uncrop``, probabilities outside the crop
    are 0) and thresholded. Where several classes pass the threshold, enhancing (4) wins over
    necrosis/NET (1), which wins over edema (2).

    Args:
        run_dir: the run folder.
        out: the output file, ``*.nii.gz`` or ``*.nii``.
        data_dir: a Kaggle-format folder (with ``volume_id``).
        volume_id: the volume to predict from ``data_dir``.
        nifti_case: an official BraTS case folder (``*_t1/_t1ce/_t2/_flair.nii.gz``), instead of
            ``data_dir``/``volume_id``.
        tta: average over the 8 flips.
        device: None: CUDA when available, else CPU.
        amp: bf16 autocast on CUDA.
        progress: tqdm bar over the windows.

    Returns:
        The path written: uint8 labels {0, 1, 2, 4}, array shape (H, W, D) (slice index last, as
        BraTS files), with the case's affine for NIfTI input and a 1 mm identity for Kaggle input.

    Raises:
        ValueError: neither or both inputs given, an output name that is not NIfTI, a volume with
            the wrong number of channels, or a run whose config and weights disagree.
        KeyError: ``volume_id`` not in ``data_dir``.
        FileNotFoundError: a missing run, folder or modality file (names it).
    """
    from tumorlib.data import load_volume
    from tumorlib.data.cache import prepare_volume, uncrop
    from tumorlib.data.nifti import load_nifti_case, save_segmentation_nifti

    out = Path(out)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"output {out} must end in .nii.gz or .nii")
    if (nifti_case is None) == (data_dir is None or volume_id is None):
        raise ValueError("give either nifti_case, or data_dir and volume_id")
    dev = _device(device)
    model, config = load_run(run_dir, dev)
    if nifti_case is not None:
        image, _mask, affine = load_nifti_case(nifti_case)
        name = str(nifti_case)
    else:
        image, _mask = load_volume(data_dir, int(volume_id))
        affine = None
        name = f"volume {volume_id} of {data_dir}"
    if image.shape[0] != config.in_channels:
        raise ValueError(f"{name}: {image.shape[0]} channels, the run's model expects {config.in_channels}")
    image_c, _, entry = prepare_volume(image, None, cache_hw=config.cache_hw, margin=config.cache_margin)
    prob = predict_volume(model, image_c, config, dev, tta=tta, amp=amp, progress=progress)
    full = uncrop(prob.cpu().numpy(), entry, fill=0.0)
    labels = labels_from_probabilities(full, config.threshold)
    return save_segmentation_nifti(labels, out, affine)
