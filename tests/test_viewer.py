"""Tests for tumorlib.viz.viewer: the widget state is driven as a user would (slider values, dropdowns) and
the displayed panels are checked pixel for pixel, without a browser."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tumorlib.benchmarks.viewer import benchmark_viewer
from tumorlib.core.brats import MODALITIES
from tumorlib.viz.colors import CLASS_COLORS, ERROR_COLORS, to_label_map
from tumorlib.viz.render import intensity_window, to_uint8
from tumorlib.viz.viewer import ThreePlaneViewer


def _volume(shape=(12, 16, 20), seed=0):
    """A volume whose every voxel differs per slice, plus a box tumour and a shifted prediction."""
    rng = np.random.default_rng(seed)
    D, H, W = shape
    image = np.stack([rng.uniform(1, 100, shape) * (c + 1) for c in range(4)]).astype(np.float32)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[4:8, 5:11, 6:14] = 2
    gt[5:7, 7:9, 8:12] = 1
    pred = np.roll(gt, 2, axis=2)
    return image, gt, pred


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _gray(image, channel, sl):
    return to_uint8(image[channel], intensity_window(image[channel]))[sl]


def test_starts_at_tumour_centre_of_mass_with_controls():
    image, gt, pred = _volume()
    v = ThreePlaneViewer(image, gt=gt, pred=pred)
    com = tuple(int(round(c)) for c in ndimage.center_of_mass(gt > 0))
    assert v.position == com
    assert [v.sliders[p].max for p in ("axial", "coronal", "sagittal")] == [11, 15, 19]
    assert v.modality_dropdown.options == MODALITIES and v.modality_dropdown.value == "FLAIR"
    assert [value for _, value in v.overlay_dropdown.options] == ["none", "ground truth", "prediction", "both", "errors"]
    assert v.overlay_dropdown.value == "prediction"
    assert "tumorlib-viewer" in v.widget._dom_classes
    # without masks: brain centre, overlay none only
    v0 = ThreePlaneViewer(image)
    assert [value for _, value in v0.overlay_dropdown.options] == ["none"]
    assert v0.position == (6, 8, 10)  # every voxel is brain: the volume centre (5.5, 7.5, 9.5) rounded


def test_moving_each_slider_shows_the_right_slice():
    image, gt, pred = _volume()
    v = ThreePlaneViewer(image, gt=gt, pred=pred, overlay="none")
    v.crosshair_checkbox.value = False
    flair = MODALITIES.index("FLAIR")
    v.sliders["axial"].value = 3
    shown = _decode(v.images["axial"].value)
    assert np.array_equal(shown, v.rendered["axial"])  # the widget holds exactly the rendered panel
    assert np.array_equal(shown[..., 0], _gray(image, flair, np.s_[3]))
    assert np.array_equal(shown[..., 1], shown[..., 0])
    v.sliders["coronal"].value = 2
    coronal = _decode(v.images["coronal"].value)
    assert np.array_equal(coronal[..., 0], _gray(image, flair, np.s_[::-1, 2, :]))  # top = last slice
    v.sliders["sagittal"].value = 19
    sagittal = _decode(v.images["sagittal"].value)
    assert np.array_equal(sagittal[..., 0], _gray(image, flair, np.s_[::-1, :, 19]))
    assert v.position == (3, 2, 19)


def test_background_outside_the_brain_is_black_for_zscored_volumes():
    image, gt, _ = _volume()
    image = image - image.mean(axis=(1, 2, 3), keepdims=True)  # z-score-like: brain around 0
    image[:, :, :3] = 0  # rows y < 3 are background in every channel
    v = ThreePlaneViewer(image, gt=gt, overlay="none")
    v.crosshair_checkbox.value = False
    assert np.all(v.rendered["axial"][:3] == 0)
    assert v.rendered["axial"][3:].mean() > 40


def test_modality_dropdown_switches_channel():
    image, gt, _ = _volume()
    v = ThreePlaneViewer(image, gt=gt, overlay="none")
    v.crosshair_checkbox.value = False
    z = v.position[0]
    v.modality_dropdown.value = "T1ce"
    assert np.array_equal(_decode(v.images["axial"].value)[..., 0], _gray(image, 1, np.s_[z]))


def test_crosshair_marks_the_other_planes():
    image = np.zeros((4, 10, 12, 14), dtype=np.float32)
    image[:, 1:9, 1:11, 1:13] = 1.0  # uniform brain: grey 0 after windowing (vmin == the only value)
    v = ThreePlaneViewer(image, overlay="none", position=(3, 5, 7))
    ax, co, sa = (v.rendered[p].astype(int) for p in ("axial", "coronal", "sagittal"))
    base = ax[0, 0, 0]
    assert np.all(ax[5, :, 0] > base) and np.all(ax[:, 7, 0] > base)  # axial: row y=5, column x=7
    assert ax[4, 6, 0] == base
    assert np.all(co[10 - 1 - 3, :, 0] > base) and np.all(co[:, 7, 0] > base)  # coronal: row z (flipped), col x
    assert np.all(sa[10 - 1 - 3, :, 0] > base) and np.all(sa[:, 5, 0] > base)  # sagittal: row z, col y
    v.crosshair_checkbox.value = False
    assert np.all(v.rendered["axial"] == base)


def test_overlays_and_opacity():
    image, gt, pred = _volume()
    v = ThreePlaneViewer(image, gt=gt, pred=pred, overlay="ground truth", opacity=1.0, position=(6, 8, 10))
    v.crosshair_checkbox.value = False
    ax = v.rendered["axial"]
    assert tuple(ax[6, 8]) == CLASS_COLORS[1]  # (z, y, x) = (6, 6, 8): edema
    assert tuple(ax[7, 9]) == CLASS_COLORS[0]  # necrosis core
    v.overlay_dropdown.value = "errors"
    ax = v.rendered["axial"]
    assert tuple(ax[6, 6]) == ERROR_COLORS[1]  # gt edema, prediction shifted away: false negative
    assert tuple(ax[6, 15]) == ERROR_COLORS[0]  # predicted edema on background: false positive
    v.opacity_slider.value = 0.0
    assert np.array_equal(v.rendered["axial"][..., 0], _gray(image, 3, np.s_[6]))
    assert "false positive" in v.legend.value
    v.overlay_dropdown.value = "both"
    assert "dotted outline: prediction" in v.legend.value
    assert "ground truth: edema" in v.readout.value or "ground truth: necrosis" in v.readout.value


def test_anisotropic_spacing_is_drawn_to_scale():
    image, gt, _ = _volume(shape=(6, 16, 20))
    v = ThreePlaneViewer(image, gt=gt, spacing=(3.0, 1.0, 1.0), size=200)
    assert v.rendered["axial"].shape[:2] == (16, 20)
    assert v.rendered["coronal"].shape[:2] == (18, 20)  # 6 slices x 3 mm
    assert v.rendered["sagittal"].shape[:2] == (18, 16)
    assert _decode(v.images["coronal"].value).shape[:2] == (18, 20)
    w, h = float(v.images["coronal"].width), float(v.images["coronal"].height)
    assert w / h == pytest.approx(20 / 18, rel=0.02)
    # each slice is repeated 3 times, top row = last slice
    v.crosshair_checkbox.value = False
    v.overlay_dropdown.value = "none"
    co = v.rendered["coronal"][..., 0]
    y = v.position[1]
    expected = np.repeat(_gray(image, 3, np.s_[::-1, y, :]), 3, axis=0)
    assert np.array_equal(co, expected)


def test_set_position_redraws_once_and_unchanged_panels_are_not_resent():
    image, gt, pred = _volume()
    v = ThreePlaneViewer(image, gt=gt, pred=pred)
    n = v.redraw_count
    v.set_position(1, 2, 3)
    assert v.redraw_count == n + 1 and v.position == (1, 2, 3)
    v.crosshair_checkbox.value = False
    before = v.images["coronal"].value
    v.sliders["axial"].value = 2  # no crosshair: coronal and sagittal do not change
    assert v.images["coronal"].value is before


def test_accepts_channels_and_tensors_and_rejects_bad_input():
    torch = pytest.importorskip("torch")
    image, gt, pred = _volume()
    channels = np.stack([gt == 1, gt == 2, gt == 3]).astype(np.uint8)
    v = ThreePlaneViewer(torch.from_numpy(image), gt=channels, pred=torch.from_numpy(channels).float())
    assert np.array_equal(v.gt, to_label_map(channels))
    with pytest.raises(ValueError, match="needs masks"):
        ThreePlaneViewer(image, gt=gt, overlay="errors")
    with pytest.raises(ValueError, match="unknown overlay"):
        ThreePlaneViewer(image, overlay="heatmap")
    with pytest.raises(ValueError, match="does not match image"):
        ThreePlaneViewer(image, gt=gt[:5])
    with pytest.raises(ValueError, match="outside the volume"):
        ThreePlaneViewer(image, position=(12, 0, 0))
    with pytest.raises(ValueError, match="expected \\(4, D, H, W\\)"):
        ThreePlaneViewer(image[0])
    with pytest.raises(ValueError, match="spacing"):
        ThreePlaneViewer(image, spacing=(1, 0, 1))


def test_displays_as_a_widget():
    image, gt, _ = _volume()
    v = ThreePlaneViewer(image, gt=gt)
    bundle = v._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == v.widget.model_id
    assert "ThreePlaneViewer(shape=(12, 16, 20)" in repr(v)


def test_benchmark_viewer_moves_every_slider_on_a_phantom():
    """benchmark_viewer redraws each plane ``steps`` times on a phantom of the embedded generator."""
    result = benchmark_viewer((24, 48, 40), steps=3, overlay="both", quiet=True)
    assert set(result) >= {"axial_ms", "coronal_ms", "sagittal_ms", "mean_ms", "max_ms", "first_render_ms"}
    assert result["steps"] == 9
    assert 0 < result["mean_ms"] <= result["max_ms"]

def test_uncertainty_overlay_is_a_heat_map_beside_the_others():
    """The ``uncertainty`` overlay is offered only with a map; certain voxels stay grey, uncertain ones are
    drawn hot (red > blue), the readout gives the voxel's entropy and the legend the heat scale."""
    from tumorlib.viz.viewer import ThreePlaneViewer

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 12, 20, 24)).astype(np.float32) + 5
    gt = np.zeros((12, 20, 24), np.uint8)
    gt[4:8, 8:12, 8:14] = 2
    heat = np.zeros((12, 20, 24), np.float32)
    heat[6, 2:6, 2:6] = 0.6
    plain = ThreePlaneViewer(image, gt=gt, pred=gt)
    assert "uncertainty" not in [v for _, v in plain.overlay_dropdown.options]
    with pytest.raises(ValueError, match="uncertainty"):
        ThreePlaneViewer(image, gt=gt, overlay="uncertainty")
    with pytest.raises(ValueError, match="does not match"):
        ThreePlaneViewer(image, uncertainty=heat[:-1])
    viewer = ThreePlaneViewer(image, gt=gt, pred=gt, uncertainty=heat, overlay="uncertainty", opacity=1.0,
                              position=(6, 10, 11))
    viewer.crosshair_checkbox.value = False
    assert [v for _, v in viewer.overlay_dropdown.options][-1] == "uncertainty"
    axial = viewer.rendered["axial"].astype(int)
    hot, cold = axial[3, 3], axial[15, 20]
    assert hot[0] > hot[2] + 50 and cold[0] == cold[1] == cold[2]  # grey where certain
    assert "entropy 0" in viewer.legend.value
    viewer.set_position(6, 3, 3)
    assert "entropy = 0.600" in viewer.readout.value
    viewer.sliders["axial"].value = 5  # a slice without uncertainty: grey only
    assert (viewer.rendered["axial"][..., 0] == viewer.rendered["axial"][..., 2]).all()
    viewer.overlay_dropdown.value = "errors"  # the other overlays still work beside it
    assert viewer.rendered["axial"].shape == axial.shape


def test_benchmark_viewer_with_the_uncertainty_overlay():
    result = benchmark_viewer((24, 48, 40), steps=2, overlay="uncertainty", quiet=True)
    assert result["steps"] == 6 and result["mean_ms"] > 0
