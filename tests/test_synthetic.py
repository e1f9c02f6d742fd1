"""The embedded phantoms: real anatomy (ICBM152), BraTS-like tumour statistics, look-alikes, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tumorlib.data.anatomy import MAP_NAMES, deep_wm_points, random_geometry, sample_anatomy, template_dir
from tumorlib.data.synthetic import make_phantom

STATS_SHAPE = (32, 64, 64)
STATS_VOLUMES = range(1, 25)


@pytest.fixture(scope="module")
def phantoms():
    """24 phantoms of (32, 64, 64), seed 0: (image, mask) each."""
    return [make_phantom(STATS_SHAPE, seed=0, volume_id=v) for v in STATS_VOLUMES]


def _fractions(image, mask):
    brain = (image > 0).any(0)
    return mask.reshape(3, -1).sum(1) / brain.sum()


def test_template_ships_with_nilearn():
    folder = template_dir()
    assert {"t1", "gm", "wm"} <= {k for k in ("t1", "gm", "wm")
                                   if list(folder.glob(f"mni_icbm152_{k}_tal_nlin_sym_09a*.nii*"))}
    points = deep_wm_points()
    assert points.shape[1] == 3 and len(points) > 1000
    assert points[:, 2].min() > -8.0  # cerebrum only


def test_anatomy_on_the_brats_grid_has_textbook_tissue():
    maps = sample_anatomy((155 // 2, 120, 120), random_geometry(np.random.default_rng(1)), [])
    t1, gm, wm, brain = (maps[MAP_NAMES.index(k)] for k in ("t1", "gm", "wm", "brain"))
    inside = brain > 0.5
    # BraTS orientation: W (anterior-posterior) is the long in-plane axis, H (left-right) the short one
    extent = [np.ptp(np.nonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[0]) for a in range(3)]
    assert extent[2] > extent[1] * 1.1
    assert 0.08 < inside.mean() < 0.3  # the brain fills a BraTS-like share of the box
    assert t1[wm > 0.9].mean() > t1[gm > 0.9].mean() > t1[inside & (gm + wm < 0.1)].mean()


def test_phantom_is_deterministic_and_seeded():
    a_img, a_mask = make_phantom((24, 48, 48), seed=3, volume_id=5)
    b_img, b_mask = make_phantom((24, 48, 48), seed=3, volume_id=5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert a_img.shape == (4, 24, 48, 48) and a_img.dtype == np.float32
    assert a_mask.shape == (3, 24, 48, 48) and a_mask.dtype == np.uint8
    assert not np.array_equal(make_phantom((24, 48, 48), seed=4, volume_id=5)[0], a_img)
    assert not np.array_equal(make_phantom((24, 48, 48), seed=3, volume_id=6)[0], a_img)


@pytest.mark.parametrize("shape", [(8, 12, 10), (10, 20, 24), (12, 24, 20)])
def test_small_and_odd_shapes(shape):
    image, mask = make_phantom(shape, seed=0, volume_id=2)
    assert image.shape == (4, *shape) and mask.shape == (3, *shape)
    brain = (image > 0).any(0)
    assert brain.any() and (image[:, ~brain] == 0).all() and (image[:, brain] > 0).all()


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="at least 8 voxels"):
        make_phantom((7, 32, 32))


def test_skull_stripped_disjoint_labels_inside_brain(phantoms):
    for image, mask in phantoms[:6]:
        brain = (image > 0).any(0)
        assert (image[:, ~brain] == 0).all()
        assert mask.sum(0).max() <= 1
        assert not mask[:, ~brain].any()


def test_tumour_fractions_are_brats_like(phantoms):
    fractions = np.array([_fractions(*p) for p in phantoms])
    wt = fractions.sum(1)
    assert 0.02 < np.median(wt) < 0.09  # BraTS: a few % of the brain; median near 5 %
    assert wt.min() > 0.003 and wt.max() < 0.2
    # edema is the largest class on average, as in BraTS
    assert fractions[:, 1].mean() > fractions[:, 0].mean() and fractions[:, 1].mean() > fractions[:, 2].mean()


def test_class_presence_statistics(phantoms):
    present = np.array([p[1].reshape(3, -1).any(1) for p in phantoms])
    assert present[:, 1].all()  # every case has edema
    assert 0.5 <= present[:, 0].mean() <= 0.95  # necrosis/NET absent in some cases (~a quarter)
    assert 0.5 <= present[:, 2].mean() <= 0.95  # enhancing absent in low-grade-like cases


def test_intensities_overlap_and_look_alikes(phantoms):
    flair_rise, enh_rise, enh_vs_lookalike = [], [], []
    for image, mask in phantoms:
        brain = (image > 0).any(0)
        healthy = brain & ~mask.any(0)
        flair_rise.append(np.median(image[3][mask[1] > 0]) / np.median(image[3][healthy]))
        if mask[2].sum() > 20:
            enh = np.median(image[1][mask[2] > 0])
            enh_rise.append(enh / np.median(image[1][healthy]))
            # vessels, plexus and dura: healthy voxels as bright on T1ce as the median enhancing voxel
            enh_vs_lookalike.append((image[1][healthy] >= enh).sum() / (mask[2] > 0).sum())
    assert 1.1 < np.median(flair_rise) < 1.8  # edema bright on FLAIR, but not a separate intensity band
    assert 1.1 < np.median(enh_rise) < 2.0
    assert np.median(enh_vs_lookalike) > 0.05


def test_mass_effect_moves_the_anatomy():
    rng = np.random.default_rng(0)
    geometry = random_geometry(rng)
    centre = geometry.to_world(deep_wm_points()[:1])[0]
    plain = sample_anatomy((40, 60, 60), geometry, [])
    pushed = sample_anatomy((40, 60, 60), geometry, [(centre, 0.4, 20.0)])
    assert np.abs(plain - pushed).mean() > 1e-3
