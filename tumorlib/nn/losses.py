"""Training losses: class-weighted soft Dice, focal binary cross-entropy, and their weighted sum.

The three output channels (necrosis/NET, edema, enhancing) are independent sigmoids, so every loss here
works per channel on logits of shape (B, C, D, H, W) against binary targets of the same shape.

- Soft Dice optimises overlap directly and is insensitive to the class imbalance (tumour is under 1 %
  of the voxels); the seed weights the classes (1.5, 1.0, 2.0) to favour the small enhancing and
  necrotic regions.
- Focal BCE (gamma 2) gives a dense per-voxel gradient and down-weights the many easy background voxels.
- The seed trains on ``0.5 * Dice + 0.5 * focal`` (``Config.dice_weight``).

The batches carry the cached class channels (ncr, ed, et). With ``Config.targets == "regions"`` the loss
compares the outputs with the regions WT, TC, ET of those channels instead
(``tumorlib.core.regions.loss_targets``, on the batch's device); ``class_weights`` weight the three output
channels in order either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tumorlib.core.config import Config
from tumorlib.core.regions import loss_targets, targets_of

__all__ = [
    "DiceFocalLoss",
    "FocalBCELoss",
    "WeightedDiceLoss",
    "focal_bce_loss",
    "loss_from_config",
    "soft_dice_per_class",
    "weighted_dice_loss",
]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape or logits.ndim < 3:
        raise ValueError(f"logits and target need the same shape (B, C, ...), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")


def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of each class, pooled over the batch and all voxels.

    ``dice_c = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)`` with ``p = sigmoid(logits)``; the
    sums run over the batch and the spatial axes, so a patch without tumour does not produce 0/0.

    Args:
        logits: (B, C, D, H, W) float logits.
        target: (B, C, D, H, W) binary target (any dtype; cast to the logits' float type).
        smooth: added to numerator and denominator; keeps an empty class finite and pulls its
            predictions towards 0.

    Returns:
        (C,) float32 soft Dice per class.

    Raises:
        ValueError: shapes differ or have fewer than 3 axes.
    """
    _check(logits, target)
    prob = torch.sigmoid(logits.float())
    target = target.float()
    dims = [0] + list(range(2, logits.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (2.0 * inter + smooth) / (denom + smooth)


def weighted_dice_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: Sequence[float],
                       smooth: float = 1.0) -> torch.Tensor:
    """``sum_c w_c (1 - dice_c) / sum_c w_c`` (see ``soft_dice_per_class``).

    Args:
        logits: (B, C, D, H, W) float logits.
        target: (B, C, D, H, W) binary target.
        class_weights: C non-negative weights, not all zero.
        smooth: see ``soft_dice_per_class``.

    Returns:
        Scalar float32 loss in [0, 1].

    Raises:
        ValueError: wrong number of weights, or shapes that differ.
    """
    dice = soft_dice_per_class(logits, target, smooth)
    w = torch.as_tensor(class_weights, dtype=dice.dtype, device=dice.device)
    if w.shape != dice.shape:
        raise ValueError(f"{len(w)} class weights for {dice.numel()} classes")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class weights must be non-negative and not all zero, got {list(class_weights)}")
    return ((1.0 - dice) * w).sum() / w.sum()


def focal_bce_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal binary cross-entropy ``(1 - p_t) ** gamma * BCE``, computed stably from logits.

    ``p_t`` is the predicted probability of the true label (``p`` where the target is 1, ``1 - p``
    where it is 0); gamma 0 gives plain BCE.

    Args:
        logits: (B, C, D, H, W) float logits.
        target: (B, C, D, H, W) binary target.
        gamma: focusing exponent, >= 0.

    Returns:
        Scalar float32 loss, the mean over every element.

    Raises:
        ValueError: shapes differ or gamma < 0.
    """
    _check(logits, target)
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma == 0:
        return bce.mean()
    # 1 - p_t = sigmoid(-x) where target is 1, sigmoid(x) where target is 0: sigmoid(x * (1 - 2t))
    one_minus_pt = torch.sigmoid(logits * (1.0 - 2.0 * target))
    return (one_minus_pt.pow(gamma) * bce).mean()


class WeightedDiceLoss(nn.Module):
    """Class-weighted soft Dice loss on sigmoid probabilities (module form of ``weighted_dice_loss``).

    Args:
        class_weights: one weight per class (seed: 1.5 necrosis/NET, 1.0 edema, 2.0 enhancing).
        smooth: see ``soft_dice_per_class``.
    """

    def __init__(self, class_weights: Sequence[float] = (1.5, 1.0, 2.0), smooth: float = 1.0) -> None:
        super().__init__()
        self.class_weights = tuple(float(w) for w in class_weights)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: (B, C, D, H, W) -> scalar loss."""
        return weighted_dice_loss(logits, target, self.class_weights, self.smooth)


class FocalBCELoss(nn.Module):
    """Focal binary cross-entropy (module form of ``focal_bce_loss``).

    Args:
        gamma: focusing exponent (seed: 2.0).
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: (B, C, D, H, W) -> scalar loss."""
        return focal_bce_loss(logits, target, self.gamma)


class DiceFocalLoss(nn.Module):
    """``dice_weight * WeightedDice + (1 - dice_weight) * FocalBCE`` (seed: 0.5 / 0.5).

    Args:
        class_weights: Dice class weights.
        gamma: focal exponent.
        dice_weight: share of the Dice term in [0, 1].
        smooth: Dice smoothing.
        targets: ``classes`` (the target is the class channels as given) or ``regions`` (the class channels
            given are turned into WT, TC, ET first: ``tumorlib.core.regions.loss_targets``).

    Raises:
        ValueError: ``dice_weight`` outside [0, 1], or unknown ``targets``.
    """

    def __init__(self, class_weights: Sequence[float] = (1.5, 1.0, 2.0), gamma: float = 2.0,
                 dice_weight: float = 0.5, smooth: float = 1.0, targets: str = "classes") -> None:
        super().__init__()
        self.targets = targets_of(targets)
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must lie in [0, 1], got {dice_weight}")
        self.dice = WeightedDiceLoss(class_weights, smooth)
        self.focal = FocalBCELoss(gamma)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: (B, C, D, H, W) (target: class channels) -> scalar loss."""
        target = loss_targets(target, self.targets)
        return self.dice_weight * self.dice(logits, target) + (1.0 - self.dice_weight) * self.focal(logits, target)


def loss_from_config(config: Config) -> DiceFocalLoss:
    """The training loss a config describes (``class_weights``, ``focal_gamma``, ``dice_weight``, ``targets``)."""
    return DiceFocalLoss(config.class_weights, config.focal_gamma, config.dice_weight, targets=config.targets)
