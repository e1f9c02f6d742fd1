"""Tests for tumorlib.nn.losses: hand-computed cases, empty patches, MONAI as an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from tumorlib.core.config import get_config
from tumorlib.nn.losses import (
    DiceFocalLoss,
    FocalBCELoss,
    WeightedDiceLoss,
    focal_bce_loss,
    loss_from_config,
    soft_dice_per_class,
    weighted_dice_loss,
)

BIG = 30.0  # sigmoid(30) == 1 in float32


def _hard(target: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid is exactly the binary map."""
    return (target.float() * 2 - 1) * BIG


def test_soft_dice_hand_computed():
    # one class, 4x4x4: target is a 2x2x2 block (8 voxels); the hard prediction is another 2x2x2 block
    # beside it (no overlap) plus half of the target block (4 voxels): |p| = 12, |g| = 8, overlap 4
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, :2, :2, :2] = 1
    pred = torch.zeros(1, 1, 4, 4, 4)
    pred[0, 0, :2, :2, 2:] = 1
    pred[0, 0, :1, :2, :2] = 1
    dice = soft_dice_per_class(_hard(pred), target, smooth=0.0)
    assert dice.item() == pytest.approx(2 * 4 / (12 + 8))
    dice_s = soft_dice_per_class(_hard(pred), target, smooth=1.0)
    assert dice_s.item() == pytest.approx((2 * 4 + 1) / (12 + 8 + 1))


def test_soft_dice_with_half_probabilities():
    # logits 0 -> p = 0.5 everywhere; 2x1x2x2x2 target with 3 ones in class 0, none in class 1
    target = torch.zeros(2, 2, 2, 2, 2)
    target[0, 0, 0, 0, :] = 1
    target[1, 0, 1, 1, 1] = 1
    dice = soft_dice_per_class(torch.zeros(2, 2, 2, 2, 2), target, smooth=1.0)
    # class 0: 2 * (0.5 * 3) + 1 over (0.5 * 16 + 3 + 1); class 1: 1 / (8 + 1)
    assert dice.tolist() == pytest.approx([4 / 12, 1 / 9])


def test_weighted_dice_weights_classes():
    target = torch.zeros(1, 3, 2, 2, 2)
    target[:, 0] = 1
    target[:, 1] = 1
    target[:, 2, 0] = 1
    logits = _hard(target)
    logits[:, 2] = -BIG  # class 2 entirely missed: dice 2*0/(0+4) = 0
    loss = weighted_dice_loss(logits, target, (1.5, 1.0, 2.0), smooth=0.0)
    assert loss.item() == pytest.approx(2.0 / 4.5)
    assert WeightedDiceLoss((1.5, 1.0, 2.0), smooth=0.0)(logits, target).item() == pytest.approx(2.0 / 4.5)
    assert weighted_dice_loss(logits, target, (1, 1, 0), smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0, 3.0]).view(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 2, 2)
    values = []
    for x, t in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        pt = p if t else 1 - p
        values.append((1 - pt) ** 2 * -math.log(pt))
    assert focal_bce_loss(logits, target, 2.0).item() == pytest.approx(sum(values) / 4, rel=1e-6)
    assert FocalBCELoss(2.0)(logits, target).item() == pytest.approx(sum(values) / 4, rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert focal_bce_loss(logits, target, 0.0).item() == pytest.approx(bce.item())


def test_perfect_prediction_gives_near_zero_losses():
    torch.manual_seed(0)
    target = (torch.rand(2, 3, 4, 8, 8) > 0.7).float()
    logits = _hard(target)
    assert weighted_dice_loss(logits, target, (1.5, 1.0, 2.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert focal_bce_loss(logits, target).item() == pytest.approx(0.0, abs=1e-12)


def test_combined_is_weighted_sum():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 8, 8)
    target = (torch.rand(2, 3, 4, 8, 8) > 0.8).float()
    d = WeightedDiceLoss((1.5, 1.0, 2.0))(logits, target)
    f = FocalBCELoss(2.0)(logits, target)
    assert DiceFocalLoss()(logits, target).item() == pytest.approx(0.5 * d.item() + 0.5 * f.item())
    assert DiceFocalLoss(dice_weight=0.2)(logits, target).item() == pytest.approx(0.2 * d.item() + 0.8 * f.item())
    cfg = get_config("full")
    loss = loss_from_config(cfg)
    assert loss.dice_weight == 0.5 and loss.focal.gamma == 2.0 and loss.dice.class_weights == (1.5, 1.0, 2.0)


def test_empty_patch_finite_loss_and_gradients():
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    target = torch.zeros(2, 3, 8, 8, 8)
    loss = DiceFocalLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the gradient pushes every logit down (towards "no tumour")
    assert (logits.grad > 0).all()


def test_extreme_logits_stay_finite():
    logits = torch.tensor([-1e4, 1e4, -200.0, 200.0]).view(1, 1, 1, 2, 2).requires_grad_()
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 2, 2)
    loss = DiceFocalLoss((1.0,))(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_half_precision_logits_give_float32_loss():
    logits = torch.randn(1, 3, 4, 4, 4).to(torch.bfloat16)
    target = (torch.rand(1, 3, 4, 4, 4) > 0.5).to(torch.uint8)
    assert DiceFocalLoss()(logits, target).dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        focal_bce_loss(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="class weights"):
        weighted_dice_loss(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2), (1.0, 1.0))
    with pytest.raises(ValueError, match="gamma"):
        FocalBCELoss(-1.0)
    with pytest.raises(ValueError, match="dice_weight"):
        DiceFocalLoss(dice_weight=1.5)


def test_matches_monai_on_random_inputs():
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(2)
    for _ in range(3):
        logits = torch.randn(2, 3, 6, 10, 8) * 3
        target = (torch.rand(2, 3, 6, 10, 8) > 0.7).float()
        ref = monai_losses.DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")
        per_class = ref(logits, target).flatten()
        assert torch.allclose(1 - soft_dice_per_class(logits, target, 1.0), per_class, atol=1e-6)
        w = torch.tensor([1.5, 1.0, 2.0])
        expected = (per_class * w).sum() / w.sum()
        assert weighted_dice_loss(logits, target, w.tolist()).item() == pytest.approx(expected.item(), rel=1e-5)
        focal = monai_losses.FocalLoss(gamma=2.0, use_softmax=False)(logits, target)
        assert focal_bce_loss(logits, target, 2.0).item() == pytest.approx(focal.item(), rel=1e-5)
