"""Expected calibration error and reliability curves: a hand case and MONAI's CalibrationErrorMetric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorlib.core.brats import channels_to_regions, tumour_probability
from tumorlib.evaluation.calibration import (
    CalibrationMetric,
    bin_statistics,
    expected_calibration_error,
    region_probabilities,
    reliability_curve,
)


def test_hand_computed_ece():
    # bins of width 0.5: {0.1, 0.2, 0.3} -> bin 0, {0.8, 0.9} -> bin 1
    prob = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    target = np.array([0, 1, 0, 1, 1])
    curve = reliability_curve(prob, target, bins=2)
    np.testing.assert_allclose(curve["counts"], [3, 2])
    np.testing.assert_allclose(curve["confidence"], [0.2, 0.85])
    np.testing.assert_allclose(curve["accuracy"], [1 / 3, 1.0])
    np.testing.assert_allclose(curve["centres"], [0.25, 0.75], atol=1e-6)
    expected = (3 * abs(1 / 3 - 0.2) + 2 * abs(1.0 - 0.85)) / 5
    assert curve["ece"] == pytest.approx(expected)
    # empty bins are NaN in the curve and do not count
    curve = reliability_curve(np.array([0.95, 0.95]), np.array([1, 1]), bins=15)
    assert np.isnan(curve["accuracy"][:-1]).all() and curve["counts"][-1] == 2
    assert curve["ece"] == pytest.approx(0.05)
    # perfectly calibrated, certain predictions: 0; nothing scored: NaN
    assert reliability_curve(np.array([0.0, 1.0]), np.array([0, 1]))["ece"] == 0.0
    assert math.isnan(reliability_curve(np.zeros(3), np.zeros(3), mask=np.zeros(3, bool))["ece"])


def test_bin_edges_follow_monai():
    from monai.metrics import calibration_binning

    prob = torch.tensor([0.0, 1 / 15, 2 / 15, 0.5, 14 / 15, 1.0, 0.999, 1e-7])
    target = torch.tensor([0, 1, 0, 1, 1, 1, 0, 0])
    counts, sum_p, sum_y = bin_statistics(prob.numpy(), target.numpy(), bins=15)
    _, _, ref_counts = calibration_binning(prob[None, None], target[None, None], num_bins=15)
    np.testing.assert_array_equal(counts, ref_counts[0, 0].numpy())


def test_region_probabilities_are_the_decoders_unions():
    rng = np.random.default_rng(1)
    p = rng.random((3, 3, 4, 5)).astype(np.float32)
    wt, tc, et = region_probabilities(p)
    np.testing.assert_allclose(wt, tumour_probability(p), atol=1e-6)
    np.testing.assert_allclose(tc, 1 - (1 - p[0]) * (1 - p[2]), atol=1e-6)
    np.testing.assert_allclose(et, p[2], atol=1e-6)


@pytest.mark.parametrize("bins", [15, 7])
def test_matches_monai_calibration_error_metric(bins):
    from monai.metrics import CalibrationErrorMetric

    rng = np.random.default_rng(2)
    cases = []
    for _ in range(3):
        prob = rng.random((3, 6, 7, 8)).astype(np.float32) ** 3
        gt = (rng.random((3, 6, 7, 8)) < prob + 0.1).astype(np.uint8)
        cases.append((prob, gt))
    ours = CalibrationMetric(bins=bins)
    monai = CalibrationErrorMetric(num_bins=bins, calibration_reduction="expected", metric_reduction="mean_batch")
    regions = []
    for prob, gt in cases:
        case = ours.update(prob, gt)
        rp = torch.from_numpy(region_probabilities(prob))[None]
        from tumorlib.core.brats import channels_to_regions

        ry = torch.from_numpy(channels_to_regions(gt).astype(np.float32))[None]
        monai(rp, ry)
        regions.append((rp, ry))
        single = CalibrationErrorMetric(num_bins=bins, metric_reduction="none")
        single(rp, ry)
        np.testing.assert_allclose(list(case.values()), single.aggregate()[0].numpy(), rtol=1e-4, atol=1e-6)
        assert case == pytest.approx(expected_calibration_error(prob, gt, bins=bins))
    mean = ours.aggregate("mean")
    assert list(mean) == ["wt", "tc", "et"]
    np.testing.assert_allclose(list(mean.values()), monai.aggregate().numpy(), rtol=1e-4, atol=1e-6)
    # pooled: MONAI on all voxels of all cases at once (one long "case")
    pooled = CalibrationErrorMetric(num_bins=bins, metric_reduction="none")
    pooled(torch.cat([r[0].flatten(2) for r in regions], 2)[..., None],
           torch.cat([r[1].flatten(2) for r in regions], 2)[..., None])
    np.testing.assert_allclose(list(ours.aggregate("pooled").values()), pooled.aggregate()[0].numpy(),
                               rtol=1e-4, atol=1e-6)


def test_metric_reset_mask_and_errors():
    metric = CalibrationMetric()
    assert all(math.isnan(v) for v in metric.aggregate().values())
    prob = np.zeros((3, 2, 2, 2), np.float32)
    gt = np.zeros((3, 2, 2, 2), np.uint8)
    gt[2, 0, 0, 0] = 1
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, :] = True  # two voxels: one ET positive at p = 0
    assert metric.update(prob, gt, mask=mask)["et"] == pytest.approx(0.5)
    assert len(metric) == 1 and metric.reliability("et")["counts"].sum() == 2
    metric.reset()
    assert len(metric) == 0
    with pytest.raises(ValueError, match="reduction"):
        metric.aggregate("median")
    with pytest.raises(ValueError, match="differ"):
        expected_calibration_error(prob, gt[:, :1])
    with pytest.raises(ValueError, match="bins"):
        CalibrationMetric(bins=0)
    with pytest.raises(KeyError, match="region"):
        metric.reliability("wt")


def test_reliability_and_dice_uncertainty_figures():
    import pandas as pd

    from tumorlib.evaluation.calibration import CalibrationMetric
    from tumorlib.viz.confidence import dice_uncertainty_correlation, plot_dice_vs_uncertainty, plot_reliability

    rng = np.random.default_rng(0)
    metric = CalibrationMetric()
    prob = rng.random((3, 6, 8, 8)).astype(np.float32)
    metric.update(prob, (rng.random((3, 6, 8, 8)) < prob).astype(np.uint8))
    fig = plot_reliability({r: metric.reliability(r) for r in ("wt", "tc", "et")})
    assert len(fig.axes) == 2 and "ECE" in fig.axes[0].get_legend().get_texts()[1].get_text()
    frame = pd.DataFrame({"volume": [1, 2, 3, 4], "dice_wt": [0.9, 0.8, 0.5, 0.2], "dice_tc": [0.5] * 4,
                          "dice_et": [0.1, 0.2, 0.5, np.nan], "mean_entropy_tumour": [0.1, 0.2, 0.5, 0.9]})
    assert dice_uncertainty_correlation(frame, "wt") == pytest.approx(np.corrcoef([0.1, 0.2, 0.5, 0.9],
                                                                                   [0.9, 0.8, 0.5, 0.2])[0, 1])
    assert np.isnan(dice_uncertainty_correlation(frame, "tc"))  # constant Dice
    assert dice_uncertainty_correlation(frame, "et") == pytest.approx(1.0)  # NaN row dropped, 3 left
    fig = plot_dice_vs_uncertainty(frame)
    assert "r = -" in fig.axes[0].get_legend().get_texts()[0].get_text()
