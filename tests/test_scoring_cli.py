"""Lesion-wise columns in evaluate, ``tumorlib evaluate --pred/--ref`` and ET post-processing, via the CLI.

Runs are freshly initialised ci networks whose 1x1x1 head gives constant logits (as in test_evaluate), so
every voxel of the cache's crop gets the same class and the expected outputs are known in advance.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from tumorlib.app.cli import main
from tumorlib.core.brats import channels_to_labels
from tumorlib.core.config import get_config
from tumorlib.data.cache import load_cache_index, load_cached_volume
from tumorlib.evaluation.evaluate import EVAL_COLUMNS, evaluate, summary_path
from tumorlib.evaluation.label_files import LABEL_FILE_COLUMNS, score_label_files
from tumorlib.evaluation.lesions import LESION_COLUMNS, lesion_scores
from tumorlib.evaluation.tuning import MIN_MM3_GRID
from tumorlib.inference.postprocess import POSTPROCESSING_FILE, PostProcessing, write_postprocessing
from tumorlib.inference.predict import predict
from tumorlib.nn.checkpoint import atomic_torch_save
from tumorlib.nn.unet import model_from_config
from constant_runs import make_run as _constant_run


def _labels_file(path, labels):
    nib.save(nib.Nifti1Image(np.asarray(labels, np.uint8), np.eye(4)), str(path))
    return path


def _label_folders(tmp_path):
    rng = np.random.default_rng(0)
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for case in ("a", "b"):
        truth = np.zeros((20, 20, 20), np.uint8)
        truth[4:12, 4:12, 4:12] = 2
        truth[6:10, 6:10, 6:10] = 4
        guess = truth.copy()
        guess[rng.integers(0, 20, 30), rng.integers(0, 20, 30), rng.integers(0, 20, 30)] = 1
        _labels_file(ref / f"{case}_seg.nii.gz", truth)
        _labels_file(pred / f"{case}.nii.gz", guess)
    return pred, ref


def test_evaluate_has_lesion_columns_of_the_decoded_labels(tiny_data, tiny_cache, tmp_path):
    run = _constant_run(tmp_path / "run", [10.0, 10.0, 10.0])  # ET over the whole crop
    frame = evaluate(run, tiny_data, tiny_cache, split="all", out=tmp_path / "m.csv", device="cpu", progress=False)
    assert tuple(frame.columns) == EVAL_COLUMNS and set(LESION_COLUMNS) <= set(frame.columns)
    assert (frame["et_min_voxels"] == 0).all()
    summary = pd.read_csv(summary_path(tmp_path / "m.csv"), index_col=0)
    assert set(LESION_COLUMNS) <= set(summary.columns)
    for _, row in frame.iterrows():
        _, mask = load_cached_volume(tiny_cache, int(row["volume"]))
        ref = channels_to_labels(np.asarray(mask))
        expected = lesion_scores(np.full(ref.shape, 4, np.uint8), ref)
        for name in LESION_COLUMNS:
            assert row[name] == pytest.approx(expected[name], abs=1e-9), name


def test_cli_evaluate_scores_label_files(tmp_path, capsys):
    pred, ref = _label_folders(tmp_path)
    out = tmp_path / "scores" / "m.csv"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(LABEL_FILE_COLUMNS) and table["case"].tolist() == ["a", "b"]
    expected = score_label_files(pred, ref)
    np.testing.assert_allclose(table.drop(columns="case").to_numpy(float),
                               expected.drop(columns="case").to_numpy(float))
    assert summary_path(out).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--run", "R", "--pred", "P", "--ref", "Q", "--out", "x.csv"], "not both"),
    (["--pred", "P", "--out", "x.csv"], "--pred DIR --ref DIR --out CSV"),
    (["--pred", "P", "--ref", "Q"], "--pred DIR --ref DIR --out CSV"),
])
def test_cli_evaluate_modes_are_exclusive(argv, message, capsys):
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_evaluate_refuses_outputs_that_destroy_inputs(tmp_path, capsys):
    pred, ref = _label_folders(tmp_path)
    before = {p: p.read_bytes() for p in [*pred.iterdir(), *ref.iterdir()]}
    for out, message in ((pred / "m.csv", "inside the input folder"), (ref / "m.csv", "inside the input folder"),
                         (ref / "a_seg.nii.gz", "must end in .csv"), (tmp_path / "config.json", "must end in .csv")):
        assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert {p: p.read_bytes() for p in [*pred.iterdir(), *ref.iterdir()]} == before
    link = tmp_path / "link.csv"
    link.symlink_to(pred / "a.nii.gz")  # resolves into the prediction folder
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(link)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    hard = tmp_path / "hard.csv"
    os.link(ref / "b_seg.nii.gz", hard)  # the same file under another name, outside both folders
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(hard)]) == 2
    assert "is an input file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in [*pred.iterdir(), *ref.iterdir()]} == before


def test_et_min_voxels_config_field_is_checked():
    assert get_config("ci").et_min_voxels == 0 and get_config("demo").et_min_voxels == 0
    with pytest.raises(ValueError, match="et_min_voxels"):
        get_config("ci", et_min_voxels=-1)


def test_cli_tune_postprocessing_writes_the_run_and_evaluate_predict_apply_it(tiny_data, tiny_cache, tmp_path,
                                                                             capsys):
    run = _constant_run(tmp_path / "run", [-10.0, -10.0, 10.0])  # ET over the whole crop: a large ET
    config_before = (run / "config.json").read_text()
    argv = ["--run", str(run), "--data", str(tiny_data), "--cache", str(tiny_cache), "--device", "cpu"]
    assert main(["tune-postprocessing", *argv]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / POSTPROCESSING_FILE).read_text())
    assert len(record["candidates"]) == 3 * 2 * len(MIN_MM3_GRID) and record["split"] == "val"
    assert {c["stage"] for c in record["candidates"]} == {"wt", "tc", "et"}
    # one component per region filling the crop: no removal helps, and keeping it is the simplest choice
    assert PostProcessing.from_dict(record["rule"]) == PostProcessing() and record["rule_text"] == "none"
    assert "post-processing: none" in out and "test (" in out and "lesion-wise" in out
    assert record["test_with"] == pytest.approx(record["test_without"])
    assert (run / "config.json").read_text() == config_before
    plain = evaluate(run, tiny_data, tiny_cache, split="all", out=tmp_path / "a.csv", device="cpu", progress=False)
    write_postprocessing(run, {**record, "rule": PostProcessing(et_min_voxels=10**9).to_dict()})  # every ET "small"
    relabelled = evaluate(run, tiny_data, tiny_cache, split="all", out=tmp_path / "b.csv", device="cpu",
                          progress=False)
    assert (plain["et_min_voxels"] == 0).all() and (relabelled["et_min_voxels"] == 10**9).all()
    for vid, dice_et in zip(relabelled["volume"], relabelled["dice_et"]):
        _, mask = load_cached_volume(tiny_cache, int(vid))
        assert dice_et == (1.0 if not np.asarray(mask)[2].any() else 0.0)
    np.testing.assert_allclose(relabelled["dice_wt"], plain["dice_wt"])
    np.testing.assert_allclose(relabelled["raw_dice_et"], plain["dice_et"])  # the raw columns: before the rule
    assert (relabelled["components_removed_et"] == 1).all() and (plain["components_removed_et"] == 0).all()
    write_postprocessing(run, {"rule": PostProcessing(min_mm3=(1e12, 0, 0)).to_dict()})  # every component "small"
    emptied = evaluate(run, tiny_data, tiny_cache, split="all", out=tmp_path / "c.csv", device="cpu", progress=False)
    assert (emptied["components_removed_wt"] >= 1).all()
    np.testing.assert_allclose(emptied["raw_dice_wt"], plain["dice_wt"])
    summary = pd.read_csv(summary_path(tmp_path / "c.csv"), index_col=0)
    assert summary.loc["mean", "raw_dice_wt"] == pytest.approx(plain["dice_wt"].mean())
    write_postprocessing(run, {"rule": PostProcessing(et_min_voxels=10**9).to_dict()})
    labels = np.asarray(nib.load(str(predict(run, tmp_path / "s.nii.gz", data_dir=tiny_data, volume_id=1,
                                             device="cpu"))).dataobj)
    assert 4 not in np.unique(labels) and 1 in np.unique(labels)


def test_cli_tune_postprocessing_never_replaces_a_hand_written_rule(tiny_data, tiny_cache, tmp_path, capsys):
    run = _constant_run(tmp_path / "run", [-10.0, -10.0, 10.0])
    (run / POSTPROCESSING_FILE).write_text('{"rule": {"min_mm3": {"wt": 50, "tc": 0, "et": 0}}}\n')
    before = (run / POSTPROCESSING_FILE).read_bytes()
    assert main(["tune-postprocessing", "--run", str(run), "--data", str(tiny_data), "--cache", str(tiny_cache),
                 "--device", "cpu", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and POSTPROCESSING_FILE in err[0] and "never replaced" in err[0]
    assert (run / POSTPROCESSING_FILE).read_bytes() == before


def test_a_bad_postprocessing_record_is_named(tiny_data, tiny_cache, tmp_path, capsys):
    run = _constant_run(tmp_path / "run", [-10.0, -10.0, 10.0])
    (run / POSTPROCESSING_FILE).write_text('{"et_min_voxels": -3}')  # a record of before the per-region rule
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data), "--cache", str(tiny_cache),
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert POSTPROCESSING_FILE in err and "et_min_voxels" in err


def test_cli_predict_saves_probabilities_beside_the_labels(tiny_data, tmp_path, capsys):
    run = _constant_run(tmp_path / "run", [-10.0, 0.0, 10.0])  # sigmoids 0, 0.5, 1 inside the crop
    out = tmp_path / "out" / "case.nii.gz"
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "2", "--out", str(out),
                 "--device", "cpu", "--save-probabilities", "--quiet"]) == 0
    prob_path = tmp_path / "out" / "case_probabilities.nii.gz"
    assert str(prob_path) in capsys.readouterr().out
    labels, probs = nib.load(str(out)), nib.load(str(prob_path))
    assert probs.shape == (*labels.shape, 3) and probs.get_data_dtype() == np.uint16
    np.testing.assert_allclose(probs.affine, labels.affine)
    assert int(probs.header["qform_code"]) == int(labels.header["qform_code"])
    values = probs.get_fdata()
    tumour = np.asarray(labels.dataobj) > 0
    assert tumour.any() and (np.asarray(labels.dataobj)[tumour] == 4).all()
    np.testing.assert_allclose(values[tumour], np.broadcast_to([0.0, 0.5, 1.0], (int(tumour.sum()), 3)), atol=1e-3)
    assert (values[~tumour] == 0).all()
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "2", "--out",
                 str(tmp_path / "plain.nii.gz"), "--device", "cpu", "--quiet"]) == 0
    assert not (tmp_path / "plain_probabilities.nii.gz").exists()


def test_cli_predict_and_evaluate_average_several_runs(tiny_data, tiny_cache, tmp_path, capsys):
    a = _constant_run(tmp_path / "a", [10.0, -10.0, -10.0])  # NCR everywhere in the crop
    b = _constant_run(tmp_path / "b", [-10.0, 10.0, -10.0])  # ED everywhere in the crop
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "--run", str(a), "--run", str(b), "--data", str(tiny_data), "--volume", "2",
                 "--out", str(out), "--device", "cpu", "--save-probabilities", "--quiet"]) == 0
    values = nib.load(str(tmp_path / "seg_probabilities.nii.gz")).get_fdata()
    tumour = np.asarray(nib.load(str(out)).dataobj) > 0
    np.testing.assert_allclose(values[tumour], np.broadcast_to([0.5, 0.5, 0.0], (int(tumour.sum()), 3)), atol=1e-3)
    argv = ["--data", str(tiny_data), "--cache", str(tiny_cache), "--device", "cpu", "--quiet"]
    assert main(["evaluate", "--run", str(a), "--run", str(b), *argv]) == 0
    assert (a / "metrics_test_ensemble2.csv").is_file() and not (a / "metrics_test.csv").exists()
    ensemble = pd.read_csv(a / "metrics_test_ensemble2.csv")
    single = evaluate(a, tiny_data, tiny_cache, out=tmp_path / "single.csv", device="cpu", progress=False)
    assert ensemble["volume"].tolist() == single["volume"].tolist()
    other = tmp_path / "other"
    config = get_config("ci", patch_size=(16, 16, 16))
    torch.manual_seed(0)
    model = model_from_config(config)
    other.mkdir()
    config.save(other / "config.json")
    atomic_torch_save({"model": model.state_dict(), "epoch": 1, "config": config.to_dict()},
                      other / "checkpoints" / "best_model.pth")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(a), "--run", str(other), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"run {other}: patch_size" in err


def test_evaluate_pred_skips_the_maps_predict_writes_beside_a_label_file(tmp_path):
    pred, ref = _label_folders(tmp_path)
    for suffix in ("_probabilities", "_entropy", "_variance"):  # predict --save-probabilities / --uncertainty
        _labels_file(pred / f"a{suffix}.nii.gz", np.zeros((20, 20, 20), np.uint8))
    frame = score_label_files(pred, ref)
    assert sorted(frame["case"]) == ["a", "b"]


def test_evaluate_pred_never_writes_over_a_run_file(tmp_path, capsys):
    pred, ref = _label_folders(tmp_path)
    run = _constant_run(tmp_path / "run", [0.0, 0.0, 0.0])
    history = run / "history.csv"
    history.write_text("epoch,lr\n1,0.001\n")
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(history), "--quiet"]) == 2
    assert history.read_text() == "epoch,lr\n1,0.001\n"
    assert "history.csv" in capsys.readouterr().err


def test_an_ensemble_of_runs_with_other_test_splits_is_refused(tmp_path):
    from tumorlib.inference.predictor import load_runs

    a = _constant_run(tmp_path / "a", [0.0, 0.0, 0.0])
    b = _constant_run(tmp_path / "b", [0.0, 0.0, 0.0])
    config = json.loads((b / "config.json").read_text())
    config["split_seed"] = int(config["split_seed"]) + 1
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"run {b}: split_seed"):
        load_runs([a, b])


def test_report_never_writes_over_a_run_file(tmp_path, capsys):
    run = _constant_run(tmp_path / "run", [0.0, 0.0, 0.0])
    history = run / "history.csv"
    history.write_text("epoch,lr\n1,0.001\n")
    assert main(["report", "--run", str(run), "--volume", "1", "--csv", str(history), "--quiet"]) == 2
    assert history.read_text() == "epoch,lr\n1,0.001\n"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--csv" in err and "history.csv" in err
