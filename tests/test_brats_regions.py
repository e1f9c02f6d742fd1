"""Decoding region outputs (WT, TC, ET sigmoids) into BraTS labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorlib.core.brats import labels_to_regions
from tumorlib.core.regions import Decoder, regions_to_labels


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with
def decode_regions(prob, threshold=0.5):
    return Decoder("regions", threshold).labels(prob)


def _labels():
    lab = np.zeros((6, 8, 8), np.uint8)
    lab[1:5, 1:7, 1:7] = 2
    lab[2:4, 2:6, 2:6] = 1
    lab[2:4, 3:5, 3:5] = 4
    return lab


def test_round_trip_with_labels_to_regions():
    lab = _labels()
    assert (regions_to_labels(labels_to_regions(lab)) == lab).all()
    assert regions_to_labels(labels_to_regions(lab)).dtype == np.uint8


def test_rule_et_ncr_ed():
    wt = np.array([[[1, 1, 1, 0]]], bool)
    tc = np.array([[[0, 1, 1, 0]]], bool)
    et = np.array([[[0, 0, 1, 0]]], bool)
    assert regions_to_labels(np.stack([wt, tc, et])).ravel().tolist() == [2, 1, 4, 0]


def test_inner_region_outside_outer_keeps_inner_label():
    wt = np.array([[[0, 0, 0]]], bool)
    tc = np.array([[[1, 0, 1]]], bool)
    et = np.array([[[0, 1, 1]]], bool)
    assert regions_to_labels(np.stack([wt, tc, et])).ravel().tolist() == [1, 4, 4]


def test_decode_regions_threshold_numpy_and_torch():
    p = np.zeros((3, 1, 1, 4), np.float32)
    p[0] = [[[0.9, 0.9, 0.9, 0.5]]]  # 0.5 is not above the threshold
    p[1] = [[[0.1, 0.8, 0.8, 0.4]]]
    p[2] = [[[0.2, 0.3, 0.7, 0.4]]]
    want = [2, 1, 4, 0]
    assert decode_regions(p).ravel().tolist() == want
    assert decode_regions(torch.from_numpy(p).half()).ravel().tolist() == want
    assert decode_regions(p, threshold=0.75).ravel().tolist() == [2, 1, 1, 0]


def test_bad_shapes():
    with pytest.raises(ValueError, match="wt, tc, et"):
        decode_regions(np.zeros((4, 2, 2, 2)))
    with pytest.raises(ValueError, match="wt, tc, et"):
        regions_to_labels(np.zeros((2, 2, 2, 2)))
