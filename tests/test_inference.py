"""Sliding-window inference, flip TTA and label conversion; agreement with MONAI's sliding window."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tumorlib.inference.sliding_window import (
    FLIP_AXES,
    importance_map,
    sliding_window_inference,
    window_starts,
)
from tumorlib.core.regions import Decoder
from tumorlib.core.brats import labels_to_channels


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with



@pytest.fixture(scope="module")
def conv_predictor():
    """A fixed random 3x3x3 convolution + sigmoid: 2 channels in, 3 out, not flip-symmetric."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1).eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(conv(x))

    return predict


# --------------------------------------------------------------------------- window grid

@pytest.mark.parametrize("size, patch, overlap, expected", [
    (10, 4, 0.5, [0, 2, 4, 6]),
    (155, 64, 0.5, [0, 32, 64, 91]),
    (240, 160, 0.5, [0, 80]),
    (11, 4, 0.0, [0, 4, 7]),
    (8, 8, 0.5, [0]),
    (9, 8, 0.5, [0, 1]),
    (5, 3, 0.9, [0, 1, 2]),  # step int(0.3) = 0 becomes 1
])
def test_window_starts(size, patch, overlap, expected):
    assert window_starts(size, patch, overlap) == expected


def test_window_starts_errors():
    with pytest.raises(ValueError, match="shorter"):
        window_starts(3, 4, 0.5)
    with pytest.raises(ValueError, match="overlap"):
        window_starts(8, 4, 1.0)


# --------------------------------------------------------------------------- importance map

def test_importance_map_values():
    np.testing.assert_array_equal(importance_map((2, 3, 4), "constant").numpy(), np.ones((2, 3, 4)))
    g = importance_map((9, 8, 16), "gaussian")
    assert g.shape == (9, 8, 16) and g.dtype == torch.float32
    # odd side: the centre voxel has weight 1 along that axis
    x = np.arange(8) - 3.5
    curve_h = np.exp(-x**2 / (2 * (0.125 * 8) ** 2))
    x = np.arange(16) - 7.5
    curve_w = np.exp(-x**2 / (2 * (0.125 * 16) ** 2))
    np.testing.assert_allclose(g[4].numpy(), np.maximum(np.outer(curve_h, curve_w), 1e-3), rtol=1e-5)
    assert float(g.min()) == pytest.approx(1e-3)  # corners clamped
    torch.testing.assert_close(g, torch.flip(g, (0, 1, 2)))
    with pytest.raises(ValueError, match="blend"):
        importance_map((4, 4, 4), "cosine")


def test_importance_map_matches_monai():
    from monai.data.utils import compute_importance_map

    for size in [(7, 12, 9), (16, 32, 32)]:
        for mode in ("gaussian", "constant"):
            torch.testing.assert_close(importance_map(size, mode),
                                       compute_importance_map(size, mode=mode, sigma_scale=0.125))


# --------------------------------------------------------------------------- sliding window

@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_identity_predictor_reproduces_the_input(blend):
    x = torch.randn(2, 3, 13, 21, 10)
    out = sliding_window_inference(x, lambda w: w, (8, 8, 8), overlap=0.5, blend=blend, batch_size=3)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_small_volume_is_padded_and_cropped_back():
    x = torch.randn(1, 2, 5, 20, 3)
    seen = []

    def predictor(w):
        seen.append(tuple(w.shape[2:]))
        return w * 2

    out = sliding_window_inference(x, predictor, (8, 8, 8), blend="gaussian")
    assert set(seen) == {(8, 8, 8)}
    assert out.shape == x.shape
    torch.testing.assert_close(out, 2 * x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, patch", [
    ((1, 2, 23, 37, 41), (8, 16, 12)),   # odd sizes, several windows per axis
    ((2, 2, 7, 37, 11), (8, 16, 12)),    # batch of two; two axes shorter than the patch
    ((1, 2, 16, 33, 12), (16, 16, 12)),  # axes exactly the patch size
])
@pytest.mark.parametrize("blend, rtol", [("constant", 1e-5), ("gaussian", 1e-3)])
def test_matches_monai(conv_predictor, shape, patch, blend, rtol):
    from monai.inferers import sliding_window_inference as monai_swi

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = monai_swi(x, patch, 3, conv_predictor, overlap=0.5, mode=blend)
    out = sliding_window_inference(x, conv_predictor, patch, overlap=0.5, blend=blend, batch_size=4)
    assert out.shape == ref.shape
    rel = ((out - ref).abs() / ref.abs().clamp_min(1e-6)).max().item()
    assert rel < rtol


def test_output_device_and_dtype(conv_predictor):
    x = torch.randn(1, 2, 9, 9, 9)
    out = sliding_window_inference(x, lambda w: conv_predictor(w).to(torch.bfloat16), (8, 8, 8),
                                   device="cpu")
    assert out.device.type == "cpu" and out.dtype == torch.float32


def test_bad_predictor_output_is_reported():
    x = torch.randn(1, 1, 9, 9, 9)
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window_inference(x, lambda w: w[:, :, :4], (8, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        sliding_window_inference(x[0], lambda w: w, (8, 8, 8))


# --------------------------------------------------------------------------- TTA

def test_flip_axes_are_the_eight_combinations():
    assert len(FLIP_AXES) == 8 and len(set(FLIP_AXES)) == 8
    assert () in FLIP_AXES and (2, 3, 4) in FLIP_AXES


def test_tta_averages_the_eight_flips(conv_predictor):
    x = torch.randn(1, 2, 8, 8, 8)  # one window: the blend is the identity
    expected = torch.stack([torch.flip(conv_predictor(torch.flip(x, a)), a) for a in FLIP_AXES]).mean(0)
    out = sliding_window_inference(x, conv_predictor, (8, 8, 8), tta=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    plain = sliding_window_inference(x, conv_predictor, (8, 8, 8), tta=False)
    assert (out - plain).abs().max() > 1e-4  # the conv is not flip-symmetric: TTA changes something


def test_tta_keeps_flip_equivariant_predictions():
    x = torch.randn(1, 2, 11, 13, 9)
    out = sliding_window_inference(x, torch.sigmoid, (8, 8, 8), tta=True, blend="gaussian")
    torch.testing.assert_close(out, torch.sigmoid(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- labels

def test_labels_precedence_enhancing_over_necrosis_over_edema():
    # voxels: none, edema, necrosis, enhancing, ncr+ed, ncr+et, ed+et, all three
    on = np.array([[0, 0, 1, 0, 1, 1, 0, 1],
                   [0, 1, 0, 0, 1, 0, 1, 1],
                   [0, 0, 0, 1, 0, 1, 1, 1]], dtype=np.float32)
    prob = np.where(on, 0.9, 0.1).reshape(3, 1, 1, 8)
    labels = Decoder("classes").labels(torch.from_numpy(prob))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0, 0], [0, 2, 1, 4, 1, 4, 4, 4])
    single = np.array([0.5, 0.0, 0.0]).reshape(3, 1, 1, 1)
    assert Decoder("classes").labels(single)[0, 0, 0] == 0  # strictly above
    # the union of three 0.5s passes (no hole where classes share); the tie goes to enhancing
    assert Decoder("classes").labels(np.full((3, 1, 1, 1), 0.5))[0, 0, 0] == 4


def test_labels_round_trip_and_errors():
    labels = np.array([0, 1, 2, 4, 4, 0], np.uint8).reshape(1, 2, 3)
    channels = labels_to_channels(labels)
    assert channels.shape == (3, 1, 2, 3) and channels.sum(0).max() == 1
    np.testing.assert_array_equal(Decoder("classes").labels(channels.astype(np.float32)), labels)
    with pytest.raises(ValueError, match=r"\[3\]"):
        labels_to_channels(np.array([[[0, 3]]]))
    with pytest.raises(ValueError, match="3, D, H, W"):
        Decoder("classes").labels(np.zeros((2, 1, 1, 1)))


@pytest.mark.parametrize("field,value", [("kaggle_channel_order", ["t1", "t1ce", "t2", "flair"]),
                                         ("targets", "regions"), ("patch_size", [8, 32, 32]),
                                         ("features", [6, 12, 24, 48])])
def test_a_config_json_that_disagrees_with_its_checkpoint_is_refused_naming_the_field(tmp_path, field, value):
    import json

    from constant_runs import make_run
    from tumorlib.inference.predictor import load_run

    run = make_run(tmp_path / "run")
    load_run(run)  # as written: fine
    config = json.loads((run / "config.json").read_text())
    config[field] = value
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"does not match .*config\.json: {field}=") as info:
        load_run(run)
    assert "\n" not in str(info.value) and f"{field}=" in str(info.value)
