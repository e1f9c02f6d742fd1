"""Radiological display from the data's geometry: marker voxels at known anatomical sides land on the
expected side of each displayed plane, for an RAS, the BraTS2020 and a permuted, flipped affine."""

from __future__ import annotations

import numpy as np
import pytest

from tumorlib.io.nifti_write import BRATS2020_AFFINE
from tumorlib.viz.orientation import display_transform, kaggle_affine, tumorlib_affine

SHAPE = (5, 6, 7)  # (D, H, W): three different sides, so a wrong transpose cannot pass
RAS = np.diag([1.0, 1.0, 1.0, 1.0])
# NIfTI axis 0 runs posterior, axis 1 superior, axis 2 left; 2 mm along axis 1
PERMUTED = np.array([[0.0, 0.0, -1.0, 10.0], [-1.0, 0.0, 0.0, 5.0], [0.0, 2.0, 0.0, -3.0], [0, 0, 0, 1]])
AFFINES = {"ras": RAS, "brats2020": BRATS2020_AFFINE, "permuted": PERMUTED}
# anatomical direction -> unit vector in RAS+ world coordinates
DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
EXPECTED_LABELS = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}


def _marker(affine, direction):
    """The (d, h, w) voxel furthest towards ``direction`` (world coordinates from the affine itself),
    centred on the other axes."""
    t = tumorlib_affine(affine)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = grid @ t[:3, :3].T + t[:3, 3]
    score = world @ np.array(DIRECTIONS[direction], float)
    best = grid[score >= score.max() - 1e-9]
    centre = np.array(SHAPE) // 2
    return tuple(best[np.argmin(np.abs(best - centre).sum(1))])


def _edge(image):
    """Which edges of a 2-D picture the single marked pixel touches."""
    (r,), (c,) = np.nonzero(image)
    rows, cols = image.shape
    return {"top": r == 0, "bottom": r == rows - 1, "left": c == 0, "right": c == cols - 1}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_markers_land_on_the_labelled_side(name):
    transform = display_transform(AFFINES[name], SHAPE)
    for plane, (top, bottom, left, right) in EXPECTED_LABELS.items():
        assert transform.labels(plane) == {"top": top, "bottom": bottom, "left": left, "right": right}
        for side, direction in transform.labels(plane).items():
            voxel = _marker(AFFINES[name], direction)
            volume = np.zeros(SHAPE, np.uint8)
            volume[voxel] = 1
            image = transform.plane(volume, plane, voxel[transform.axis(plane)])
            assert image.shape == transform.plane_shape(plane)
            assert _edge(image)[side], (name, plane, side, direction, voxel)
            assert image[transform.point(plane, voxel)] == 1


def test_axial_radiological_hand_cases():
    volume = np.zeros(SHAPE, np.uint8)
    # RAS: NIfTI i (tumorlib h) runs to the right, j (w) anterior: patient left is h = 0
    volume[2, 0, 3] = 1
    ras = display_transform(RAS, SHAPE)
    assert ras.axcodes == ("S", "R", "A")
    assert _edge(ras.plane(volume, "axial", 2))["right"]
    # BraTS2020: h runs to the patient's left, w posterior: the axial picture is the slice transposed
    brats = display_transform(BRATS2020_AFFINE, SHAPE)
    assert brats.axcodes == ("S", "L", "P")
    np.testing.assert_array_equal(brats.plane(volume, "axial", 2), volume[2].T)
    assert _edge(brats.plane(volume, "axial", 2))["left"]  # h = 0 is the patient's right here
    np.testing.assert_array_equal(kaggle_affine(), BRATS2020_AFFINE)
    # leading channel axes are kept
    stacked = np.stack([volume, 2 * volume])
    assert brats.plane(stacked, "coronal", 3).shape == (2, 5, 6)


def test_aspect_from_spacing():
    transform = display_transform(PERMUTED, SHAPE)
    assert transform.spacing == (1.0, 1.0, 2.0)  # tumorlib w is NIfTI axis 1 (2 mm, superior)
    assert transform.aspect("coronal") == pytest.approx(2.0)  # rows superior (2 mm), columns left (1 mm)
    assert transform.aspect("axial") == pytest.approx(1.0)


def test_refuses_bad_geometry():
    singular = RAS.copy()
    singular[2, 2] = 0.0
    with pytest.raises(ValueError, match="singular"):
        display_transform(singular, SHAPE)
    angle = np.radians(20)
    oblique = RAS.copy()
    oblique[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(ValueError, match="oblique by 20.0 degrees"):
        display_transform(oblique, SHAPE)
    slight = RAS.copy()
    slight[:2, :2] = [[np.cos(0.03), -np.sin(0.03)], [np.sin(0.03), np.cos(0.03)]]
    assert display_transform(slight, SHAPE).axcodes == ("S", "R", "A")  # 1.7 degrees: tolerated
    with pytest.raises(ValueError, match="4x4"):
        display_transform(np.eye(3), SHAPE)
    transform = display_transform(RAS, SHAPE)
    with pytest.raises(ValueError, match="unknown plane"):
        transform.plane(np.zeros(SHAPE), "oblique", 0)
    with pytest.raises(ValueError, match="display shape"):
        transform.plane(np.zeros((5, 6, 8)), "axial", 0)
    with pytest.raises(IndexError, match="axial index 9"):
        transform.plane(np.zeros(SHAPE), "axial", 9)


def test_kaggle_affine_is_the_brats2020_geometry():
    from tumorlib.io.nifti_write import BRATS2020_AFFINE
    from tumorlib.viz.orientation import display_transform, kaggle_affine

    np.testing.assert_array_equal(kaggle_affine(), BRATS2020_AFFINE)
    assert display_transform(kaggle_affine(), (155, 240, 240)).axcodes == ("S", "L", "P")
