"""Per-case QC rows: volumes in mL, 26-connected lesion counts and every flag, by hand cases."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from tumorlib.core.brats import labels_to_channels
from tumorlib.evaluation.qc import (
    QC_COLUMNS,
    count_lesions,
    qc_row,
    region_volumes_ml,
    touches_border,
    volume_range,
    write_qc_csv,
)


def _case():
    """(10, 10, 10) labels: a 2x2x2 ET block inside a 4x4x4 edema block, and one necrosis voxel apart."""
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[3:7, 3:7, 3:7] = 2
    labels[4:6, 4:6, 4:6] = 4
    labels[8, 8, 8] = 1
    return labels


def test_region_volumes_from_spacing():
    volumes = region_volumes_ml(_case(), (2.0, 1.0, 1.0))  # 2 uL voxels
    assert volumes == pytest.approx({"wt": 65 * 0.002, "tc": 9 * 0.002, "et": 8 * 0.002})
    assert region_volumes_ml(labels_to_channels(_case()), (1, 1, 1))["wt"] == pytest.approx(0.065)
    with pytest.raises(ValueError, match="spacing"):
        region_volumes_ml(_case(), (1.0, 0.0, 1.0))


def test_lesions_use_26_connectivity():
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours: one lesion under 26-connectivity
    assert count_lesions(mask) == 1
    mask[3, 3, 3] = True
    assert count_lesions(mask) == 2
    assert count_lesions(mask, min_voxels=2) == 1
    assert count_lesions(np.zeros((2, 2, 2))) == 0


def test_touches_border():
    mask = np.zeros((6, 6, 6), bool)
    mask[2:4, 2:4, 2:4] = True
    assert not touches_border(mask)
    assert touches_border(mask, ((2, 6), (0, 6), (0, 6)))  # the box's first slice holds tumour
    assert not touches_border(mask, ((1, 5), (1, 5), (1, 5)))
    mask[0, 3, 3] = True
    assert touches_border(mask)
    with pytest.raises(ValueError, match="crop box"):
        touches_border(mask, ((0, 7), (0, 6), (0, 6)))


def test_volume_range_rule():
    assert volume_range([1, 2, 3]) is None  # too few cases
    low, high = volume_range(np.linspace(10, 110, 101))
    assert low == pytest.approx(11 / 2) and high == pytest.approx(2 * 109)


def test_qc_row_hand_case():
    row = qc_row(_case(), (1.0, 1.0, 1.0), case=7)
    assert list(row) == list(QC_COLUMNS)
    assert row["case"] == 7
    assert row["volume_wt_ml"] == pytest.approx(0.065) and row["volume_et_ml"] == pytest.approx(0.008)
    assert (row["lesions_wt"], row["lesions_tc"], row["lesions_et"]) == (2, 2, 1)
    assert math.isnan(row["mean_entropy_tumour"]) and math.isnan(row["uncertain_fraction"])
    assert row["flags"] == "" and not any(row[f"flag_{f}"] for f in ("empty_et", "touches_border", "uncertain"))
    assert row["volume_range_wt"] == ""
    # small lesions left out of the count: the single necrosis voxel is 0.001 mL
    assert qc_row(_case(), (1, 1, 1), min_lesion_ml=0.002)["lesions_tc"] == 1


def test_qc_row_flags():
    labels = _case()
    labels[labels == 4] = 0
    entropy = np.zeros(labels.shape, np.float32)
    entropy[3:7, 3:7, 3:7] = 0.9  # the whole 4x4x4 block is uncertain; 56 of its voxels are edema
    train = {"wt": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "et": [0.0] * 6}
    row = qc_row(labels, (1, 1, 1), uncertainty=entropy, train_volumes_ml=train, crop_box=((3, 9), (0, 10), (0, 10)))
    assert row["flag_empty_et"] and not row["flag_empty_tumour"]
    assert row["flag_touches_border"]  # edema starts on the box's first slice
    assert row["uncertain_fraction"] == pytest.approx(64 / 65)  # the block (ET hole included) of block + 1 ncr
    assert row["mean_entropy_tumour"] == pytest.approx(0.9 * 56 / 57, rel=1e-5)
    assert row["flag_uncertain"]
    assert row["flag_volume_outlier"]  # 0.057 mL WT is far below half of p1 (~0.5 mL)
    assert row["flags"] == "empty_et;touches_border;uncertain;volume_outlier"
    assert row["volume_range_et"] == "0.000-0.000" and row["volume_range_tc"] == ""
    summary = {"mean_entropy_tumour": 0.1, "uncertain_fraction": 0.1}
    calm = qc_row(_case(), (1, 1, 1), uncertainty=summary, train_volumes_ml=[0.03, 0.05, 0.06, 0.07, 0.1])
    assert calm["flags"] == "" and calm["uncertain_fraction"] == 0.1
    empty = qc_row(np.zeros((4, 4, 4), np.uint8), (1, 1, 1))
    assert empty["flags"] == "empty_tumour;empty_et"
    with pytest.raises(ValueError, match="unknown regions"):
        qc_row(_case(), (1, 1, 1), train_volumes_ml={"whole": [1.0] * 5})
    with pytest.raises(ValueError, match="BraTS labels"):
        qc_row(np.zeros((4, 4)), (1, 1, 1))


def test_write_qc_csv(tmp_path):
    rows = [qc_row(_case(), (1, 1, 1), case=1), qc_row(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), case=2)]
    path = write_qc_csv(rows, tmp_path / "qc.csv")
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["case"] for r in read] == ["1", "2"] and list(read[0]) == list(QC_COLUMNS)
    assert read[1]["flags"] == "empty_tumour;empty_et"
