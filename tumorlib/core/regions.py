"""A network's three outputs: what they are (``targets``), the one decoder, and what the loss compares with.

What the three sigmoid outputs mean is the config field ``targets`` (``TARGETS``): ``classes`` (necrosis,
edema, enhancing) or ``regions`` (WT, TC, ET, as nnU-Net and MONAI train for BraTS). ``Decoder`` is the one
object that turns them into a segmentation (nnU-Net's label manager), one rule per kind:

- classes: tumour where the union probability passes the threshold, then the most probable class (the rule
  of ``tumorlib.core.brats``' module text; ties follow ``CLASS_PRECEDENCE``);
- regions: each region where its probability passes the threshold, then ET = ET, NCR = TC minus ET,
  ED = WT minus TC (``regions_to_labels``); an inner region outside its outer one keeps the inner label
  (nnU-Net's order: ET over TC over WT), so ``regions_to_labels`` inverts ``labels_to_regions``.

``Decoder.of(config)`` picks the run's rule; every consumer (evaluate, predict, the report, the viewer's
predictions, training-time validation through ``Decoder.batch``) decodes through it, as class codes,
BraTS labels, class channels or a torch batch. ``loss_targets`` turns the cached class channels into what
the loss compares with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tumorlib.core.brats import (
    BRATS_LABELS,
    CLASS_KEYS,
    CLASS_PRECEDENCE,
    REGION_KEYS,
    channels_to_regions,
    tumour_probability,
)

__all__ = [
    "COMPONENT_STRUCTURE",
    "TARGETS",
    "Decoder",
    "loss_targets",
    "output_keys",
    "regions_to_labels",
    "targets_of",
]

#: The neighbourhood of a connected component (a lesion) wherever tumorlib counts or removes them:
#: 26-connectivity, as the BraTS 2023 lesion-wise metrics.
COMPONENT_STRUCTURE = np.ones((3, 3, 3), bool)

#: What the network's three sigmoid outputs are (config field ``targets``): the classes ncr, ed, et
#: (disjoint), or the BraTS regions wt, tc, et (nested).
TARGETS: tuple[str, ...] = ("classes", "regions")

_NCR, _ED, _ET = (BRATS_LABELS[CLASS_KEYS.index(k)] for k in ("ncr", "ed", "et"))
_PRECEDENCE_IDX = tuple(CLASS_KEYS.index(k) for k in CLASS_PRECEDENCE)
_LABEL_OF_CLASS = np.array((0, *BRATS_LABELS), np.uint8)  # class code 0..3 -> BraTS label
#: class code (0 background, k + 1 for class k) of each region's inside, innermost last: ED, NCR, ET
_REGION_CODES = tuple(CLASS_KEYS.index(k) + 1 for k in ("ed", "ncr", "et"))


def _as_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def regions_to_labels(regions: Any) -> np.ndarray:
    """BraTS labels from binary region masks: ET = ET, NCR = TC minus ET, ED = WT minus TC.

    Args:
        regions: (3, D, H, W) binary regions WT, TC, ET (non-zero = inside), numpy or torch.

    Returns:
        (D, H, W) uint8 labels in {0, 1, 2, 4}; an inner region outside its outer one keeps the inner
        label (ET over TC over WT).

    Raises:
        ValueError: not 3 region channels.
    """
    on = _as_numpy(regions) != 0
    if on.ndim < 2 or on.shape[0] != len(REGION_KEYS):
        raise ValueError(f"regions must be (3, D, H, W) ({', '.join(REGION_KEYS)}), got shape {on.shape}")
    wt, tc, et = on
    out = np.zeros(on.shape[1:], np.uint8)
    out[wt] = _ED
    out[tc] = _NCR
    out[et] = _ET
    return out


def targets_of(config_or_targets: Any) -> str:
    """The target kind of a config (its ``targets``; ``classes`` for an object without one) or a name.

    Args:
        config_or_targets: a ``tumorlib.core.config.Config`` (or anything with ``targets``) or one of
            ``TARGETS``.

    Returns:
        ``"classes"`` or ``"regions"``.

    Raises:
        ValueError: a name outside ``TARGETS``.
    """
    targets = config_or_targets if isinstance(config_or_targets, str) else getattr(
        config_or_targets, "targets", "classes")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    return targets


def output_keys(config_or_targets: Any) -> tuple[str, ...]:
    """The keys of the three outputs in order: ``("ncr", "ed", "et")`` or ``("wt", "tc", "et")``."""
    return CLASS_KEYS if targets_of(config_or_targets) == "classes" else REGION_KEYS


@dataclass(frozen=True)
class Decoder:
    """The one decoding rule of a network's three sigmoid outputs (see the module text).

    Attributes:
        targets: ``"classes"`` or ``"regions"`` (what the outputs are).
        threshold: tumour (classes: the union probability) or each region strictly above it.
    """

    targets: str = "classes"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        targets_of(self.targets)  # an unknown kind is refused here, once

    @classmethod
    def of(cls, config_or_targets: Any, threshold: float | None = None) -> Decoder:
        """The rule of a run's config (its ``targets`` and ``threshold``) or of a ``targets`` name.

        Raises:
            ValueError: unknown targets.
        """
        if threshold is None:
            threshold = getattr(config_or_targets, "threshold", 0.5)
        return cls(targets_of(config_or_targets), float(threshold))

    def classes(self, prob: Any) -> np.ndarray:
        """Class codes: (3, D, H, W) probabilities (numpy or torch) -> (D, H, W) uint8 0 background, k + 1
        for class k (ncr, ed, et).

        Raises:
            ValueError: ``prob`` is not (3, D, H, W).
        """
        p = _as_numpy(prob)
        if p.ndim != 4 or p.shape[0] != 3:
            raise ValueError(f"prob must be (3, D, H, W) ({', '.join(output_keys(self.targets))}), got shape {p.shape}")
        p = p.astype(np.float32, copy=False)
        if self.targets == "regions":
            out = np.zeros(p.shape[1:], np.uint8)
            for region, code in zip(p > self.threshold, _REGION_CODES):  # WT, TC, ET: the inner one wins
                out[region] = code
            return out
        tumour = tumour_probability(p) > self.threshold
        best = np.asarray(_PRECEDENCE_IDX, np.uint8)[np.argmax(p[list(_PRECEDENCE_IDX)], axis=0)]  # first max
        return np.where(tumour, best + 1, 0).astype(np.uint8)

    def labels(self, prob: Any) -> np.ndarray:
        """BraTS labels: (D, H, W) uint8 in {0, 1, 2, 4} (what ``predict`` writes)."""
        return _LABEL_OF_CLASS[self.classes(prob)]

    def channels(self, prob: Any) -> np.ndarray:
        """Disjoint class channels: (3, D, H, W) uint8 (ncr, ed, et), the form the metrics score."""
        classes = self.classes(prob)
        return np.stack([classes == k + 1 for k in range(len(CLASS_KEYS))]).astype(np.uint8)

    def batch(self, prob: Any) -> Any:
        """``channels`` of a torch batch, on its device (training-time validation).

        Args:
            prob: (B, 3, d, h, w) sigmoid probabilities, a torch tensor.

        Returns:
            (B, 3, d, h, w) bool tensor.

        Raises:
            ValueError: ``prob`` is not (B, 3, ...).
        """
        import torch  # core stays importable without torch for the numpy rules

        if prob.ndim < 3 or prob.shape[1] != 3:
            raise ValueError(f"prob must be (B, 3, ...) ({', '.join(output_keys(self.targets))}), "
                             f"got shape {tuple(prob.shape)}")
        p = prob.float()
        if self.targets == "regions":
            wt, tc, et = (p > self.threshold).unbind(1)
            return torch.stack([tc & ~et, wt & ~tc & ~et, et], dim=1)
        tumour = (1.0 - torch.prod(1.0 - p.clamp(0.0, 1.0), dim=1)) > self.threshold
        order = torch.tensor(_PRECEDENCE_IDX, device=p.device)
        best = order[torch.argmax(p.index_select(1, order), dim=1)]  # the first maximum: CLASS_PRECEDENCE
        classes = torch.arange(len(CLASS_KEYS), device=p.device).view(1, -1, *([1] * (p.ndim - 2)))
        return (best.unsqueeze(1) == classes) & tumour.unsqueeze(1)


def loss_targets(mask: Any, config_or_targets: Any) -> Any:
    """What the loss compares the outputs with: the class channels as they are, or their regions.

    Args:
        mask: (B, 3, ...) or (3, ...) class channels (ncr, ed, et), numpy or torch (any device).
        config_or_targets: the run's config or its ``targets``.

    Returns:
        ``mask`` itself for ``classes``; for ``regions`` the channels WT (any class), TC (ncr or et) and
        ET (``tumorlib.core.brats.channels_to_regions``) in ``mask``'s dtype, library and device.
    """
    if targets_of(config_or_targets) == "classes":
        return mask
    regions = channels_to_regions(mask)
    return regions.to(mask.dtype) if hasattr(regions, "to") else regions.astype(np.asarray(mask).dtype)
