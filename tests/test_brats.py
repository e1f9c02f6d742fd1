"""tumorlib.core.brats: orders, conversions between channels, labels and regions, and the decoding rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tumorlib.core import brats
from tumorlib.core.brats import (
    BRATS_LABELS,
    CANONICAL_ORDER,
    KAGGLE_STORED_ORDER,
    channel_permutation,
    channels_to_labels,
    channels_to_regions,
    check_order,
    labels_to_channels,
    labels_to_regions,
    reorder_channels,
    tumour_probability,
)
from tumorlib.core.regions import Decoder


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with
def decode_probabilities(prob, threshold=0.5):
    return Decoder("classes", threshold).labels(prob)


def decode_to_channels(prob, threshold=0.5):
    return Decoder("classes", threshold).channels(prob)


def test_constants_agree_with_old_names():
    """Modules that still hold a BraTS name hold brats's own object, never a re-spelled copy (most
    callers now import the name from tumorlib.core.brats itself)."""
    from tumorlib.evaluation import metrics
    from tumorlib.inference import sliding_window as inference
    from tumorlib.io import kaggle, nifti
    from tumorlib.viz import colors

    assert CANONICAL_ORDER == ("t1", "t1ce", "t2", "flair") and brats.MODALITIES == ("T1", "T1ce", "T2", "FLAIR")
    assert KAGGLE_STORED_ORDER == ("flair", "t1", "t1ce", "t2")
    assert not {"MODALITIES", "CLASS_NAMES", "KAGGLE_STORED_ORDER"} & set(kaggle.__all__)
    assert not any(hasattr(metrics, n) for n in ("CLASS_NAMES", "REGION_NAMES", "brats_regions"))  # core.brats only
    assert not any(hasattr(inference, n) for n in ("BRATS_LABELS", "labels_from_probabilities", "labels_to_channels"))
    assert not hasattr(nifti, "NIFTI_MODALITIES") and not hasattr(nifti, "NIFTI_LABELS")
    assert not hasattr(colors, "CLASS_KEYS")


@pytest.mark.parametrize("order", list(itertools.permutations(CANONICAL_ORDER)))
def test_reorder_round_trip_every_order(order):
    image = np.arange(4 * 2 * 3 * 2, dtype=np.float32).reshape(4, 2, 3, 2)
    stored = reorder_channels(image, CANONICAL_ORDER, order)
    for c, name in enumerate(order):
        np.testing.assert_array_equal(stored[c], image[CANONICAL_ORDER.index(name)])
    np.testing.assert_array_equal(reorder_channels(stored, order), image)
    t = reorder_channels(torch.from_numpy(stored), [m.upper() for m in order])
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(image))


def test_order_errors_name_the_modality():
    assert check_order("FLAIR, T1, T1Gd, T2") == KAGGLE_STORED_ORDER
    assert channel_permutation(KAGGLE_STORED_ORDER) == (1, 2, 3, 0)
    with pytest.raises(ValueError, match="unknown modality 'dwi'"):
        check_order(("t1", "dwi", "t2", "flair"))
    with pytest.raises(ValueError, match="t2 given more than once"):
        check_order(("t1", "t2", "t2", "flair"))
    with pytest.raises(ValueError, match="t1ce missing"):
        check_order(("t1", "t2", "flair"))
    with pytest.raises(ValueError, match="3 channels on axis 0"):
        reorder_channels(np.zeros((3, 2, 2, 2)), KAGGLE_STORED_ORDER)


def test_labels_channels_regions_hand_case():
    labels = np.array([0, 1, 2, 4, 4, 0], np.uint8).reshape(1, 2, 3)
    ch = labels_to_channels(labels)
    assert ch.shape == (3, 1, 2, 3) and ch.sum(0).max() == 1
    np.testing.assert_array_equal(channels_to_labels(ch), labels)
    regions = labels_to_regions(labels).reshape(3, -1)
    np.testing.assert_array_equal(regions[0], [0, 1, 1, 1, 1, 0])  # WT
    np.testing.assert_array_equal(regions[1], [0, 1, 0, 1, 1, 0])  # TC
    np.testing.assert_array_equal(regions[2], [0, 0, 0, 1, 1, 0])  # ET
    batch = torch.from_numpy(np.stack([ch, ch]))
    assert torch.equal(channels_to_regions(batch)[1], torch.from_numpy(labels_to_regions(labels)))
    with pytest.raises(ValueError, match=r"\[3\]"):
        labels_to_channels(np.array([[[0, 3]]]))


def test_overlapping_channels_keep_the_inner_class():
    # none, ncr+ed, ncr+et, ed+et, all three
    on = np.array([[0, 1, 1, 0, 1], [0, 1, 0, 1, 1], [0, 0, 1, 1, 1]], np.uint8).reshape(3, 1, 1, 5)
    np.testing.assert_array_equal(channels_to_labels(on).ravel(), [0, 1, 4, 4, 4])
    np.testing.assert_array_equal(decode_probabilities(on.astype(np.float32)).ravel(), [0, 1, 4, 4, 4])


def test_decode_union_then_most_probable_class():
    # columns: background; one class over 0.5; two classes sharing 0.45 each (max 0.45 < 0.5 would
    # leave a hole, noisy-OR 0.6975 does not); most probable class wins over precedence; all low
    p = np.array([[0.1, 0.1, 0.00, 0.6, 0.2],
                  [0.1, 0.8, 0.45, 0.7, 0.2],
                  [0.1, 0.3, 0.45, 0.2, 0.2]], np.float32).reshape(3, 1, 1, 5)
    union = tumour_probability(p).ravel()
    np.testing.assert_allclose(union, [1 - 0.9 ** 3, 1 - 0.9 * 0.2 * 0.7, 1 - 0.55 ** 2,
                                       1 - 0.4 * 0.3 * 0.8, 1 - 0.8 ** 3], rtol=1e-6)
    np.testing.assert_array_equal(decode_probabilities(p).ravel(), [0, 2, 4, 2, 0])
    np.testing.assert_array_equal(decode_probabilities(torch.from_numpy(p), threshold=0.6).ravel(),
                                  [0, 2, 4, 2, 0])
    np.testing.assert_array_equal(decode_probabilities(p, threshold=0.7).ravel(), [0, 2, 0, 2, 0])
    with pytest.raises(ValueError, match=r"\(3, D, H, W\)"):
        decode_probabilities(np.zeros((2, 1, 1, 1)))


def test_decode_properties_on_random_probabilities():
    rng = np.random.default_rng(0)
    p = rng.random((3, 6, 7, 8)).astype(np.float32) ** 2
    labels = decode_probabilities(p, 0.5)
    ch = decode_to_channels(p, 0.5)
    assert ch.sum(0).max() == 1 and np.array_equal(channels_to_labels(ch), labels)
    # tumour exactly where the union passes; never fewer tumour voxels than "any channel passes"
    np.testing.assert_array_equal(labels > 0, tumour_probability(p) > 0.5)
    assert ((p > 0.5).any(0) <= (labels > 0)).all()
    # the class is the arg-max of the probabilities
    on = labels > 0
    np.testing.assert_array_equal(ch.argmax(0)[on], p.argmax(0)[on])


# --- label conventions of every release (tumorlib.core.label_conventions) ------------------------------

def _class_map():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4, size=(4, 5, 6)).astype(np.uint8)  # class codes 0..3


@pytest.mark.parametrize("name,written", [("brats2020", (1, 2, 4)), ("brats2021", (1, 2, 4)),
                                          ("brats2023", (1, 2, 3)), ("msd", (2, 1, 3))])
def test_each_convention_maps_to_the_classes_and_back(name, written):
    from tumorlib.core.brats import channels_to_labels, classes_to_labels, labels_to_channels
    from tumorlib.core.label_conventions import channels_to_convention, convention_to_channels, label_convention

    conv = label_convention(name)
    assert conv.written == written
    ref = labels_to_channels(classes_to_labels(_class_map()))
    labels = channels_to_convention(ref, conv)
    np.testing.assert_array_equal(convention_to_channels(labels, conv), ref)
    np.testing.assert_array_equal(channels_to_labels(convention_to_channels(labels, name)),
                                  classes_to_labels(_class_map()))


def test_relabel_2023_to_2020_and_msd():
    from tumorlib.core.label_conventions import relabel

    lab23 = np.array([0, 1, 2, 3, 4])
    np.testing.assert_array_equal(relabel(lab23, "brats2023", "brats2020"), [0, 1, 2, 4, 0])
    np.testing.assert_array_equal(relabel(lab23[:4], "brats2023", "msd"), [0, 2, 1, 3])


def test_resection_cavity_is_in_no_tumour_region():
    from tumorlib.core.brats import channels_to_regions
    from tumorlib.core.label_conventions import convention_to_channels

    regions = channels_to_regions(convention_to_channels(np.full((2, 2, 2), 4), "brats2023"))
    assert not regions.any()  # WT, TC, ET all background where the 2024 cavity is


@pytest.mark.parametrize("values,name,want", [
    ([0, 1, 2, 4], None, "brats2020"), ([0, 1, 2], None, "brats2020"), ([0, 1, 3, 4], "BraTS-GLI-00002-100", "brats2023"),
    ([0, 3], "BraTS-GLI-00001-000-seg.nii.gz", "brats2023"), ([0, 4], "x/BraTS-GLI-00001-000.nii.gz", "brats2023"),
    ([0, 1, 3], "labelsTr/BRATS_001.nii.gz", "msd"), ([0, 4], "BraTS2021_00001_seg.nii.gz", "brats2020")])
def test_detect_label_convention(values, name, want):
    from tumorlib.core.label_conventions import detect_label_convention

    assert detect_label_convention(values, name).name == want


@pytest.mark.parametrize("values,name,match", [
    ([0, 1, 3], None, "fit brats2023 and msd"), ([0, 5], None, "fit no label convention"),
    ([0, 1, 2, 3, 4], None, r"\[3\] is no brats2020 label, and 4 is enhancing tumour in brats2020 but the resection"),
    ([0, 3], "BraTS20_Training_001_seg.nii.gz", r"not brats2020 labels.*3 is enhancing tumour in BraTS 2023\+"),
    ([0, 4], "BRATS_002.nii.gz", "not msd labels")])
def test_detect_label_convention_refuses(values, name, match):
    from tumorlib.core.label_conventions import detect_label_convention, label_convention

    with pytest.raises(ValueError, match=match):
        detect_label_convention(values, name, where="f.nii.gz")
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        label_convention("brats2019")


def test_modality_aliases_of_new_releases():
    from tumorlib.core.brats import modality_key

    assert [modality_key(n) for n in ("t1n", "t1c", "t2w", "t2f", "T1w", "T1gd", "FLAIR")] == \
        ["t1", "t1ce", "t2", "flair", "t1", "t1ce", "flair"]
