"""Segmentation metrics as BraTS reports them: Dice and HD95 per class and per region (WT, TC, ET).

The definitions follow MONAI, the reference implementation in this field, and the tests compare with it:

- ``dice`` equals ``monai.metrics.DiceMetric(include_background=True, ignore_empty=False)``:
  2 |P ∩ T| / (|P| + |T|) per channel, 1 when both masks are empty and 0 when exactly one is.
- ``hd95`` equals ``monai.metrics.HausdorffDistanceMetric(percentile=95)`` on non-empty masks: the
  surface of a mask is its voxels that a 6-connected binary erosion removes; for each surface voxel of
  one mask, the Euclidean distance (in ``spacing`` units) to the nearest surface voxel of the other;
  the larger of the two directed 95th percentiles (linear interpolation, as ``torch.quantile``).
  Empty masks follow the BraTS challenge: both empty -> 0, exactly one empty -> 373.13 (the diagonal of
  the 240 x 240 x 155 BraTS volume in mm).

Masks are channel-first binary arrays: ``(C, D, H, W)`` (any number of spatial axes works); a voxel
is foreground when its value is non-zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from tumorlib.core.brats import channels_to_regions

__all__ = [
    "BRATS_EMPTY_HD95",
    "METRIC_COLUMNS",
    "brats_scores",
    "dice",
    "hd95",
    "surface_voxels",
]

#: HD95 when exactly one of prediction and ground truth is empty (BraTS convention, mm).
BRATS_EMPTY_HD95 = 373.13
#: The metric columns of ``brats_scores`` (and of ``tumorlib evaluate``'s CSV, after ``volume``).
METRIC_COLUMNS = ("dice_ncr", "dice_ed", "dice_et", "dice_wt", "dice_tc", "hd95_wt", "hd95_tc", "hd95_et")

ArrayLike = np.ndarray | torch.Tensor


def _as_bool_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x if x.dtype == torch.bool else x != 0
    else:  # numpy (possibly a read-only memory map): compare first, which also copies
        a = np.asarray(x)
        t = torch.from_numpy(a.copy() if a.dtype == bool else a != 0)
    if t.ndim < 2:
        raise ValueError(f"{name} must be channel-first (C, ...spatial), got shape {tuple(t.shape)}")
    return t


def _as_bool_array(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim < 2:
        raise ValueError(f"{name} must be channel-first (C, ...spatial), got shape {a.shape}")
    return a if a.dtype == bool else a != 0


def dice(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Per-channel Dice coefficient of binary masks.

    Args:
        pred: (C, D, H, W) binary prediction (bool, integer or float; non-zero = foreground), numpy or
            torch (any device).
        target: (C, D, H, W) binary ground truth, same shape.

    Returns:
        (C,) float64: 2 |P ∩ T| / (|P| + |T|); 1.0 where both are empty, 0.0 where exactly one is.

    Raises:
        ValueError: the shapes differ or there is no channel axis.
    """
    p = _as_bool_tensor(pred, "pred")
    t = _as_bool_tensor(target, "target").to(p.device)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    p, t = p.flatten(1), t.flatten(1)
    inter = (p & t).sum(1, dtype=torch.float64)
    total = p.sum(1, dtype=torch.float64) + t.sum(1, dtype=torch.float64)
    out = torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))
    return out.cpu().numpy()


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The surface of a binary mask: voxels removed by one 6-connected (cross) binary erosion.

    Voxels on the array border count as surface (the outside is background), as in MONAI's
    ``get_mask_edges``.

    Args:
        mask: (D, H, W) bool (any number of axes).

    Returns:
        Bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_percentile(dist_to_b: np.ndarray, surf_a: np.ndarray, percentile: float) -> float:
    # torch.quantile in MONAI and np.percentile both interpolate linearly
    return float(np.percentile(dist_to_b[surf_a], percentile))


def _hd_channel(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...], percentile: float,
                empty_value: float) -> float:
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if p_any != t_any:
        return float(empty_value)
    # crop to the union's bounding box plus one voxel: every surface voxel lies inside, so the
    # distance transforms inside the box are exact and much cheaper than on the whole volume
    coords = np.nonzero(p | t)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    p, t = p[box], t[box]
    surf_p, surf_t = surface_voxels(p), surface_voxels(t)
    dist_to_t = ndimage.distance_transform_edt(~surf_t, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return max(_directed_percentile(dist_to_t, surf_p, percentile),
               _directed_percentile(dist_to_p, surf_t, percentile))


def hd95(pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] = (1.0, 1.0, 1.0),
         percentile: float = 95.0, empty_value: float = BRATS_EMPTY_HD95) -> np.ndarray:
    """Per-channel 95th-percentile symmetric Hausdorff distance between mask surfaces.

    Args:
        pred: (C, D, H, W) binary prediction (non-zero = foreground), numpy or torch.
        target: (C, D, H, W) binary ground truth, same shape.
        spacing: voxel size along (D, H, W), e.g. mm; one entry per spatial axis.
        percentile: which percentile of the directed surface distances (95 for HD95, 100 for the
            plain Hausdorff distance).
        empty_value: the value when exactly one mask of a channel is empty (BraTS: 373.13).

    Returns:
        (C,) float64 distances in ``spacing`` units; 0 where both masks of a channel are empty.

    Raises:
        ValueError: the shapes differ, or ``spacing`` does not have one entry per spatial axis.
    """
    p = _as_bool_array(pred, "pred")
    t = _as_bool_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != p.ndim - 1:
        raise ValueError(f"spacing {spacing} needs one entry per spatial axis of shape {p.shape[1:]}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return np.array([_hd_channel(p[c], t[c], spacing, percentile, empty_value)
                     for c in range(p.shape[0])], dtype=np.float64)


def brats_scores(pred: ArrayLike, target: ArrayLike,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Dice per class and region and HD95 per region for one volume.

    Args:
        pred: (3, D, H, W) binary class channels (necrosis/NET, edema, enhancing).
        target: (3, D, H, W) binary ground truth, same layout.
        spacing: voxel size along (D, H, W) in mm.

    Returns:
        ``{name: value}`` for the names in ``METRIC_COLUMNS``: dice_ncr, dice_ed, dice_et, dice_wt,
        dice_tc, hd95_wt, hd95_tc, hd95_et.
    """
    d_cls = dice(pred, target)
    pred_r, target_r = channels_to_regions(pred), channels_to_regions(target)
    d_reg = dice(pred_r, target_r)
    h_reg = hd95(pred_r, target_r, spacing)
    values = [*d_cls, d_reg[0], d_reg[1], *h_reg]
    return {name: float(v) for name, v in zip(METRIC_COLUMNS, values)}
