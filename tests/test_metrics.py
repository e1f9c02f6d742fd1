"""Dice, HD95 and BraTS regions: hand-computed cases, then agreement with MONAI on random blobs."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from tumorlib.core.brats import channels_to_regions as brats_regions
from tumorlib.evaluation.metrics import (
    BRATS_EMPTY_HD95,
    METRIC_COLUMNS,
    brats_scores,
    dice,
    hd95,
    surface_voxels,
)


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int = 3) -> np.ndarray:
    """A union of n random balls (radius 1.5-5 voxels), some of which may touch the border."""
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(n):
        centre = rng.integers(0, shape)
        radius = rng.uniform(1.5, 5.0)
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        mask |= dist2 <= radius**2
    return mask


# --------------------------------------------------------------------------- dice

def test_dice_hand_computed():
    pred = np.zeros((1, 4, 4, 4), bool)
    target = np.zeros((1, 4, 4, 4), bool)
    pred[0, :2, :2, :2] = True  # 8 voxels
    target[0, 1:3, :2, :2] = True  # 8 voxels, 4 shared
    assert dice(pred, target) == pytest.approx([2 * 4 / 16])


def test_dice_empty_conventions():
    pred = np.zeros((3, 4, 4, 4), np.uint8)
    target = np.zeros((3, 4, 4, 4), np.uint8)
    pred[1, 0, 0, 0] = 1  # channel 1: target empty, prediction not
    target[2, 0, 0, 0] = 1  # channel 2: prediction empty, target not
    np.testing.assert_array_equal(dice(pred, target), [1.0, 0.0, 0.0])


def test_dice_accepts_tensors_and_floats():
    rng = np.random.default_rng(1)
    p = rng.random((3, 6, 7, 8)) > 0.5
    t = rng.random((3, 6, 7, 8)) > 0.5
    expected = dice(p, t)
    np.testing.assert_allclose(dice(torch.from_numpy(p).float(), torch.from_numpy(t)), expected)
    np.testing.assert_allclose(dice(p.astype(np.uint8), t.astype(np.float32)), expected)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(p, t[:, :-1])


def test_dice_matches_monai():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    for _ in range(5):
        p = np.stack([_blobs(rng, (12, 17, 15)) for _ in range(3)])
        t = np.stack([_blobs(rng, (12, 17, 15)) for _ in range(3)])
        p[2] = False  # one empty channel: MONAI gives 0 here too
        ref = DiceMetric(include_background=True, ignore_empty=False)(
            torch.from_numpy(p[None]).float(), torch.from_numpy(t[None]).float())[0].numpy()
        np.testing.assert_allclose(dice(p, t), ref, atol=1e-6)


# --------------------------------------------------------------------------- hd95

def test_surface_of_a_cube_is_its_shell():
    mask = np.zeros((7, 7, 7), bool)
    mask[1:6, 1:6, 1:6] = True
    surf = surface_voxels(mask)
    assert surf.sum() == 5**3 - 3**3
    assert not surf[2:5, 2:5, 2:5].any()
    # on the array border the outside counts as background
    assert surface_voxels(np.ones((3, 3, 3), bool)).sum() == 26


def test_hd95_single_voxels_and_spacing():
    pred = np.zeros((1, 5, 6, 7), bool)
    target = np.zeros((1, 5, 6, 7), bool)
    pred[0, 1, 1, 1] = True
    target[0, 4, 1, 1] = True  # 3 voxels apart along D
    assert hd95(pred, target) == pytest.approx([3.0])
    assert hd95(pred, target, spacing=(2.0, 1.0, 1.0)) == pytest.approx([6.0])
    target[0, 4, 1, 1] = False
    target[0, 1, 4, 5] = True  # (0, 3, 4) voxels apart
    assert hd95(pred, target, spacing=(1.0, 1.0, 0.5)) == pytest.approx([np.hypot(3.0, 2.0)])


def test_hd95_percentile_vs_max():
    # target: one voxel; prediction: that voxel and an outlier 10 voxels away. The directed
    # distances from the prediction are [0, 10]: the max is 10, the 95th percentile 9.5.
    pred = np.zeros((1, 3, 3, 20), bool)
    target = np.zeros((1, 3, 3, 20), bool)
    target[0, 1, 1, 5] = True
    pred[0, 1, 1, 5] = True
    pred[0, 1, 1, 15] = True
    assert hd95(pred, target, percentile=100) == pytest.approx([10.0])
    assert hd95(pred, target) == pytest.approx([9.5])


def test_hd95_brats_empty_conventions():
    pred = np.zeros((3, 4, 4, 4), bool)
    target = np.zeros((3, 4, 4, 4), bool)
    pred[1, 1, 1, 1] = True
    target[2, 2, 2, 2] = True
    np.testing.assert_array_equal(hd95(pred, target), [0.0, BRATS_EMPTY_HD95, BRATS_EMPTY_HD95])
    with pytest.raises(ValueError, match="spacing"):
        hd95(pred, target, spacing=(1.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 1.3)])
def test_hd95_matches_monai(spacing):
    from monai.metrics import HausdorffDistanceMetric

    rng = np.random.default_rng(3)
    metric = HausdorffDistanceMetric(include_background=True, percentile=95)
    for _ in range(4):
        p = np.stack([_blobs(rng, (14, 22, 18)) for _ in range(3)])
        t = np.stack([_blobs(rng, (14, 22, 18)) for _ in range(3)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = metric(torch.from_numpy(p[None]).float(), torch.from_numpy(t[None]).float(),
                         spacing=spacing)[0].numpy()
        np.testing.assert_allclose(hd95(p, t, spacing), ref, rtol=0, atol=1e-4)
        np.testing.assert_allclose(hd95(torch.from_numpy(p), torch.from_numpy(t), spacing), ref, atol=1e-4)


def test_hd95_is_symmetric_and_zero_on_identity():
    rng = np.random.default_rng(4)
    p = np.stack([_blobs(rng, (10, 12, 14)) for _ in range(2)])
    t = np.stack([_blobs(rng, (10, 12, 14)) for _ in range(2)])
    np.testing.assert_allclose(hd95(p, t), hd95(t, p))
    np.testing.assert_array_equal(hd95(p, p), [0.0, 0.0])


def test_hd95_full_size_volume_is_fast():
    pred = np.zeros((3, 155, 240, 240), bool)
    pred[:, 40:100, 60:150, 70:160] = True
    target = np.roll(pred, 5, axis=2)
    start = time.perf_counter()
    out = hd95(pred, target)
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(out, [5.0, 5.0, 5.0])
    assert elapsed < 15.0, f"hd95 of three 155x240x240 channels took {elapsed:.1f} s"


# --------------------------------------------------------------------------- regions

def test_brats_regions_hand_computed():
    mask = np.zeros((3, 1, 1, 4), np.uint8)
    mask[0, 0, 0, 0] = 1  # necrosis
    mask[1, 0, 0, 1] = 1  # edema
    mask[2, 0, 0, 2] = 1  # enhancing; voxel 3 is background
    regions = brats_regions(mask)
    np.testing.assert_array_equal(regions[:, 0, 0], [[1, 1, 1, 0],   # WT
                                                     [1, 0, 1, 0],   # TC
                                                     [0, 0, 1, 0]])  # ET
    t = brats_regions(torch.from_numpy(mask)[None])  # batched tensor
    assert t.shape == (1, 3, 1, 1, 4) and t.dtype == torch.bool
    np.testing.assert_array_equal(t[0].numpy(), regions)
    with pytest.raises(ValueError, match="3 class channels"):
        brats_regions(np.zeros((2, 1, 1, 1)))


def test_brats_scores_columns_and_values():
    rng = np.random.default_rng(5)
    target = np.stack([_blobs(rng, (10, 12, 14)) for _ in range(3)]).astype(np.uint8)
    scores = brats_scores(target, target)
    assert tuple(scores) == METRIC_COLUMNS
    assert all(scores[k] == 1.0 for k in METRIC_COLUMNS if k.startswith("dice"))
    assert all(scores[k] == 0.0 for k in METRIC_COLUMNS if k.startswith("hd95"))
    empty = brats_scores(np.zeros_like(target), target)
    assert empty["dice_wt"] == 0.0 and empty["hd95_wt"] == BRATS_EMPTY_HD95
