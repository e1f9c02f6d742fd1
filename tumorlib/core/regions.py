"""Region outputs to BraTS labels: the decoding rule for networks trained on WT, TC and ET.

The other half of the label authority ``tumorlib.core.brats`` (which decodes the three class outputs; it
holds the labels, classes and regions used here and stays under the module size limit without this).
A network trained on the overlapping regions (three sigmoids WT, TC, ET, as nnU-Net and MONAI train for
BraTS) is decoded by ``decode_regions``: each region where its probability is above the threshold, then
ET = ET, NCR = TC minus ET, ED = WT minus TC (``regions_to_labels``). An inner region outside its outer
one keeps the inner label (nnU-Net's order: ET over TC over WT), so ``regions_to_labels`` inverts
``tumorlib.core.brats.labels_to_regions``.

What the three outputs mean is the config field ``targets`` (``TARGETS``): ``classes`` (necrosis, edema,
enhancing; decoded by ``tumorlib.core.brats.decode_probabilities``) or ``regions`` (WT, TC, ET; decoded by
``decode_regions``). ``decode_outputs`` is the one place that picks the rule: every consumer (evaluate,
predict, the report, the viewer, training-time validation through ``decode_outputs_batch``) calls it with
the run's config. ``loss_targets`` turns the cached class channels into what the loss compares with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorlib.core.brats import (
    BRATS_LABELS,
    CLASS_KEYS,
    REGION_KEYS,
    channels_to_regions,
    decode_batch,
    decode_probabilities,
    decode_to_channels,
    labels_to_channels,
)

__all__ = [
    "COMPONENT_STRUCTURE",
    "TARGETS",
    "decode_outputs",
    "decode_outputs_batch",
    "decode_outputs_to_channels",
    "decode_regions",
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


def decode_regions(prob: Any, threshold: float = 0.5) -> np.ndarray:
    """The decoding rule of region outputs: BraTS labels from the WT, TC, ET sigmoids.

    Args:
        prob: (3, D, H, W) sigmoid probabilities (wt, tc, et), numpy or torch.
        threshold: each region where its probability is strictly above it.

    Returns:
        (D, H, W) uint8 labels in {0, 1, 2, 4} (see ``regions_to_labels``).

    Raises:
        ValueError: ``prob`` is not (3, D, H, W).
    """
    p = _as_numpy(prob)
    if p.ndim != 4 or p.shape[0] != len(REGION_KEYS):
        raise ValueError(f"prob must be (3, D, H, W) ({', '.join(REGION_KEYS)}), got shape {p.shape}")
    return regions_to_labels(p.astype(np.float32, copy=False) > threshold)


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


def decode_outputs(prob: Any, config_or_targets: Any, threshold: float = 0.5) -> np.ndarray:
    """The decoding rule of a run: BraTS labels from its three sigmoid outputs.

    Args:
        prob: (3, D, H, W) sigmoid probabilities, numpy or torch, in the order ``output_keys`` gives.
        config_or_targets: the run's config or its ``targets`` (see ``targets_of``).
        threshold: ``classes``: tumour where the union probability is strictly above it
            (``tumorlib.core.brats.decode_probabilities``); ``regions``: each region where its
            probability is strictly above it (``decode_regions``).

    Returns:
        (D, H, W) uint8 labels in {0, 1, 2, 4}.

    Raises:
        ValueError: ``prob`` is not (3, D, H, W), or unknown targets.
    """
    if targets_of(config_or_targets) == "classes":
        return decode_probabilities(prob, threshold)
    return decode_regions(prob, threshold)


def decode_outputs_to_channels(prob: Any, config_or_targets: Any, threshold: float = 0.5) -> np.ndarray:
    """``decode_outputs`` as (3, D, H, W) uint8 disjoint class channels (ncr, ed, et), the form scored."""
    if targets_of(config_or_targets) == "classes":
        return decode_to_channels(prob, threshold)
    return labels_to_channels(decode_regions(prob, threshold))


def decode_outputs_batch(prob: Any, config_or_targets: Any, threshold: float = 0.5) -> Any:
    """``decode_outputs`` on a torch batch, on its device (training-time validation).

    Args:
        prob: (B, 3, d, h, w) sigmoid probabilities, a torch tensor.
        config_or_targets: the run's config or its ``targets``.
        threshold: as for ``decode_outputs``.

    Returns:
        (B, 3, d, h, w) bool tensor: the disjoint class channels (ncr, ed, et) of the decoded labels.

    Raises:
        ValueError: ``prob`` is not (B, 3, ...), or unknown targets.
    """
    import torch

    if targets_of(config_or_targets) == "classes":
        return decode_batch(prob, threshold)
    if prob.ndim < 3 or prob.shape[1] != len(REGION_KEYS):
        raise ValueError(f"prob must be (B, 3, ...) (wt, tc, et), got shape {tuple(prob.shape)}")
    wt, tc, et = (prob.float() > threshold).unbind(1)
    return torch.stack([tc & ~et, wt & ~tc & ~et, et], dim=1)


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
