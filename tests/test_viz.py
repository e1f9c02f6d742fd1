"""Tests for tumorlib.viz colours, rendering and static figures: hand-made cases, then properties, then
figures on a synthetic phantom."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from tumorlib import viz
from tumorlib.viz.colors import CLASS_COLORS, ERROR_COLORS, error_map, to_label_map
from tumorlib.viz.render import (
    center_of_mass,
    draw_crosshair,
    intensity_window,
    label_outline,
    outline,
    plane_aspect,
    plane_slice,
    render_plane,
    to_uint8,
)


# --------------------------------------------------------------------------------------------- helpers


def _ball_volume(shape=(20, 32, 36), center=(11, 14, 20), seed=0):
    """(4, D, H, W) ellipsoid 'brain' with noise, (3, D, H, W) concentric tumour classes."""
    rng = np.random.default_rng(seed)
    D, H, W = shape
    zz, yy, xx = np.mgrid[:D, :H, :W]
    brain = ((zz - D / 2) / (0.45 * D)) ** 2 + ((yy - H / 2) / (0.45 * H)) ** 2 + ((xx - W / 2) / (0.45 * W)) ** 2 < 1
    image = np.stack([brain * (10.0 * (c + 1) + rng.normal(0, 1, shape)) for c in range(4)]).astype(np.float32)
    r = np.sqrt((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2)
    mask = np.stack([r < 2, (r >= 3.5) & (r < 6), (r >= 2) & (r < 3.5)]).astype(np.uint8)
    return image, mask


# --------------------------------------------------------------------------------------------- colours


def test_to_label_map_from_channels_and_priority():
    ch = np.zeros((3, 1, 1, 4), dtype=np.uint8)
    ch[0, 0, 0, 0] = 1  # necrosis
    ch[1, 0, 0, 1] = 1  # edema
    ch[2, 0, 0, 2] = 1  # enhancing
    ch[:, 0, 0, 3] = 1  # all three overlap: enhancing wins
    assert to_label_map(ch).tolist() == [[[1, 2, 3, 3]]]
    ch2 = np.zeros((3, 1, 1, 2), dtype=np.uint8)
    ch2[[0, 1], 0, 0, 0] = 1  # necrosis over edema
    assert to_label_map(ch2)[0, 0, 0] == 1
    probs = np.array([0.2, 0.7, 0.4], dtype=np.float32).reshape(3, 1, 1, 1)
    with pytest.raises(ValueError, match="probabilities: decode them with the run's rule"):
        to_label_map(probs)  # classes or regions? only the run knows: no second decoder in the figures
    assert to_label_map(np.array([0.0, 1.0, 0.0], np.float32).reshape(3, 1, 1, 1))[0, 0, 0] == 2  # binary floats


def test_to_label_map_label_maps_and_errors():
    lab = np.array([[[0, 1, 2, 4]]])
    assert to_label_map(lab, spatial_ndim=3).tolist() == [[[0, 1, 2, 3]]]
    with pytest.raises(ValueError, match="value 5"):
        to_label_map(np.array([[[0, 5]]]), spatial_ndim=3)
    with pytest.raises(ValueError, match="class channels must be 3"):
        to_label_map(np.zeros((2, 3, 3, 3)), spatial_ndim=3)
    with pytest.raises(ValueError, match="non-integer"):
        to_label_map(np.array([[[0.5]]]), spatial_ndim=3)


def test_to_label_map_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    t[1, 0, 0, 0] = True
    assert to_label_map(t)[0, 0, 0] == 2


def test_error_map_hand_case():
    gt = np.array([0, 0, 1, 2, 3, 1])
    pred = np.array([0, 2, 0, 2, 1, 1])
    # correct bg, FP, FN, correct, wrong class, correct
    assert error_map(gt, pred).tolist() == [0, 1, 2, 0, 3, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        error_map(gt, pred[:3])


def test_colour_scheme_is_distinct_and_has_legend():
    colours = list(CLASS_COLORS) + list(ERROR_COLORS)
    assert len(set(colours)) == 6
    handles = viz.class_legend_handles()
    assert [h.get_label() for h in handles] == ["necrosis", "edema", "enhancing"]
    assert np.allclose(handles[0].get_facecolor()[:3], np.array(CLASS_COLORS[0]) / 255)
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained")
    leg = viz.add_class_legend(fig, errors=True)
    assert [t.get_text() for t in leg.get_texts()] == [
        "necrosis", "edema", "enhancing", "false positive", "false negative", "wrong class"]


# --------------------------------------------------------------------------------------------- render


def test_outline_of_a_square_is_its_ring():
    m = np.zeros((6, 6), dtype=bool)
    m[1:5, 1:5] = True
    ring = outline(m)
    expected = m.copy()
    expected[2:4, 2:4] = False
    assert np.array_equal(ring, expected)
    lab = np.zeros((6, 6), dtype=np.uint8)
    lab[1:5, 1:5] = 2
    lab[2:4, 2:4] = 3
    lo = label_outline(lab)
    assert set(np.unique(lo[expected])) == {2}
    assert np.all(lo[2:4, 2:4] == 3)  # a 2x2 region is all boundary


def test_plane_slice_orientation_and_aspect():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(plane_slice(vol, "axial", 1), vol[1])
    assert np.array_equal(plane_slice(vol, "coronal", 2), vol[::-1, 2, :])  # top row = last slice
    assert np.array_equal(plane_slice(vol, "sagittal", 3), vol[::-1, :, 3])
    assert plane_slice(np.zeros((4, 2, 3, 4)), "coronal", 0).shape == (4, 2, 4)
    with pytest.raises(ValueError, match="unknown plane"):
        plane_slice(vol, "oblique", 0)
    assert plane_aspect("axial", (5, 1, 1)) == 1
    assert plane_aspect("coronal", (5, 1, 2)) == 2.5
    assert plane_aspect("sagittal", (5, 0.5, 1)) == 10


def test_center_of_mass_matches_scipy():
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = rng.random((9, 11, 13)) > 0.9
        ours = center_of_mass(m)
        ref = ndimage.center_of_mass(m)
        assert ours == tuple(int(round(r)) for r in ref)
    empty = np.zeros((4, 6, 8), dtype=bool)
    assert center_of_mass(empty) == (2, 3, 4)
    fallback = np.zeros_like(empty)
    fallback[1, 2, 3] = True
    assert center_of_mass(empty, fallback) == (1, 2, 3)


def test_intensity_window_and_uint8():
    v = np.zeros((10, 10), dtype=np.float32)
    v[:5] = np.linspace(1, 100, 50).reshape(5, 10)
    lo, hi = intensity_window(v, 0, 100)
    assert (lo, hi) == (1.0, 100.0)  # zeros (background) are ignored
    u = to_uint8(v, (1.0, 100.0))
    assert u.dtype == np.uint8 and u[0, 0] == 0 and u[4, 9] == 255 and u[9, 9] == 0
    assert intensity_window(np.zeros(5)) == (0.0, 1.0)


def test_to_uint8_keeps_the_background_of_zscored_volumes_black():
    v = np.zeros((4, 4), dtype=np.float32)
    v[1:3, 1:3] = [[-2.0, -1.0], [1.0, 2.0]]  # z-scored brain: the background 0 lies inside the window
    brain = v != 0
    plain = to_uint8(v, (-2.0, 2.0))
    assert plain[0, 0] == 127  # mid-grey without the brain mask
    masked = to_uint8(v, (-2.0, 2.0), brain)
    assert masked[0, 0] == 0 and masked[1, 1] == 0 and masked[2, 2] == 255 and masked[1, 2] == 63


def test_render_plane_overlays_paint_the_right_colours():
    gray = np.full((5, 5), 100, dtype=np.uint8)
    gt = np.zeros((5, 5), dtype=np.uint8)
    pred = np.zeros((5, 5), dtype=np.uint8)
    gt[1, 1] = 1  # FN
    pred[3, 3] = 2  # FP
    gt[2, 2] = 3
    pred[2, 2] = 1  # wrong class
    gt[4, 0] = pred[4, 0] = 2  # correct
    none = render_plane(gray)
    assert none.shape == (5, 5, 3) and np.all(none == 100)
    full = render_plane(gray, gt, pred, overlay="ground truth", opacity=1.0)
    assert tuple(full[1, 1]) == CLASS_COLORS[0] and tuple(full[2, 2]) == CLASS_COLORS[2]
    assert tuple(full[3, 3]) == (100, 100, 100)
    half = render_plane(gray, gt, pred, overlay="prediction", opacity=0.5)
    expected = np.round(0.5 * 100 + 0.5 * np.array(CLASS_COLORS[1])).astype(int)
    assert np.all(np.abs(half[3, 3].astype(int) - expected) <= 1)
    err = render_plane(gray, gt, pred, overlay="errors", opacity=1.0)
    assert tuple(err[3, 3]) == ERROR_COLORS[0]  # false positive
    assert tuple(err[1, 1]) == ERROR_COLORS[1]  # false negative
    assert tuple(err[2, 2]) == ERROR_COLORS[2]  # wrong class
    assert tuple(err[4, 0]) == (100, 100, 100)  # correct: untouched
    both = render_plane(gray, gt, pred, overlay="both", opacity=1.0)
    assert tuple(both[1, 1]) == CLASS_COLORS[0]  # gt outline (solid)
    assert tuple(both[4, 0]) == CLASS_COLORS[1]  # (4+0) even: dotted prediction drawn over gt
    with pytest.raises(ValueError, match="needs a ground truth and a prediction"):
        render_plane(gray, gt, None, overlay="errors")
    with pytest.raises(ValueError, match="unknown overlay"):
        render_plane(gray, overlay="heatmap")


def test_crosshair_lines():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    draw_crosshair(rgb, 1, 4, color=(200, 100, 50), alpha=1.0)
    assert np.all(rgb[1] == (200, 100, 50)) and np.all(rgb[:, 4] == (200, 100, 50))
    assert np.all(rgb[0, :4] == 0) and np.all(rgb[2:, 5] == 0)
    out = render_plane(np.zeros((4, 6), np.uint8), crosshair=(None, 2), crosshair_alpha=0.5)
    assert np.all(out[:, 2] == 127) and np.all(out[:, 3] == 0)


# --------------------------------------------------------------------------------------------- figures


def test_class_fractions_hand_case():
    image = np.zeros((4, 1, 2, 5), dtype=np.float32)
    image[3, 0, 0, :] = 1  # 5 brain voxels (FLAIR only)
    image[0, 0, 1, 0] = 1  # a 6th (T1 only)
    mask = np.zeros((3, 1, 2, 5), dtype=np.uint8)
    mask[0, 0, 0, 0] = 1
    mask[1, 0, 0, 1:3] = 1
    mask[2, 0, 1, 4] = 1  # outside the brain: not counted
    fr = viz.class_fractions(image, mask)
    assert fr == pytest.approx({"necrosis": 1 / 6, "edema": 2 / 6, "enhancing": 0.0})


def test_plot_sample_slice_defaults_to_the_tumour_slice():
    image, mask = _ball_volume()
    fig = viz.plot_sample_slice(image, mask, title="phantom")
    assert fig._suptitle.get_text() == "phantom"
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 8
    titles = [ax.get_title() for ax in axes]
    assert titles[:4] == ["T1", "T1ce", "T2", "FLAIR"]
    z = viz.tumor_slice(mask)
    assert z == int(np.argmax(mask.any(axis=0).sum(axis=(1, 2))))
    assert z == 10  # slices 10, 11, 12 tie at 109 voxels: the first wins
    # the necrosis panel shows exactly the necrosis pixels of that slice in the necrosis colour
    shown = axes[4].images[0].get_array()
    assert np.array_equal(np.all(shown == CLASS_COLORS[0], axis=-1), mask[0, z].astype(bool))
    assert titles[4] == f"necrosis ({int(mask[0, z].sum())} px)"
    assert viz.plot_sample_slice(image, mask, slice_index=3)._suptitle.get_text() == "axial slice 3"
    with pytest.raises(ValueError, match="slice_index 99"):
        viz.plot_sample_slice(image, mask, slice_index=99)
    with pytest.raises(ValueError, match="differ in spatial shape"):
        viz.plot_sample_slice(image, mask[:, :5])


def test_plot_class_fractions_bars_are_means_in_percent():
    df = pd.DataFrame({"volume": [1, 2], "frac_ncr": [0.02, 0.04], "Edema": [0.1, 0.2], "et_fraction": [0.01, 0.01]})
    fig = viz.plot_class_fractions(df, reference={"edema": 0.15})
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([3.0, 15.0, 1.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["necrosis", "edema", "enhancing"]
    colours = [tuple(np.round(np.array(p.get_facecolor()[:3]) * 255).astype(int)) for p in ax.patches]
    assert colours == [tuple(c) for c in CLASS_COLORS]
    with pytest.raises(ValueError, match="no class columns"):
        viz.plot_class_fractions(pd.DataFrame({"volume": [1], "size": [3]}))


def test_plot_intensity_histograms_over_brain_voxels():
    image, mask = _ball_volume()
    fig = viz.plot_intensity_histograms(image)
    assert [ax.get_title() for ax in fig.axes] == ["T1", "T1ce", "T2", "FLAIR"]
    # one histogram, density: area 1, and no bin at intensity 0 (background excluded)
    patch = fig.axes[3].patches[0]
    xs = patch.get_path().vertices[:, 0]
    assert xs.min() > 30  # FLAIR brain intensities are ~40 +- noise; background 0 is excluded
    fig2 = viz.plot_intensity_histograms([image, image * 2], labels=["a", "b"], masks=[mask, mask])
    assert len(fig2.axes[0].patches) == 2 + 3
    with pytest.raises(ValueError, match="2 masks for 1 images"):
        viz.plot_intensity_histograms(image, masks=[mask, mask])
    with pytest.raises(ValueError, match="expected \\(4, D, H, W\\)"):
        viz.plot_intensity_histograms(image[:3])


def test_plot_three_views_panels_and_aspect():
    image, mask = _ball_volume()
    pred = np.roll(mask, 2, axis=3)
    fig = viz.plot_three_views(image, gt=mask, pred=pred, errors=True, spacing=(2.0, 1.0, 1.0))
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 9
    assert [ax.get_ylabel() for ax in axes[::3]] == ["ground truth", "prediction", "errors"]
    pos = center_of_mass(mask.any(axis=0))
    assert pos == (11, 14, 20)
    assert [ax.get_title() for ax in axes[:3]] == ["axial (z=11)", "coronal (y=14)", "sagittal (x=20)"]
    assert [ax.get_aspect() for ax in axes[:3]] == [1.0, 2.0, 2.0]
    # the axial ground-truth panel is render_plane of the FLAIR slice with crosshair at (y, x)
    gray = to_uint8(image[3, 11], intensity_window(image[3]), np.any(image[:, 11] != 0, axis=0))
    expected = render_plane(gray, to_label_map(mask)[11], None, "ground truth", 0.5, crosshair=(14, 20))
    assert np.array_equal(axes[0].images[0].get_array(), expected)
    fig1 = viz.plot_three_views(image, position=(3, 4, 5), modality="t1")
    assert len([ax for ax in fig1.axes if ax.images]) == 3
    assert "T1 at (z, y, x) = (3, 4, 5)" == fig1._suptitle.get_text()
    with pytest.raises(ValueError, match="outside the volume"):
        viz.plot_three_views(image, position=(30, 0, 0))
    with pytest.raises(ValueError, match="needs both"):
        viz.plot_three_views(image, gt=mask, errors=True)
    with pytest.raises(ValueError, match="unknown modality"):
        viz.plot_three_views(image, modality="dwi")


def test_plot_predictions_rows_and_dice():
    image, mask = _ball_volume()
    pred = mask.copy()
    pred[1] = 0  # edema missed entirely: Dice 0; necrosis and enhancing exact: Dice 1
    fig = viz.plot_predictions(image[None], mask[None], pred[None].astype(np.float32), titles=["vol 7"])
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 4
    assert axes[2].get_title() == "prediction, Dice 1.00/0.00/1.00"
    assert axes[0].get_ylabel() == "vol 7"
    assert axes[0].get_title() == "FLAIR (z=10)"
    many = viz.plot_predictions([image] * 6, [mask] * 6, [pred] * 6, max_rows=2)
    assert len([ax for ax in many.axes if ax.images]) == 8
    with pytest.raises(ValueError, match="counts differ"):
        viz.plot_predictions([image], [mask, mask], [pred])


def test_plot_training_curves_plots_the_columns(tmp_path):
    hist = pd.DataFrame({
        "epoch": [1, 2, 3, 4],
        "lr": [1e-4, 2e-4, 2e-4, 1e-4],
        "train_loss": [1.0, 0.8, 0.6, 0.5],
        "val_loss": [1.1, np.nan, 0.7, 0.6],
        "val_dice_mean": [0.1, np.nan, 0.5, 0.6],
        "val_dice_ncr": [0.1, np.nan, 0.4, 0.5],
        "val_dice_ed": [0.2, np.nan, 0.6, 0.7],
        "val_dice_et": [0.0, np.nan, 0.5, 0.6],
    })
    path = tmp_path / "history.csv"
    hist.to_csv(path, index=False)
    fig = viz.plot_training_curves(path, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10000
    ax_loss, ax_mean, ax_cls = fig.axes[:3]
    lines = {ln.get_label(): ln for ln in ax_loss.lines}
    assert list(lines["train"].get_ydata()) == [1.0, 0.8, 0.6, 0.5]
    assert list(lines["validation"].get_xdata()) == [1, 3, 4]  # NaN epoch skipped
    cls_lines = {ln.get_label(): ln for ln in ax_cls.lines}
    assert set(cls_lines) == {"necrosis", "edema", "enhancing"}
    assert list(cls_lines["edema"].get_ydata()) == [0.2, 0.6, 0.7]
    assert np.allclose(cls_lines["enhancing"].get_color(), np.array(CLASS_COLORS[2]) / 255)
    assert list(ax_mean.lines[0].get_ydata()) == [0.1, 0.5, 0.6]
    assert len(fig.axes) == 4  # the lr twin axis
    only_loss = viz.plot_training_curves(hist[["epoch", "train_loss"]])
    assert len(only_loss.axes) == 3
    with pytest.raises(ValueError, match="no 'epoch' column"):
        viz.plot_training_curves(hist.drop(columns="epoch"))


def test_figures_on_a_synthetic_phantom(tmp_path):
    from tumorlib.data import make_phantom

    image, mask = make_phantom((32, 48, 48), seed=0, volume_id=1)
    for name, fig in [
        ("sample", viz.plot_sample_slice(image, mask)),
        ("hist", viz.plot_intensity_histograms(image, masks=mask)),
        ("three", viz.plot_three_views(image, gt=mask)),
    ]:
        out = tmp_path / f"{name}.png"
        fig.savefig(out, dpi=50)
        assert out.stat().st_size > 5000


def test_plot_cache_crop_marks_the_box_and_the_tumour():
    image = np.random.default_rng(0).random((4, 6, 20, 24)).astype(np.float32)
    cached = image[:, 1:5, 2:18, 3:21]
    mask = np.zeros((3, 4, 16, 18), np.uint8)
    mask[1, 2, 5:9, 6:10] = 1
    entry = {"crop_box": [[1, 5], [2, 18], [3, 21]], "shape": [4, 16, 18], "tumor_coords": [[2, 6, 7], [2, 7, 8]]}
    fig = viz.plot_cache_crop(image, cached, mask, entry, 7)
    left, right = fig.axes
    assert left.get_title() == "volume 7: HDF5 FLAIR, slice 3, crop box" and len(left.patches) == 1
    assert right.get_title() == "cache: z-scored, 16x18, tumour outline"
    np.testing.assert_array_equal(left.images[0].get_array(), image[3, 3])
    np.testing.assert_array_equal(right.images[0].get_array(), cached[3, 2])
