"""Region outputs to BraTS labels: the decoding rule for networks trained on WT, TC and ET.

The other half of the label authority ``tumorlib.core.brats`` (which decodes the three class outputs; it
holds the labels, classes and regions used here and stays under the module size limit without this).
A network trained on the overlapping regions (three sigmoids WT, TC, ET, as nnU-Net and MONAI train for
BraTS) is decoded by ``decode_regions``: each region where its probability is above the threshold, then
ET = ET, NCR = TC minus ET, ED = WT minus TC (``regions_to_labels``). An inner region outside its outer
one keeps the inner label (nnU-Net's order: ET over TC over WT), so ``regions_to_labels`` inverts
``tumorlib.core.brats.labels_to_regions``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorlib.core.brats import BRATS_LABELS, CLASS_KEYS, REGION_KEYS

__all__ = ["decode_regions", "regions_to_labels"]

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
