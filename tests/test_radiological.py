"""Radiological display in the viewer and the figures: marker voxels at the patient's left, anterior and
superior land on the image's right, top and top of the rendered panel arrays, for the Kaggle (BraTS2020)
geometry and NIfTI RAS and LPS affines; the panels carry direction labels; a click on the marker's
displayed pixel reports the marker's voxel."""

from __future__ import annotations

import numpy as np
import pytest

from tumorlib.io.nifti_write import BRATS2020_AFFINE
from tumorlib.viz.colors import CLASS_COLORS
from tumorlib.viz.orientation import tumorlib_affine

SHAPE = (10, 12, 14)  # (D, H, W): three different sides, so a wrong transpose cannot pass
LPS_2MM = np.diag([-1.0, -1.0, 2.0, 1.0])  # NIfTI axis 2 (tumorlib D) 2 mm: the panels are resampled
AFFINES = {"kaggle": np.asarray(BRATS2020_AFFINE, float), "ras": np.eye(4), "lps": np.diag([-1.0, -1.0, 1.0, 1.0]),
           "lps_2mm": LPS_2MM}
DIRECTIONS = {"L": (-1, 0, 0), "A": (0, 1, 0), "S": (0, 0, 1)}
LABEL = {"L": 1, "A": 2, "S": 3}  # marker -> class label (necrosis, edema, enhancing colour)
# where each marker must appear: plane -> {direction: edge of the picture}
EXPECTED = {"axial": {"L": "right", "A": "top"}, "coronal": {"L": "right", "S": "top"},
            "sagittal": {"A": "left", "S": "top"}}
EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}


def _marker(affine, direction):
    """The (d, h, w) voxel furthest towards ``direction`` in world coordinates, centred on the other axes."""
    t = tumorlib_affine(affine)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    score = (grid @ t[:3, :3].T + t[:3, 3]) @ np.array(DIRECTIONS[direction], float)
    best = grid[score >= score.max() - 1e-9]
    return tuple(int(i) for i in best[np.argmin(np.abs(best - np.array(SHAPE) // 2).sum(1))])


def _case(affine):
    """A uniform brain, a label map with the three markers, and the markers' voxels."""
    image = np.full((4, *SHAPE), 50.0, np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    markers = {d: _marker(affine, d) for d in DIRECTIONS}
    for d, voxel in markers.items():
        labels[voxel] = LABEL[d]
    return image, labels, markers


def _pixels(rgb, direction):
    """(rows, cols) of the pixels painted in the marker's class colour."""
    colour = np.array(CLASS_COLORS[LABEL[direction] - 1], np.uint8)
    return np.nonzero((rgb == colour).all(axis=-1))


def _on_edge(rgb, direction, edge):
    rows, cols = _pixels(rgb, direction)
    assert rows.size, f"marker {direction} not drawn"
    h, w = rgb.shape[:2]
    return {"top": rows.min() == 0, "bottom": rows.max() == h - 1, "left": cols.min() == 0,
            "right": cols.max() == w - 1}[edge]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_viewer_panels_show_the_markers_on_their_side(name):
    from tumorlib.viz.viewer import ThreePlaneViewer

    image, labels, markers = _case(AFFINES[name])
    v = ThreePlaneViewer(image, gt=labels, overlay="ground truth", opacity=1.0, affine=AFFINES[name])
    v.crosshair_checkbox.value = False
    for plane, expected in EXPECTED.items():
        assert tuple(v.edge_labels[plane][e].value.split(">")[1][0] for e in ("top", "bottom", "left", "right")) \
            == EDGES[plane]
        for direction, edge in expected.items():
            v.set_position(*markers[direction])
            assert _on_edge(v.rendered[plane], direction, edge), (name, plane, direction, edge)
    # the left marker is right of the centre line in the axial panel (not just on an edge by accident)
    v.set_position(*markers["L"])
    _, cols = _pixels(v.rendered["axial"], "L")
    assert cols.min() > v.rendered["axial"].shape[1] // 2


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_a_click_on_the_marker_reports_its_voxel(name):
    from tumorlib.viz.viewer import ThreePlaneViewer

    image, labels, markers = _case(AFFINES[name])
    v = ThreePlaneViewer(image, gt=labels, overlay="ground truth", opacity=1.0, affine=AFFINES[name])
    v.crosshair_checkbox.value = False
    for plane, expected in EXPECTED.items():
        for direction in expected:
            voxel = markers[direction]
            v.set_position(*voxel)  # the panel cuts through the marker
            rows, cols = _pixels(v.rendered[plane], direction)
            for r, c in zip(rows, cols):  # every displayed pixel of the marker (2 when resampled)
                v.set_position(*[s // 2 if a != v.transform.axis(plane) else voxel[a]
                                 for a, s in enumerate(SHAPE)])
                assert v.voxel_at(plane, r, c) == voxel
                assert v.click(plane, r, c) == voxel and v.position == voxel
                assert v.panels.pixel(plane, v.position) in set(zip(rows.tolist(), cols.tolist()))
    # the crosshair is drawn through the marker
    v.crosshair_checkbox.value = True
    v.set_position(*markers["A"])
    rows, cols = _pixels(v.rendered["axial"], "A")
    assert rows.size == 0  # blended with the crosshair: no longer the pure class colour
    assert v.panels.pixel("axial", markers["A"])[0] == 0  # anterior: the top row


def test_without_an_affine_the_viewer_is_unchanged_and_unlabelled():
    from tumorlib.viz.viewer import ThreePlaneViewer

    image, labels, _ = _case(np.eye(4))
    v = ThreePlaneViewer(image, gt=labels)
    assert v.edge_labels == {} and not v.labelled
    assert [v.sliders[p].description for p in ("axial", "coronal", "sagittal")] == ["axial z", "coronal y",
                                                                                   "sagittal x"]
    z, y, x = v.position
    v.crosshair_checkbox.value = False
    from tumorlib.viz.render import plane_slice

    assert v.rendered["coronal"].shape[:2] == plane_slice(labels, "coronal", y).shape


def test_kaggle_sliders_run_along_the_axis_each_plane_cuts():
    from tumorlib.viz.viewer import ThreePlaneViewer

    image, labels, _ = _case(AFFINES["kaggle"])
    v = ThreePlaneViewer(image, gt=labels, affine=AFFINES["kaggle"])
    # BraTS2020: D superior, H left, W posterior: coronal cuts W, sagittal cuts H
    assert {p: v.sliders[p].max for p in v.sliders} == {"axial": 9, "coronal": 13, "sagittal": 11}
    assert v.sliders["coronal"].description == "coronal x" and v.sliders["sagittal"].description == "sagittal y"
    v.sliders["coronal"].value = 3
    assert v.position[2] == 3
    assert v.rendered["axial"].shape[:2] == (14, 12)  # rows W (anterior up), columns H (right to left)


def _figure_panels(fig):
    return [(ax, ax.images[0].get_array()) for ax in fig.axes if ax.images]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_plot_three_views_shows_the_markers_on_their_side(name):
    from tumorlib.viz.views import plot_three_views

    image, labels, markers = _case(AFFINES[name])
    for plane, expected in EXPECTED.items():
        for direction, edge in expected.items():
            fig = plot_three_views(image, gt=labels, position=markers[direction], opacity=1.0, crosshair=False,
                                   affine=AFFINES[name])
            column = ("axial", "coronal", "sagittal").index(plane)
            ax, rgb = _figure_panels(fig)[column]
            assert _on_edge(np.asarray(rgb), direction, edge), (name, plane, direction, edge)
            texts = {t.get_text() for t in ax.texts}
            assert set(EDGES[plane]) <= texts
    # no affine: no direction labels
    fig = plot_three_views(image, gt=labels, position=markers["L"])
    assert all(not ax.texts for ax, _ in _figure_panels(fig))


@pytest.mark.parametrize("name", ["kaggle", "ras", "lps"])
def test_sample_slice_and_patch_predictions_are_radiological(name):
    from tumorlib.viz.figures import plot_sample_slice
    from tumorlib.viz.results import plot_predictions

    image, labels, markers = _case(AFFINES[name])
    z = markers["L"][0]  # axial cuts D for these affines
    fig = plot_sample_slice(image, labels, slice_index=z, opacity=1.0, affine=AFFINES[name])
    panels = _figure_panels(fig)
    necrosis = np.asarray(panels[4][1])  # the necrosis mask panel: the L marker in the class colour
    assert _on_edge(necrosis, "L", "right")
    assert {"A", "P", "R", "L"} <= {t.get_text() for t in panels[0][0].texts}
    zA = markers["A"][0]
    fig = plot_predictions([image], [labels], [labels], slice_index=zA, opacity=1.0, affine=AFFINES[name])
    gt_panel = np.asarray(_figure_panels(fig)[1][1])
    assert _on_edge(gt_panel, "A", "top")
    fig = plot_sample_slice(image, labels, slice_index=z)
    assert all(not ax.texts for ax, _ in _figure_panels(fig))


def test_cache_affine_of_kaggle_and_nifti_caches(tmp_path):
    from tumorlib.data.cache import cache_affine
    from tumorlib.io.nifti_write import BRATS2020_AFFINE

    index = {"reader": "kaggle", "volumes": {"3": {"zoom": [1.0, 0.5, 0.5]}}}
    expected = np.array(BRATS2020_AFFINE, float)
    expected[:3, :2] *= 2.0  # H and W voxels twice as large after a 0.5 zoom
    assert np.allclose(cache_affine(index, 3), expected)
    assert np.allclose(cache_affine({"reader": "custom", "volumes": {"0": {}}}, 0), np.eye(4))
