"""The small-ET rule (nnU-Net), threshold scaling and tuning, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from tumorlib.inference.postprocess import (
    ET_GRID_AT_FULL_SIZE,
    et_threshold_grid,
    remove_small_et,
    scaled_min_voxels,
    tune_et_min_voxels,
)


def _case(et_voxels, edema=True, shape=(10, 10, 10)):
    lab = np.zeros(shape, np.uint8)
    if edema:
        lab[1:9, 1:9, 1:9] = 2
    lab.reshape(-1)[:et_voxels] = 4
    return lab


def test_small_et_becomes_necrosis():
    lab = _case(5)
    out = remove_small_et(lab, 6)
    assert not (out == 4).any() and (out == 1).sum() == 5
    assert ((out == 2) == (lab == 2)).all()
    assert (lab == 4).sum() == 5  # the input is not changed


def test_threshold_is_strict_and_zero_is_off():
    lab = _case(5)
    assert (remove_small_et(lab, 5) == 4).sum() == 5  # 5 voxels are not fewer than 5
    assert (remove_small_et(lab, 0) == lab).all()
    assert (remove_small_et(_case(0), 100) == _case(0)).all()


def test_rule_counts_the_total_not_each_component():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0, 0, 0:3] = 4
    lab[9, 9, 0:3] = 4  # two pieces of 3: 6 in total
    assert (remove_small_et(lab, 5) == 4).sum() == 6
    assert (remove_small_et(lab, 7) == 1).sum() == 6


def test_bad_threshold():
    with pytest.raises(ValueError, match="min_voxels"):
        remove_small_et(_case(1), -1)
    with pytest.raises(ValueError, match="min_voxels"):
        remove_small_et(_case(1), 2.5)


def test_scaling_by_voxel_count():
    assert scaled_min_voxels(200, (155, 240, 240)) == 200
    assert scaled_min_voxels(200, (78, 120, 120)) == round(200 * 78 * 120 * 120 / (155 * 240 * 240))  # 25
    assert scaled_min_voxels(0, (10, 10, 10)) == 0
    with pytest.raises(ValueError, match="shape"):
        scaled_min_voxels(10, (10, 10))
    with pytest.raises(ValueError):
        scaled_min_voxels(-1, (10, 10, 10))


def test_grid():
    assert et_threshold_grid() == ET_GRID_AT_FULL_SIZE == tuple(range(0, 751, 10))
    small = et_threshold_grid((78, 120, 120))
    assert small[0] == 0 and small[-1] == scaled_min_voxels(750, (78, 120, 120)) == 94
    assert list(small) == sorted(set(small))


def test_tune_picks_the_best_mean_et_dice():
    preds = [_case(20), _case(3), _case(12)]  # a right 20-voxel ET; a 3-voxel and a 12-voxel false ET
    refs = [_case(20), _case(0), _case(0)]
    best, table = tune_et_min_voxels(preds, refs, [0, 4, 9, 13, 25])
    assert [row["et_min_voxels"] for row in table] == [0, 4, 9, 13, 25]
    means = [row["mean_dice_et"] for row in table]
    # 0: only case 1 right; 4 and 9: the 3-voxel ET removed; 13: both false ones; 25: the true one too
    assert means == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0, 2 / 3])
    assert [row["cases_relabelled"] for row in table] == [0, 1, 1, 2, 3]
    assert best == 13


def test_tune_ties_go_to_the_smallest_threshold():
    preds, refs = [_case(8)], [_case(8)]
    best, table = tune_et_min_voxels(preds, refs, [30, 0, 5])
    assert best == 0 and [r["mean_dice_et"] for r in table] == [0.0, 1.0, 1.0]
    best, _ = tune_et_min_voxels([_case(0)], [_case(0)], [10, 20, 0])
    assert best == 0  # every threshold scores 1: the smallest wins


def test_tune_errors():
    with pytest.raises(ValueError, match="no cases"):
        tune_et_min_voxels([], [], [0])
    with pytest.raises(ValueError, match="references"):
        tune_et_min_voxels([_case(1)], [], [0])
    with pytest.raises(ValueError, match="case 0"):
        tune_et_min_voxels([_case(1)], [_case(1, shape=(9, 10, 10))], [0])
    with pytest.raises(ValueError, match="grid"):
        tune_et_min_voxels([_case(1)], [_case(1)], [])
