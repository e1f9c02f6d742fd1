"""How sure the model is, voxel by voxel: the members of flip test-time augmentation (and of an ensemble
of runs), their mean probability, the predictive entropy and the variance of the tumour probability.

Members. A member is one (3, D, H, W) map of sigmoid probabilities (ncr, ed, et), e.g. the prediction on
one of the 8 mirrorings of the image, mirrored back (``flip_members``), or one run's prediction. Members
are read one at a time, so a generator of 8 (or 8 x runs) full-size maps needs the memory of a few maps.

The categorical distribution. The network has three independent sigmoids, not a softmax, so the entropy
is defined on the four-way distribution ``q = (background, ncr, ed, et)`` built the way
``tumorlib.core.brats`` decodes:

    q_bg = prod_c (1 - p_c)                       # 1 - tumour_probability: the decoder's first step
    q_c  = (1 - q_bg) * p_c / sum_c' p_c'         # the tumour mass shared in proportion to p_c

so the tumour/background split is exactly the one ``tumorlib.core.regions.Decoder`` thresholds, and the most
probable tumour class is the one it picks. Where every ``p_c`` is 0, ``q = (1, 0, 0, 0)``.

For a run trained on regions (``targets = "regions"``: the members are WT, TC, ET probabilities) the
distribution follows the nesting the ``Decoder`` of ``regions`` decodes, each region inside the
one before it:

    q_bg  = 1 - p_wt
    q_ed  = p_wt (1 - p_tc)
    q_ncr = p_wt p_tc (1 - p_et)
    q_et  = p_wt p_tc p_et

so the tumour probability ``1 - q_bg`` is ``p_wt`` and each class is the chance of going that far in.

The maps (``uncertainty_maps``), over M members with distributions ``q_m`` and tumour probabilities
``t_m = 1 - q_bg,m``:

- ``mean``: (3, D, H, W) the mean of the members' sigmoid probabilities;
- ``entropy``: (D, H, W) predictive entropy ``H(mean_m q_m)``, divided by ``ln 4`` so it lies in [0, 1]
  (1: all four outcomes equally likely; ``normalise=False`` gives nats);
- ``mutual_information``: (D, H, W) ``H(mean q) - mean H(q_m)`` (same unit), the part of the entropy that
  comes from members disagreeing (0 when all members are equal);
- ``variance``: (D, H, W) the population variance (ddof 0) of ``t_m`` over the members.

Flip members mirror the whole volume and run the sliding window on each mirroring (8 passes, the cost
of ``tta=True``), so each member is a full prediction of its own. Their mean probability is close to,
not bit-equal with, what ``predict_volume(tta=True)`` returns (that mirrors each window and averages
logits before the sigmoid); labels should still come from ``predict``. Several runs: chain their members
(``ensemble_members``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from tumorlib.core.brats import CLASS_KEYS, tumour_probability
from tumorlib.core.regions import targets_of
from tumorlib.inference.predictor import inference_engine, predict_volume
from tumorlib.inference.sliding_window import FLIP_AXES, mirrored_predictions

__all__ = [
    "DEFAULT_UNCERTAIN_THRESHOLD",
    "categorical_distribution",
    "ensemble_members",
    "entropy",
    "flip_members",
    "model_members",
    "predict_with_uncertainty",
    "VolumePrediction",
    "uncertainty_maps",
    "uncertainty_summary",
    "volume_predictor",
]

#: A voxel is "uncertain" when its normalised entropy is above this (0.5: half the largest entropy).
DEFAULT_UNCERTAIN_THRESHOLD = 0.5


def _as_prob(member: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if isinstance(member, torch.Tensor):
        member = member.detach().float().cpu().numpy()
    p = np.asarray(member, dtype=np.float32)
    if p.ndim != 4 or p.shape[0] != len(CLASS_KEYS):
        raise ValueError(f"a member must be (3, D, H, W) probabilities (ncr, ed, et), got shape {p.shape}")
    if shape is not None and p.shape != shape:
        raise ValueError(f"members differ in shape: {p.shape} after {shape}")
    return np.clip(p, 0.0, 1.0)


def categorical_distribution(prob: Any, targets: Any = "classes") -> np.ndarray:
    """The four-way distribution (background, ncr, ed, et) of three sigmoid outputs (see the module text).

    Args:
        prob: (3, D, H, W) sigmoid probabilities, numpy or torch: ncr, ed, et, or wt, tc, et for regions.
        targets: what the outputs are: ``"classes"``, ``"regions"`` or a run's config.

    Returns:
        (4, D, H, W) float32, summing to 1 over the first axis.

    Raises:
        ValueError: ``prob`` is not (3, D, H, W), or unknown targets.
    """
    return _categorical(_as_prob(prob), targets_of(targets))


def _categorical(p: np.ndarray, targets: str = "classes") -> np.ndarray:
    """``categorical_distribution`` of a checked, clipped float32 (3, ...) array, filled in place."""
    q = np.zeros((len(CLASS_KEYS) + 1, *p.shape[1:]), np.float32)
    if targets == "regions":
        wt, tc, et = p
        np.subtract(1.0, wt, out=q[0])
        np.multiply(wt, 1.0 - tc, out=q[2])
        core = wt * tc
        np.multiply(core, 1.0 - et, out=q[1])
        np.multiply(core, et, out=q[3])
        return q
    tumour = tumour_probability(p)
    np.subtract(1.0, tumour, out=q[0])
    total = p.sum(axis=0)
    np.divide(p, total, out=q[1:], where=total > 0)
    q[1:] *= tumour
    return q


def entropy(q: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Shannon entropy over the first axis of a distribution.

    Args:
        q: (K, ...) probabilities summing to 1 over axis 0.
        normalise: divide by ``ln K`` so the result lies in [0, 1]; False: nats.

    Returns:
        (...) float32 entropy (``0 log 0 = 0``).
    """
    q = np.asarray(q, dtype=np.float32)
    log_q = np.log(q, out=np.zeros_like(q), where=q > 0)
    h = -np.einsum("k...,k...->...", q, log_q)
    if normalise:
        h /= np.float32(math.log(q.shape[0]))
    return np.maximum(h, 0.0).astype(np.float32)


def uncertainty_maps(members: Iterable[Any], normalise: bool = True,
                     targets: Any = "classes") -> dict[str, np.ndarray]:
    """Mean probability, predictive entropy, mutual information and tumour-probability variance.

    Args:
        members: one or more (3, D, H, W) sigmoid probability maps (ncr, ed, et), numpy or torch (a list
            or a generator: each is read once), e.g. ``flip_members(...)`` or several runs' predictions.
        normalise: entropies divided by ``ln 4`` (in [0, 1]); False: nats.
        targets: what the members' outputs are (``"classes"``, ``"regions"`` or the run's config): how
            their four-way distribution is built (see the module text).

    Returns:
        ``{"mean": (3, D, H, W), "entropy": (D, H, W), "mutual_information": (D, H, W),
        "variance": (D, H, W), "members": M}``, the maps float32 (see the module text).

    Raises:
        ValueError: no member, a member that is not (3, D, H, W), or members of different shapes.
    """
    targets = targets_of(targets)
    count, shape = 0, None
    sum_p = sum_q = sum_h = t_mean = t_m2 = None
    for member in members:
        p = _as_prob(member, shape)
        if shape is None:
            shape = p.shape
            sum_p = np.zeros(shape, np.float32)  # float32 sums: exact enough for hundreds of members
            sum_q = np.zeros((len(CLASS_KEYS) + 1, *shape[1:]), np.float32)
            sum_h, t_mean, t_m2 = (np.zeros(shape[1:], np.float32) for _ in range(3))
        q = _categorical(p, targets)
        count += 1
        sum_p += p
        sum_q += q
        sum_h += entropy(q, normalise)
        t = 1.0 - q[0]  # the tumour probability: core.brats.tumour_probability, or p_wt for regions
        delta = t - t_mean  # Welford: stable for many members
        t_mean += delta / count
        t_m2 += delta * (t - t_mean)
    if count == 0:
        raise ValueError("uncertainty_maps needs at least one member (3, D, H, W); got none")
    predictive = entropy(sum_q / count, normalise)
    return {
        "mean": (sum_p / count).astype(np.float32),
        "entropy": predictive,
        "mutual_information": np.maximum(predictive - sum_h / count, 0.0).astype(np.float32),
        "variance": np.maximum(t_m2 / count, 0.0).astype(np.float32),
        "members": count,
    }


def flip_members(predictor: Callable[[torch.Tensor], torch.Tensor], image: Any) -> Iterator[np.ndarray]:
    """The predictions on the 8 mirrorings of a volume, each mirrored back (flip TTA's members).

    Args:
        predictor: maps a (C, D, H, W) tensor to (3, D, H, W) sigmoid probabilities of the whole volume,
            e.g. ``volume_predictor(model, config)``.
        image: (C, D, H, W) normalised image, numpy or torch.

    Yields:
        8 (3, D, H, W) float32 numpy maps in the image's frame, one per ``FLIP_AXES`` entry (the
        unflipped prediction first); the flips are ``tumorlib.inference.sliding_window``'s.

    Raises:
        ValueError: ``image`` is not (C, D, H, W).
    """
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(x.shape)}")

    def batched(xb: torch.Tensor) -> torch.Tensor:
        return predictor(xb[0])[None]

    for member in mirrored_predictions(batched, x[None]):
        yield member[0].detach().cpu().numpy()


def ensemble_members(predictors: Iterable[Callable[[torch.Tensor], torch.Tensor]], image: Any,
                     flips: bool = True) -> Iterator[np.ndarray]:
    """The members of an ensemble of runs: each run's 8 flip members, or its one prediction.

    Args:
        predictors: one whole-volume predictor per run (see ``flip_members``).
        image: (C, D, H, W) normalised image.
        flips: yield each run's 8 flip members; False: each run's prediction on the image as it is.

    Yields:
        (3, D, H, W) float32 numpy maps, run by run.
    """
    for predictor in predictors:
        if flips:
            yield from flip_members(predictor, image)
        else:
            yield next(flip_members(predictor, image))  # the identity comes first


def volume_predictor(model: torch.nn.Module, config: Any, device: str | torch.device | None = None,
                     amp: bool = True, engine: Any = "torch") -> Callable[[torch.Tensor], torch.Tensor]:
    """A whole-volume predictor for ``flip_members``: sliding window without TTA, then the sigmoid.

    Args:
        model: the trained network.
        config: the run's config (sliding-window settings; see ``predict_volume``).
        device: where the windows run; None: the model's device.
        amp: autocast at the run's ``amp_dtype``; False: float32.
        engine: ``"torch"``, ``"openvino"``, ``"auto"`` or an ``Engine`` (see ``predict_volume``).

    Returns:
        ``predict(image) -> (3, D, H, W)`` float32 probabilities for a (C, D, H, W) tensor.
    """
    runner = inference_engine(model, config, engine, device, amp)  # built once for the 8 members

    def predict(image: torch.Tensor) -> torch.Tensor:
        return predict_volume(model, image, config, device=device, tta=False, amp=amp, engine=runner)

    return predict


def model_members(model: torch.nn.Module, config: Any, image: Any, device: str | torch.device | None = None,
                  amp: bool = True, engine: Any = "torch") -> Iterator[np.ndarray]:
    """The members of a run (its 8 flip members) or of an ensemble of runs (``load_runs``: 8 per run).

    Args:
        model: a trained network or a ``RunEnsemble``.
        config: the (first) run's config.
        image: (C, D, H, W) normalised image.
        device, amp, engine: see ``volume_predictor``; for an ensemble, ``engine`` may be the tuple of the
            members' engines (``inference_engine``).

    Yields:
        (3, D, H, W) float32 numpy maps.
    """
    members = getattr(model, "members", None)
    if members is None:
        yield from flip_members(volume_predictor(model, config, device, amp, engine), image)
        return
    engines = inference_engine(model, config, engine, device, amp)
    yield from ensemble_members([volume_predictor(m, config, device, amp, e) for m, e in zip(members, engines)],
                                image)


class VolumePrediction(NamedTuple):
    """One volume predicted once (``predict_with_uncertainty``)."""

    #: (3, D, H, W) float32 sigmoid probabilities the labels are decoded from, on the prediction's device
    prob: torch.Tensor
    #: ``uncertainty_maps`` of the flip members (None without uncertainty)
    maps: dict[str, Any] | None
    #: seconds spent on the uncertainty's passes beyond those that gave ``prob`` (0.0 without uncertainty)
    extra_seconds: float


def predict_with_uncertainty(model: torch.nn.Module, image: Any, config: Any,
                             device: str | torch.device | None = None, tta: bool = False, amp: bool = True,
                             engine: Any = "torch", uncertainty: bool = False,
                             progress: bool = False) -> VolumePrediction:
    """The one prediction of a volume: its probabilities and, from the same passes, its uncertainty maps.

    Without ``tta`` the probabilities are the flip members' identity pass (a run's first member; for an
    ensemble, the mean of each run's first member, as ``predict_volume`` averages them), bit-equal with
    ``predict_volume(tta=False)``: uncertainty costs the 8 flip passes, not 9. With ``tta`` the window-wise
    TTA prediction (logits of each window averaged over its 8 mirrorings) runs its own passes, since the
    members mirror the whole volume (see the module text).

    Args:
        model: the trained network or a ``RunEnsemble`` (``load_runs``).
        image: (C, D, H, W) normalised image, numpy or torch.
        config: the run's config (sliding window, ``targets``).
        device, amp, engine: see ``volume_predictor``.
        tta: window-wise flip TTA for the probabilities.
        uncertainty: also compute ``uncertainty_maps`` of the flip members (8 per run).
        progress: tqdm bar over the windows (without uncertainty).

    Returns:
        ``VolumePrediction(prob, maps, extra_seconds)``.

    Raises:
        ValueError: the image does not have ``config.in_channels`` channels.
    """
    if not uncertainty:
        prob = predict_volume(model, image, config, device, tta=tta, amp=amp, progress=progress, engine=engine)
        return VolumePrediction(prob, None, 0.0)
    if image.shape[0] != config.in_channels:
        raise ValueError(f"image has {image.shape[0]} channels, the model expects {config.in_channels} "
                         f"(shape {tuple(image.shape)})")
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, dtype=np.float32))
    prob = predict_volume(model, x, config, device, tta=True, amp=amp, engine=engine) if tta else None
    labelled = time.perf_counter()
    runs = len(getattr(model, "members", None) or (model,))
    identity: list[torch.Tensor] = []

    def members() -> Iterator[np.ndarray]:
        nonlocal labelled
        for i, member in enumerate(model_members(model, config, x.float(), device, amp, engine)):
            if prob is None and i % len(FLIP_AXES) == 0:  # each run's identity pass comes first
                identity.append(torch.from_numpy(member))
                if len(identity) == runs:
                    labelled = time.perf_counter()
            yield member

    maps = uncertainty_maps(members(), targets=config)
    extra = time.perf_counter() - labelled
    if prob is None:
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        prob = (identity[0] if runs == 1 else torch.stack(identity).mean(dim=0)).to(dev)
    return VolumePrediction(prob, maps, extra)


def uncertainty_summary(entropy_map: Any, labels: Any,
                        threshold: float = DEFAULT_UNCERTAIN_THRESHOLD) -> dict[str, float | int]:
    """Per-case numbers of an entropy map: how unsure the model is inside and around its tumour.

    Args:
        entropy_map: (D, H, W) normalised predictive entropy (``uncertainty_maps(...)["entropy"]``).
        labels: (D, H, W) predicted BraTS labels (0 background) or a bool tumour mask, same shape.
        threshold: a voxel is uncertain when its entropy is strictly above it.

    Returns:
        ``mean_entropy_tumour``: mean entropy over the predicted tumour (NaN when none is predicted);
        ``uncertain_fraction``: uncertain voxels / voxels that are predicted tumour or uncertain (0.0 when
        both are empty), in [0, 1]; ``uncertain_voxels``; ``tumour_voxels``.

    Raises:
        ValueError: the shapes differ.
    """
    h = np.asarray(entropy_map, dtype=np.float32)
    tumour = np.asarray(labels) != 0
    if h.shape != tumour.shape:
        raise ValueError(f"entropy map of shape {h.shape} and labels of shape {tumour.shape} differ")
    uncertain = h > threshold
    union = int(np.count_nonzero(uncertain | tumour))
    n_tumour = int(np.count_nonzero(tumour))
    n_uncertain = int(np.count_nonzero(uncertain))
    return {
        "mean_entropy_tumour": float(h[tumour].mean()) if n_tumour else float("nan"),
        "uncertain_fraction": n_uncertain / union if union else 0.0,
        "uncertain_voxels": n_uncertain,
        "tumour_voxels": n_tumour,
    }

