"""Scoring one predicted volume: the one path from a cached volume to its scores.

``score_volumes`` predicts whole cached volumes (``tumorlib.inference.predictor.predict_volume``), decodes them by
``tumorlib.core.regions.Decoder`` (the run's ``targets``) at its threshold, applies the small-ET
rule when asked (``predicted_channels``) and scores them with ``volume_scores`` (the legacy BraTS 2020 metrics and the BraTS 2023
lesion-wise ones). ``evaluate`` writes these rows, training selects its model by ``volume_dice`` (the same scores),
and ``tune-postprocessing`` reads ``predicted_channels`` before the rule.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from tumorlib.core.brats import REGION_KEYS, channels_to_labels
from tumorlib.core.regions import Decoder
from tumorlib.core.config import Config
from tumorlib.evaluation.confidence import confidence_scores
from tumorlib.evaluation.lesions import LESION_COLUMNS, lesion_scores
from tumorlib.evaluation.metrics import METRIC_COLUMNS, brats_scores
from tumorlib.inference.engines import Engine
from tumorlib.inference.postprocess import PostProcessing
from tumorlib.inference.predictor import inference_engine
from tumorlib.inference.uncertainty import predict_with_uncertainty

__all__ = ["RAW_COLUMNS", "REMOVED_COLUMNS", "Predicted", "predicted_channels", "score_volumes", "volume_dice",
           "volume_scores"]


class Predicted(NamedTuple):
    """One cached volume as ``evaluate`` scores it (``predicted_channels``)."""

    #: (3, D, H, W) class channels of the decoded (and post-processed) prediction, in the scoring frame
    pred: np.ndarray
    #: (3, D, H, W) ground-truth class channels in the scoring frame (the cache's, or the source's when resampled)
    target: np.ndarray
    #: voxel size (mm) of the scoring frame
    spacing: tuple[float, ...]
    #: (C, D, H, W) normalised image in the cache's frame
    image: np.ndarray
    #: (3, D, H, W) sigmoid probabilities in the cache's frame
    prob: torch.Tensor
    #: (3, D, H, W) ground-truth class channels in the cache's frame
    mask: np.ndarray
    #: (3, D, H, W) class channels of the decoded prediction before post-processing (``pred`` without a rule)
    raw: np.ndarray
    #: per region, the components the post-processing rule removed
    components_removed: dict[str, int]
    #: ``uncertainty_maps`` of the flip members in the cache's frame (None unless asked)
    maps: dict[str, Any] | None = None
    #: seconds spent on the uncertainty's passes beyond those that gave ``prob``
    extra_seconds: float = 0.0


#: The scores of the labels before post-processing, beside the post-processed ones: ``raw_<column>``.
RAW_COLUMNS: tuple[str, ...] = tuple(f"raw_{c}" for c in (*METRIC_COLUMNS, *LESION_COLUMNS))
#: Components the post-processing rule removed per region (``tumorlib.inference.postprocess``).
REMOVED_COLUMNS: tuple[str, ...] = tuple(f"components_removed_{r}" for r in REGION_KEYS)


def volume_scores(pred: Any, target: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  lesions: bool = True, raw: Any = None,
                  components_removed: dict[str, int] | None = None) -> dict[str, float]:
    """The scores of one volume: the legacy ``METRIC_COLUMNS`` and the lesion-wise ``LESION_COLUMNS``.

    Args:
        pred: (3, D, H, W) binary class channels (ncr, ed, et) of the prediction.
        target: (3, D, H, W) binary class channels of the ground truth.
        spacing: voxel size (mm) along the three axes.
        lesions: also compute the BraTS 2023 lesion-wise Dice and HD95 (``tumorlib.evaluation.lesions``),
            and the ``RAW_COLUMNS`` and ``REMOVED_COLUMNS``.
        raw: (3, D, H, W) class channels before post-processing; None: ``pred`` is unprocessed (the raw
            columns repeat its scores).
        components_removed: per region, the components the rule removed (None: 0 each).

    Returns:
        ``{column: value}``; the lesion-wise, raw and removed columns only when ``lesions``.
    """
    def scores_of(channels: Any) -> dict[str, float]:
        found = brats_scores(channels, target, spacing)
        if lesions:
            found_lesions = lesion_scores(channels_to_labels(channels), channels_to_labels(target), spacing)
            found.update({name: found_lesions[name] for name in LESION_COLUMNS})
        return found

    scores = scores_of(pred)
    if lesions:
        raw_scores = scores if raw is None else scores_of(raw)
        scores.update({f"raw_{name}": value for name, value in list(raw_scores.items())})
        removed = components_removed or {}
        scores.update({f"components_removed_{r}": int(removed.get(r, 0)) for r in REGION_KEYS})
    return scores


def score_volumes(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike,
                  volume_ids: Sequence[int], device: torch.device, tta: bool = False, amp: bool = True,
                  index: dict[str, Any] | None = None, progress: bool = False,
                  desc: str = "score", lesions: bool = True, postprocessing: PostProcessing | None = None,
                  engine: str | Engine = "torch", uncertainty: bool = False,
                  on_volume: Callable[[int, Predicted], None] | None = None) -> list[dict[str, float]]:
    """Predict whole cached volumes and score the decoded labels: the one scoring path of ``evaluate``
    and of whole-volume model selection during training.

    Each volume is predicted with the sliding window (``predict_volume``), decoded by
    ``tumorlib.core.regions.Decoder`` (the run's ``targets``) at ``config.threshold`` (the
    labels ``predict`` writes) and
    scored with ``volume_scores`` (legacy and lesion-wise metrics). Dice and HD95 are computed in the cache's frame: the crop holds every
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
        lesions: add the lesion-wise ``LESION_COLUMNS`` (off for model selection, which reads the Dice only).
        postprocessing: the rule applied after decoding (``tumorlib.inference.postprocess``; None: none);
            the ``RAW_COLUMNS`` score the labels before it.
        engine: ``"torch"``, ``"openvino"``, ``"auto"`` or an ``Engine`` (built once for all volumes).
        uncertainty: add ``tumorlib.evaluation.confidence.UNCERTAINTY_COLUMNS`` from the 8 flip passes of
            each run (``predict_with_uncertainty``: without TTA the labels come from the same passes; in the
            cache's frame).
        on_volume: called with each volume's id and its ``Predicted`` (e.g. ``KeptPredictions``), so that
            figures and calibration reuse the prediction instead of predicting again.

    Returns:
        One dict per volume: ``volume``, the ``METRIC_COLUMNS``, the ``LESION_COLUMNS``, the ``RAW_COLUMNS``,
        the ``REMOVED_COLUMNS`` (those three with ``lesions``) and ``seconds``
        (reading, sliding window, sigmoid and decoding, without the metrics and without the uncertainty's
        extra passes), with ``uncertainty`` the uncertainty columns.

    Raises:
        CacheError: a resampled cache whose source cannot be reopened.
    """
    from tumorlib.core.progress import tqdm

    from tumorlib.data.cache import load_cache_index

    index = index if index is not None else load_cache_index(cache_dir)
    engine = inference_engine(model, config, engine, device, amp)
    rows = []
    for vid in tqdm(list(volume_ids), desc=desc, unit="vol", disable=not progress):
        start = time.perf_counter()
        done = predicted_channels(model, config, cache_dir, vid, device, index, tta=tta, amp=amp,
                                  postprocessing=postprocessing, engine=engine, uncertainty=uncertainty)
        seconds = time.perf_counter() - start - done.extra_seconds
        raw = done.raw if done.raw is not done.pred else None
        rows.append({"volume": int(vid), **volume_scores(done.pred, done.target, done.spacing, lesions=lesions,
                                                         raw=raw, components_removed=done.components_removed),
                     "seconds": seconds})
        if uncertainty:
            scored = (done.pred if done.pred.shape == done.mask.shape
                      else Decoder.of(config).channels(done.prob))
            rows[-1].update(confidence_scores(done.maps, config, done.prob, scored, done.mask))
        if on_volume is not None:
            on_volume(int(vid), done)
    return rows


def predicted_channels(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike, volume_id: int,
                       device: torch.device, index: dict[str, Any], tta: bool = False, amp: bool = True,
                       postprocessing: PostProcessing | None = None,
                       engine: str | Engine = "torch", uncertainty: bool = False) -> Predicted:
    """One cached volume predicted and decoded as ``evaluate`` scores it, with its ground truth.

    Args:
        model, config, cache_dir, device, tta, amp, engine: as for ``score_volumes``.
        volume_id: the volume.
        index: the cache index.
        postprocessing: the rule applied after decoding, in the scoring frame at its voxel size (None: none).
        uncertainty: also the flip members' ``uncertainty_maps`` (``predict_with_uncertainty``).

    Returns:
        ``Predicted(pred, target, spacing, image, prob, mask, raw, components_removed, maps, extra_seconds)``:
        the class channels of the prediction and of the ground truth (the cache's frame, or the source's for
        a resampled cache), the voxel size, the cache-frame image, probabilities and ground truth, the
        prediction before post-processing with the components the rule removed per region, and the
        uncertainty maps with the seconds their extra passes took.

    Raises:
        CacheError: a resampled cache whose source cannot be reopened.
    """
    from tumorlib.core.brats import labels_to_channels
    from tumorlib.data.cache import CacheError, load_cached_volume, open_source, uncrop

    entry = index["volumes"][str(volume_id)]
    try:
        source = open_source(index)
    except CacheError:
        source = None  # a cache from a custom reader: 1 mm voxels, scored in the cache frame only
    image, mask = load_cached_volume(cache_dir, volume_id, index=index, check=True)
    prob, maps, extra_seconds = predict_with_uncertainty(model, image, config, device, tta=tta, amp=amp,
                                                         engine=engine, uncertainty=uncertainty)
    resampled = not all(abs(z - 1.0) < 1e-9 for z in entry["zoom"])
    if resampled:
        if source is None:
            open_source(index)  # raises CacheError naming the reader
        pred = Decoder.of(config).channels(uncrop(prob.cpu().numpy(), entry, fill=0.0))
    else:
        pred = Decoder.of(config).channels(prob)
    spacing = tuple(source.spacing(volume_id)) if source is not None else (1.0, 1.0, 1.0)
    raw, removed = pred, {}
    if postprocessing is not None and postprocessing.active:
        done = postprocessing.apply_with_removed(channels_to_labels(pred), spacing)
        pred, removed = labels_to_channels(done.labels), done.components
    target = source.read(volume_id)[1] if resampled else np.asarray(mask)
    return Predicted(pred, target, spacing, np.asarray(image), prob, np.asarray(mask), raw, removed, maps,
                     extra_seconds)


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
        rows = score_volumes(model, config, cache_dir, volume_ids, device, amp=amp, lesions=False)
    finally:
        model.train(was_training)
    return float(np.mean([np.mean([r["dice_wt"], r["dice_tc"], r["dice_et"]]) for r in rows]))
