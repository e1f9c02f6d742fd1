"""Lesion-wise BraTS 2023 metrics: against the official code's numbers and small hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tumorlib.core.brats import labels_to_regions
from tumorlib.evaluation.lesions import (
    LESION_COLUMNS,
    LESION_COUNT_COLUMNS,
    LESION_MISS_HD95,
    lesion_scores,
    region_lesion_scores,
)
from tumorlib.evaluation.surface_distance import robust_hausdorff, surfel_areas

FIXTURES = Path(__file__).parent / "fixtures" / "lesion_metrics"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CASES = sorted(EXPECTED["cases"])


@pytest.fixture(scope="module")
def arrays():
    with np.load(FIXTURES / "cases.npz") as data:
        return {k: data[k] for k in data.files}


def test_fixture_provenance_names_the_official_commit():
    prov = EXPECTED["provenance"]
    assert "rachitsaluja/BraTS-2023-Metrics" in prov["code"]
    assert len(prov["commit"]) == 40
    assert len(CASES) >= 8
    assert (FIXTURES / "make_fixtures.py").is_file()


@pytest.mark.parametrize("name", CASES)
def test_matches_official_brats2023_code(arrays, name):
    case = EXPECTED["cases"][name]
    got = lesion_scores(arrays[f"{name}_pred"], arrays[f"{name}_ref"], case["spacing"])
    for region, want in case["regions"].items():
        r = region.lower()
        assert got[f"lesion_dice_{r}"] == pytest.approx(want["LesionWise_Score_Dice"], abs=1e-6), region
        assert got[f"lesion_hd95_{r}"] == pytest.approx(want["LesionWise_Score_HD95"], abs=1e-3), region
        assert got[f"lesions_tp_{r}"] == want["Num_TP"], region
        assert got[f"lesions_fn_{r}"] == want["Num_FN"], region
        assert got[f"lesions_fp_{r}"] == want["Num_FP"], region


@pytest.mark.parametrize("name", CASES)
def test_surface_distance_port_matches_official_legacy_hd95(arrays, name):
    case = EXPECTED["cases"][name]
    pred = labels_to_regions(arrays[f"{name}_pred"])
    ref = labels_to_regions(arrays[f"{name}_ref"])
    for i, (region, want) in enumerate(case["regions"].items()):
        if not pred[i].any() and not ref[i].any():
            continue  # the official code answers 0 without computing
        hd = robust_hausdorff(ref[i], pred[i], case["spacing"])
        hd = LESION_MISS_HD95 if np.isinf(hd) else hd
        assert hd == pytest.approx(want["Legacy_HD95"], abs=1e-3), region


def test_keys_and_columns():
    z = np.zeros((8, 8, 8), np.uint8)
    out = lesion_scores(z, z)
    assert tuple(out) == LESION_COLUMNS + LESION_COUNT_COLUMNS
    assert LESION_COLUMNS == ("lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et",
                              "lesion_hd95_wt", "lesion_hd95_tc", "lesion_hd95_et")
    assert all(out[f"lesion_dice_{r}"] == 1.0 and out[f"lesion_hd95_{r}"] == 0.0 for r in ("wt", "tc", "et"))


def _cube(shape=(30, 30, 30), lo=(5, 5, 5), size=4):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def test_perfect_lesion():
    gt = _cube()  # 64 voxels: scored
    assert region_lesion_scores(gt, gt) == {"dice": 1.0, "hd95": 0.0, "tp": 1, "fn": 0, "fp": 0}


def test_false_positive_scores_zero_and_374():
    gt = _cube()
    pred = gt | _cube(lo=(20, 20, 20), size=2)
    out = region_lesion_scores(pred, gt)
    assert out["dice"] == pytest.approx(0.5) and out["hd95"] == pytest.approx(374 / 2)
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 1)


def test_small_ground_truth_lesions_are_ignored():
    big, small = _cube(), _cube(lo=(20, 20, 20), size=3)  # 64 and 27 voxels
    out = region_lesion_scores(np.zeros_like(big), big | small)
    assert (out["dice"], out["hd95"], out["fn"]) == (0.0, 374.0, 1)  # only the big one counts
    only_small = region_lesion_scores(np.zeros_like(big), small)
    assert (only_small["dice"], only_small["hd95"]) == (1.0, 0.0)  # nothing left to count
    matched_small = region_lesion_scores(small, small)  # a prediction of an ignored lesion is no FP
    assert (matched_small["dice"], matched_small["fp"]) == (1.0, 0)


def test_threshold_is_a_volume_in_mm3():
    gt = _cube(size=3)  # 27 voxels
    assert region_lesion_scores(gt, gt, spacing=(1, 1, 1))["tp"] == 0  # 27 mm^3: ignored
    assert region_lesion_scores(gt, gt, spacing=(2, 1, 1))["tp"] == 1  # 54 mm^3: scored


def test_dilation_element_is_the_official_18_neighbour_one():
    gt = _cube(lo=(5, 5, 5), size=4)  # corner voxel at (8, 8, 8)
    edge = gt.copy()
    edge[10, 10, 10] = True  # (2, 2, 2) from the corner: reached by 3 dilations of the 18-neighbour element
    assert region_lesion_scores(edge, gt)["fp"] == 0
    corner = gt.copy()
    corner[11, 11, 11] = True  # (3, 3, 3): a 26-neighbour cube would reach it, the official element does not
    assert region_lesion_scores(corner, gt)["fp"] == 1
    face = gt.copy()
    face[12, 6, 6] = True  # 4 voxels off a face: beyond 3 dilations
    assert region_lesion_scores(face, gt)["fp"] == 1


def test_dilation_groups_nearby_components_into_one_lesion():
    gt = _cube(lo=(5, 5, 5), size=4) | _cube(lo=(5, 5, 14), size=4)  # 5 voxels apart: one lesion
    pred = _cube(lo=(5, 5, 5), size=4)
    out = region_lesion_scores(pred, gt)
    assert (out["tp"], out["fn"], out["fp"]) == (1, 0, 0)
    assert out["dice"] == pytest.approx(2 * 64 / (64 + 128))
    far = _cube(lo=(5, 5, 5), size=4) | _cube(lo=(5, 5, 20), size=4)  # 11 apart: two lesions
    out = region_lesion_scores(pred, far)
    assert (out["tp"], out["fn"], out["dice"]) == (1, 1, 0.5)


def test_fp_only_and_fn_only_labels():
    z = np.zeros((20, 20, 20), np.uint8)
    tumour = z.copy()
    tumour[4:9, 4:9, 4:9] = 2
    tumour[5:8, 5:8, 5:8] = 4  # 27 voxels of ET: ignored in ET and TC
    fp = lesion_scores(tumour, z)
    assert fp["lesion_dice_wt"] == 0.0 and fp["lesion_hd95_wt"] == 374.0 and fp["lesions_fp_wt"] == 1
    fn = lesion_scores(z, tumour)
    assert fn["lesion_dice_wt"] == 0.0 and fn["lesions_fn_wt"] == 1
    assert fn["lesion_dice_et"] == 1.0 and fn["lesion_hd95_et"] == 0.0


def test_bad_input_raises():
    z = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        lesion_scores(z + 3, z)
    with pytest.raises(ValueError, match="shape"):
        lesion_scores(z, np.zeros((8, 8, 9), np.uint8))


def test_surfel_areas_of_a_unit_cube():
    areas = surfel_areas((1, 1, 1))
    assert areas[0] == 0 and areas[255] == 0
    # a single voxel: its 8 corner codes each hold one triangle of area sqrt(3)/8
    assert areas[1] == pytest.approx(np.sqrt(3) / 8)
    one = _cube(shape=(5, 5, 5), lo=(2, 2, 2), size=1)
    assert robust_hausdorff(one, one) == 0.0
    assert np.isinf(robust_hausdorff(one, np.zeros_like(one)))
