"""Post-processing: the per-region component rule, the total-ET rule, run records and the tuner, on
hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

import json

from tumorlib.core.config import get_config
from tumorlib.evaluation.tuning import LabelCase, choose_postprocessing, rule_scores
from tumorlib.inference.postprocess import (
    POSTPROCESSING_FILE,
    PostProcessing,
    remove_small_et,
    run_postprocessing,
    write_postprocessing,
)


def _case(et_voxels, edema=True, shape=(10, 10, 10)):
    lab = np.zeros(shape, np.uint8)
    if edema:
        lab[1:9, 1:9, 1:9] = 2
    lab.reshape(-1)[:et_voxels] = 4
    return lab


def test_small_et_becomes_necrosis():
    lab = _case(5)
    out = remove_small_et(lab, 6)
    assert not (out == 4).any() and (out == 1).sum() == 5
    assert ((out == 2) == (lab == 2)).all()
    assert (lab == 4).sum() == 5  # the input is not changed


def test_threshold_is_strict_and_zero_is_off():
    lab = _case(5)
    assert (remove_small_et(lab, 5) == 4).sum() == 5  # 5 voxels are not fewer than 5
    assert (remove_small_et(lab, 0) == lab).all()
    assert (remove_small_et(_case(0), 100) == _case(0)).all()


def test_rule_counts_the_total_not_each_component():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0, 0, 0:3] = 4
    lab[9, 9, 0:3] = 4  # two pieces of 3: 6 in total
    assert (remove_small_et(lab, 5) == 4).sum() == 6
    assert (remove_small_et(lab, 7) == 1).sum() == 6


def test_bad_threshold():
    with pytest.raises(ValueError, match="min_voxels"):
        remove_small_et(_case(1), -1)
    with pytest.raises(ValueError, match="min_voxels"):
        remove_small_et(_case(1), 2.5)


def _tumour(shape=(20, 20, 20)):
    """An 8x8x8 tumour: an edema shell two voxels thick around a necrosis core with an enhancing face."""
    lab = np.zeros(shape, np.uint8)
    lab[1:9, 1:9, 1:9] = 2
    lab[3:7, 3:7, 3:7] = 1
    lab[3:7, 3:7, 3] = 4
    return lab


def test_small_wt_component_becomes_background():
    lab = _tumour()
    lab[15:17, 15:17, 15:17] = 2  # an 8-voxel edema blob far away
    rule = PostProcessing(min_mm3=(10, 0, 0))
    done = rule.apply_with_removed(lab)
    assert (done.labels[15:17, 15:17, 15:17] == 0).all()
    assert (done.labels[:10, :10, :10] == lab[:10, :10, :10]).all()  # the tumour stays
    assert done.components == {"wt": 1, "tc": 0, "et": 0} and done.removed["wt"].sum() == 8
    assert (lab[15:17, 15:17, 15:17] == 2).all()  # the input is not changed
    assert (PostProcessing(min_mm3=(8, 0, 0)).apply(lab) == lab).all()  # 8 mm3 is not below 8 mm3


def test_sizes_are_mm3_from_the_voxel_size():
    lab = _tumour()
    lab[15:17, 15:17, 15:17] = 2  # 8 voxels: 8 mm3 at 1 mm, 64 mm3 at 2 mm
    rule = PostProcessing(min_mm3=(20, 0, 0))
    assert (rule.apply(lab, (1.0, 1.0, 1.0))[15:17, 15:17, 15:17] == 0).all()
    assert (rule.apply(lab, (2.0, 2.0, 2.0))[15:17, 15:17, 15:17] == 2).all()
    with pytest.raises(ValueError, match="spacing"):
        rule.apply(lab, (1.0, 0.0, 1.0))


def test_small_tc_becomes_edema_and_small_et_becomes_necrosis():
    lab = _tumour()
    lab[1, 8, 8] = 1  # a one-voxel necrosis piece in the edema shell: its own TC component
    lab[5, 5, 6] = 4  # a one-voxel ET inside the necrosis: its own ET component
    tc = PostProcessing(min_mm3=(0, 2, 0)).apply(lab)
    assert tc[1, 8, 8] == 2 and tc[5, 5, 5] == 1 and tc[5, 5, 6] == 4
    et = PostProcessing(min_mm3=(0, 0, 2)).apply(lab)
    assert et[5, 5, 6] == 1 and (et[3:7, 3:7, 3] == 4).all()
    assert ((et > 0) == (lab > 0)).all()  # ET and TC rules never change the whole tumour


def test_keep_largest_and_26_connectivity():
    lab = _tumour()
    lab[15:19, 15:19, 15:19] = 2  # a second, smaller tumour (64 voxels against 512)
    lab[9, 9, 9] = 2  # touches the first tumour's corner only: 26-connected to it
    out = PostProcessing(keep_largest=(True, False, False)).apply(lab)
    assert (out[15:19, 15:19, 15:19] == 0).all() and out[9, 9, 9] == 2
    assert (PostProcessing().apply(lab) == lab).all() and not PostProcessing().active


def test_total_et_rule_is_part_of_the_rule():
    lab = _case(5)
    rule = PostProcessing(et_min_voxels=6)
    done = rule.apply_with_removed(lab)
    assert (done.labels == remove_small_et(lab, 6)).all() and done.components["et"] == 1
    assert "5" not in rule.describe() and "6 voxels" in rule.describe()


def test_rule_json_round_trip_and_bad_values():
    rule = PostProcessing(min_mm3=(200, 50.5, 0), keep_largest=(True, False, False), et_min_voxels=3)
    assert PostProcessing.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    assert PostProcessing.from_dict({"et_min_voxels": 7}) == PostProcessing(et_min_voxels=7)
    with pytest.raises(ValueError, match="min_mm3"):
        PostProcessing.from_dict({"min_mm3": {"wt": 1, "tc": 2}})
    with pytest.raises(ValueError, match="keep_largest.wt"):
        PostProcessing.from_dict({"keep_largest": {"wt": 1, "tc": False, "et": False}})
    with pytest.raises(ValueError, match="unknown keys"):
        PostProcessing.from_dict({"min_voxels": 3})
    with pytest.raises(ValueError, match="min_mm3"):
        PostProcessing(min_mm3=(-1, 0, 0))
    with pytest.raises(ValueError, match="et_min_voxels"):
        PostProcessing(et_min_voxels=2.5)


def test_run_rule_from_the_record_the_old_record_or_the_config(tmp_path):
    config = get_config("ci", et_min_voxels=4)
    assert run_postprocessing(tmp_path, config) == PostProcessing(et_min_voxels=4)
    (tmp_path / POSTPROCESSING_FILE).write_text('{"et_min_voxels": 30, "split": "val", "table": []}')
    assert run_postprocessing(tmp_path, config) == PostProcessing(et_min_voxels=30)  # a record of before
    rule = PostProcessing(min_mm3=(100, 0, 0))
    (tmp_path / POSTPROCESSING_FILE).unlink()  # the hand-written record is the user's: tuning never replaces it
    write_postprocessing(tmp_path, {"rule": rule.to_dict()})
    assert run_postprocessing(tmp_path, config) == rule
    (tmp_path / POSTPROCESSING_FILE).write_text('{"rule": {"min_mm3": {"wt": -5, "tc": 0, "et": 0}}}')
    with pytest.raises(ValueError, match=POSTPROCESSING_FILE):
        run_postprocessing(tmp_path, config)
    (tmp_path / POSTPROCESSING_FILE).write_text('[1, 2]')
    with pytest.raises(ValueError, match="not a post-processing record"):
        run_postprocessing(tmp_path, config)


def test_tuner_removes_false_lesions_and_keeps_the_tumour():
    ref = _tumour()
    preds = []
    for far in ((14, 14, 14), (15, 2, 15), (2, 15, 14)):
        pred = _tumour()
        pred[far[0]:far[0] + 2, far[1]:far[1] + 2, far[2]:far[2] + 2] = 2  # an 8-voxel false edema blob
        preds.append(pred)
    cases = [LabelCase(p, ref) for p in preds]
    raw = rule_scores(PostProcessing(), cases)
    assert raw["lesion_dice_wt"] == pytest.approx(0.5)  # one true lesion, one false positive each
    rule, candidates = choose_postprocessing(cases, grid=(0, 5, 10, 50, 1000))
    assert rule.min_mm3[0] == 10 and not rule.keep_largest[0]  # the first size that removes the blobs
    assert rule_scores(rule, cases)["lesion_dice_wt"] == pytest.approx(1.0)
    refused = [c for c in candidates if c["stage"] == "wt" and c["min_mm3"] == 1000]
    assert refused and not any(c["admissible"] for c in refused)  # removes the tumour: legacy Dice falls
    assert len(candidates) == 3 * 2 * 5 and {"stage", "min_mm3", "keep_largest", "mean_lesion_dice"} <= set(candidates[0])


def test_tuner_stays_off_when_nothing_helps_and_refuses_no_cases():
    cases = [LabelCase(_tumour(), _tumour())]
    rule, _ = choose_postprocessing(cases, grid=(0, 10, 100))
    assert rule == PostProcessing() and not rule.active
    assert choose_postprocessing(cases, PostProcessing(et_min_voxels=3), grid=(0,))[0].et_min_voxels == 3
    with pytest.raises(ValueError, match="no validation cases"):
        choose_postprocessing([])
    with pytest.raises(ValueError, match="3-D"):
        LabelCase(np.zeros((2, 2)), np.zeros((2, 2)))


def test_plot_postprocessing_goes_through_the_removed_component():
    from tumorlib.viz import plot_postprocessing

    image = np.random.default_rng(0).normal(size=(4, 20, 20, 20)).astype(np.float32)
    raw = _tumour()
    raw[15:17, 15:17, 15:17] = 2
    post = PostProcessing(min_mm3=(10, 0, 0)).apply(raw)
    fig = plot_postprocessing(image, raw, post, title="t")
    assert len(fig.axes) == 9 and [ax.get_ylabel() for ax in fig.axes[::3]] == ["before", "after", "changed"]
    assert fig.axes[0].get_title() in ("axial (z=15)", "axial (z=16)")  # through the removed blob (voxels 15-16)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(fig.legends) == 1 and "removed (now background)" in labels


def test_postprocessing_table_means_before_and_after():
    import pandas as pd

    from tumorlib.app.notebook import postprocessing_table

    cols = {}
    for kind in ("dice", "lesion_dice", "lesion_hd95"):
        for r in ("wt", "tc", "et"):
            cols[f"{kind}_{r}"] = [1.0, 0.5]
            cols[f"raw_{kind}_{r}"] = [0.5, 0.0]
    cols.update({"components_removed_wt": [2, 0], "components_removed_tc": [1, 0], "components_removed_et": [0, 1]})
    table = postprocessing_table(pd.DataFrame(cols))
    assert list(table.index) == ["without", "with"]
    assert table.loc["with", "lesion Dice WT"] == 0.75 and table.loc["without", "Dice ET"] == 0.25
    assert table.loc["with", "components removed"] == 2.0 and table.loc["without", "components removed"] == 0.0


def test_tuning_replaces_only_its_own_unchanged_record(tmp_path):
    path = tmp_path / POSTPROCESSING_FILE
    path.write_text('{"rule": {"min_mm3": {"wt": 50, "tc": 0, "et": 0}}}\n')  # written by hand
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="not a record tune-postprocessing wrote as it is now"):
        write_postprocessing(tmp_path, {"rule": PostProcessing(min_mm3=(100, 0, 0)).to_dict()})
    assert path.read_bytes() == before
    path.unlink()
    write_postprocessing(tmp_path, {"rule": PostProcessing(min_mm3=(100, 0, 0)).to_dict()})
    write_postprocessing(tmp_path, {"rule": PostProcessing(min_mm3=(200, 0, 0)).to_dict()})  # its own: replaced
    assert json.loads(path.read_text())["rule"]["min_mm3"]["wt"] == 200
    path.write_text(path.read_text().replace("200", "3000"))  # edited by hand since
    edited = path.read_bytes()
    with pytest.raises(FileExistsError, match="edited since"):
        write_postprocessing(tmp_path, {"rule": PostProcessing().to_dict()})
    assert path.read_bytes() == edited


def test_a_whole_tuning_record_from_before_output_records_is_tunings_own(tmp_path):
    """An upgrade: a run tuned by a tumorlib that kept no output records is tuned again, not refused."""
    path = tmp_path / POSTPROCESSING_FILE
    old = {"rule": PostProcessing(min_mm3=(100, 0, 0)).to_dict(), "rule_text": "WT >= 100 mm3", "candidates": [],
           "split": "val", "val_with": {}, "val_without": {}}
    path.write_text(json.dumps(old))
    write_postprocessing(tmp_path, {"rule": PostProcessing(min_mm3=(200, 0, 0)).to_dict()})
    assert json.loads(path.read_text())["rule"]["min_mm3"]["wt"] == 200
    path.write_text(json.dumps(old))  # recorded as tuning's once: a whole record put there since is refused
    with pytest.raises(FileExistsError, match="edited since"):
        write_postprocessing(tmp_path, {"rule": PostProcessing().to_dict()})
