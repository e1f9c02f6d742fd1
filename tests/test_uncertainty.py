"""Uncertainty maps from flip TTA and ensembles: hand cases for the entropy, the variance and the flips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorlib.core.brats import tumour_probability
from tumorlib.core.regions import Decoder
from tumorlib.inference.sliding_window import FLIP_AXES, sliding_window_inference, with_flips
from tumorlib.inference.uncertainty import (
    categorical_distribution,
    entropy,
    flip_members,
    uncertainty_maps,
    uncertainty_summary,
)


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with
def decode_classes(prob, threshold=0.5):
    return Decoder("classes", threshold).classes(prob)


def _prob(values, shape=(2, 3, 4)):
    """(3, *shape) probabilities with every voxel set to ``values`` (ncr, ed, et)."""
    return np.broadcast_to(np.asarray(values, np.float32)[:, None, None, None], (3, *shape)).copy()


def test_categorical_distribution_follows_the_decoder():
    p = _prob((0.2, 0.5, 0.0))
    q = categorical_distribution(p)
    t = 1 - 0.8 * 0.5
    assert q.shape == (4, 2, 3, 4)
    np.testing.assert_allclose(q[:, 0, 0, 0], [1 - t, t * 0.2 / 0.7, t * 0.5 / 0.7, 0.0], rtol=1e-6)
    np.testing.assert_allclose(q.sum(0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(1 - q[0], tumour_probability(p), rtol=1e-6)
    # the most probable tumour class is the decoder's class
    rng = np.random.default_rng(0)
    p = rng.random((3, 4, 5, 6)).astype(np.float32)
    q = categorical_distribution(p)
    tumour = decode_classes(p) > 0
    np.testing.assert_array_equal(np.argmax(q[1:], 0)[tumour] + 1, decode_classes(p)[tumour])
    np.testing.assert_array_equal(categorical_distribution(np.zeros((3, 1, 1, 1)))[:, 0, 0, 0], [1, 0, 0, 0])


def test_entropy_of_known_distributions():
    uniform = np.full((4, 1), 0.25)
    assert entropy(uniform)[0] == pytest.approx(1.0)
    assert entropy(uniform, normalise=False)[0] == pytest.approx(math.log(4))
    assert entropy(np.array([[1.0], [0], [0], [0]]))[0] == 0.0
    half = np.array([[0.5], [0.5], [0.0], [0.0]])
    assert entropy(half, normalise=False)[0] == pytest.approx(math.log(2))
    assert entropy(half)[0] == pytest.approx(0.5)


def test_equal_members_have_no_variance_and_no_mutual_information():
    p = _prob((0.3, 0.6, 0.1))
    maps = uncertainty_maps([p, p.copy(), torch.from_numpy(p)])
    assert maps["members"] == 3
    np.testing.assert_allclose(maps["mean"], p, rtol=1e-6)
    np.testing.assert_array_equal(maps["variance"], 0.0)
    np.testing.assert_allclose(maps["mutual_information"], 0.0, atol=1e-6)
    np.testing.assert_allclose(maps["entropy"], entropy(categorical_distribution(p)), rtol=1e-5)


def test_disagreeing_members_hand_case():
    # member 1: certain background; member 2: certain edema -> mean q = (0.5, 0, 0.5, 0)
    a, b = _prob((0.0, 0.0, 0.0)), _prob((0.0, 1.0, 0.0))
    maps = uncertainty_maps(iter([a, b]))
    np.testing.assert_allclose(maps["mean"], _prob((0.0, 0.5, 0.0)))
    np.testing.assert_allclose(maps["entropy"], 0.5, rtol=1e-6)  # ln 2 / ln 4
    np.testing.assert_allclose(maps["mutual_information"], 0.5, rtol=1e-6)  # members are each certain
    np.testing.assert_allclose(maps["variance"], 0.25, rtol=1e-6)  # t = 0 and 1
    maps = uncertainty_maps([_prob((0.0, 0.2, 0.0)), _prob((0.0, 0.4, 0.0)), _prob((0.0, 0.9, 0.0))])
    np.testing.assert_allclose(maps["variance"], np.var([0.2, 0.4, 0.9]), rtol=1e-5)


def test_uncertainty_maps_refuses_bad_members():
    with pytest.raises(ValueError, match="at least one member"):
        uncertainty_maps([])
    with pytest.raises(ValueError, match=r"\(3, D, H, W\)"):
        uncertainty_maps([np.zeros((2, 2, 2, 2))])
    with pytest.raises(ValueError, match="differ in shape"):
        uncertainty_maps([_prob((0, 0, 0)), _prob((0, 0, 0), (2, 2, 2))])


def test_flip_members_are_unmirrored_and_average_to_flip_tta():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)

    def whole(x):  # (C, D, H, W) -> (3, D, H, W) probabilities; not mirror-symmetric
        with torch.no_grad():
            return torch.sigmoid(conv(x[None])[0])

    image = torch.randn(2, 5, 6, 7)
    members = list(flip_members(whole, image))
    assert len(members) == len(FLIP_AXES) == 8
    assert all(m.shape == (3, 5, 6, 7) and m.dtype == np.float32 for m in members)
    np.testing.assert_allclose(members[0], whole(image).numpy(), rtol=1e-6)
    for member, axes in zip(members, FLIP_AXES):
        spatial = tuple(a - 1 for a in axes)  # (B, C, D, H, W) axes -> (C, D, H, W)
        expected = torch.flip(whole(torch.flip(image, spatial)), spatial) if axes else whole(image)
        np.testing.assert_allclose(member, expected.numpy(), rtol=1e-5, atol=1e-6)
    # the members' mean is what the averaging flip TTA of sliding_window gives for one whole window
    tta = with_flips(lambda xb: torch.sigmoid(conv(xb)))
    with torch.no_grad():
        mean = sliding_window_inference(image[None], tta, (5, 6, 7))[0].numpy()
    np.testing.assert_allclose(uncertainty_maps(members)["mean"], mean, rtol=1e-5, atol=1e-6)


def test_uncertainty_summary_hand_case():
    h = np.zeros((1, 2, 5), np.float32)
    h[0, 0, :] = [0.9, 0.1, 0.6, 0.0, 0.0]
    labels = np.zeros((1, 2, 5), np.uint8)
    labels[0, 0, :2] = (2, 4)
    summary = uncertainty_summary(h, labels, threshold=0.5)
    assert summary["mean_entropy_tumour"] == pytest.approx(0.5)
    assert summary["uncertain_voxels"] == 2 and summary["tumour_voxels"] == 2
    assert summary["uncertain_fraction"] == pytest.approx(2 / 3)  # voxels 0 and 2 of {0, 1, 2}
    empty = uncertainty_summary(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    assert math.isnan(empty["mean_entropy_tumour"]) and empty["uncertain_fraction"] == 0.0
    with pytest.raises(ValueError, match="differ"):
        uncertainty_summary(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_ensemble_members_chain_runs():
    from tumorlib.inference.uncertainty import ensemble_members

    calls = []

    def run(value):
        def predict(x):
            calls.append(value)
            return torch.full((3, *x.shape[1:]), value)
        return predict

    image = np.zeros((2, 2, 3, 4), np.float32)
    members = list(ensemble_members([run(0.2), run(0.6)], image))
    assert len(members) == 16 and calls == [0.2] * 8 + [0.6] * 8
    maps = uncertainty_maps(members)
    np.testing.assert_allclose(maps["mean"], 0.4, rtol=1e-6)
    t = [1 - 0.8**3, 1 - 0.4**3]
    np.testing.assert_allclose(maps["variance"], np.var(t), rtol=1e-5)
    assert len(list(ensemble_members([run(0.1), run(0.3)], image, flips=False))) == 2
