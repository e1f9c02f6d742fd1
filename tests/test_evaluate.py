"""evaluate and predict on a tiny synthetic set, with run folders whose outputs are known in advance.

A run's network is a freshly initialised ``UNet3D`` whose 1x1x1 head is replaced by constant logits
(weights 0, bias +-10): every voxel it sees then gets the same classes, so the metrics and the label
file can be computed by hand from the cache's crop box.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from tumorlib.app.cli import main
from tumorlib.core.config import get_config
from tumorlib.data import load_volume
from tumorlib.data.cache import build_cache, load_cache_index, load_cached_volume, prepare_volume
from tumorlib.io.nifti import nifti_case_to_kaggle
from tumorlib.io.nifti_write import BRATS2020_AFFINE, brats2020_header, save_nifti_case
from tumorlib.evaluation.evaluate import (
    EVAL_COLUMNS,
    evaluate,
    metric_table,
    patch_predictions,
    summary_path,
)
from tumorlib.inference.predict import predict
from tumorlib.inference.predictor import load_run
from tumorlib.viz import plot_metric_boxes
from tumorlib.core.brats import channels_to_regions as brats_regions
from tumorlib.evaluation.metrics import hd95
from constant_runs import make_run as _make_run


def test_evaluate_all_tumour_prediction(tiny_data, tiny_cache, tmp_path):
    # every voxel: all three classes at the same probability; the decoding rule gives the tie to
    # enhancing tumour (CLASS_PRECEDENCE), so the prediction is ET everywhere, NCR and ED nowhere
    run = _make_run(tmp_path / "run", bias=[10.0, 10.0, 10.0])
    out = tmp_path / "eval" / "metrics.csv"
    frame = evaluate(run, tiny_data, tiny_cache, split="test", out=out, device="cpu", progress=False)
    assert tuple(frame.columns) == EVAL_COLUMNS
    assert list(pd.read_csv(out).columns) == list(EVAL_COLUMNS)
    # the ci split of 4 volumes keeps one for testing
    assert len(frame) == 1 and (frame["seconds"] > 0).all()
    vid = int(frame["volume"][0])
    _, mask = load_cached_volume(tiny_cache, vid)
    n = mask[0].size
    row = frame.iloc[0]
    for k, name in enumerate(("ncr", "ed")):
        assert row[f"dice_{name}"] == (0.0 if mask[k].any() else 1.0)
    t = int(mask[2].sum())
    assert row["dice_et"] == pytest.approx(2 * t / (n + t))
    wt = int(mask.any(axis=0).sum())
    assert row["dice_wt"] == pytest.approx(2 * wt / (n + wt))
    regions = brats_regions(np.asarray(mask))
    ones = np.ones_like(regions)
    np.testing.assert_allclose(row[["hd95_wt", "hd95_tc", "hd95_et"]].to_numpy(float), hd95(ones, regions))
    summary = pd.read_csv(summary_path(out), index_col=0)
    assert list(summary.index) == ["mean", "median", "std"]
    assert list(summary.columns) == list(EVAL_COLUMNS[1:])


def test_evaluate_uses_splits_json_and_tta(tiny_data, tiny_cache, tmp_path):
    run = _make_run(tmp_path / "run", splits={"train": [3, 4], "val": [], "test": [1, 2]})
    frame = evaluate(run, tiny_data, tiny_cache, device="cpu", progress=False)
    assert frame["volume"].tolist() == [1, 2]
    with_tta = evaluate(run, tiny_data, tiny_cache, tta=True, volume_ids=[1], out=tmp_path / "tta.csv",
                        device="cpu", progress=False)
    assert with_tta["volume"].tolist() == [1]
    assert not np.allclose(with_tta.iloc[0, 1:6].to_numpy(float), frame.iloc[0, 1:6].to_numpy(float))
    assert (run / "metrics_test.csv").is_file() and (run / "metrics_test_summary.csv").is_file()
    dice_cols = [c for c in EVAL_COLUMNS if c.startswith("dice")]
    assert ((frame[dice_cols] >= 0) & (frame[dice_cols] <= 1)).all().all()
    table = metric_table(frame)
    assert list(table.index) == ["NCR", "ED", "ET", "WT", "TC", "ET"]
    assert " ± " in table.loc["WT", "HD95 (mm)"]
    fig = plot_metric_boxes(frame)
    assert len(fig.axes) == 2


def test_evaluate_on_a_resampled_cache(tiny_data, tmp_path):
    cfg = get_config("ci", cache_hw=32)  # 48x48 slices zoomed to 32x32: scored at 48x48
    run = _make_run(tmp_path / "run", bias=[-10.0, 10.0, -10.0], config=cfg)
    frame = evaluate(run, tiny_data, tmp_path / "cache32", split="val", device="cpu", progress=False)
    assert load_cache_index(tmp_path / "cache32")["cache_hw"] == 32
    vid = int(frame["volume"][0])
    _, mask = load_volume(tiny_data, vid)
    row = frame.iloc[0]
    assert row["dice_ncr"] == (1.0 if mask[0].sum() == 0 else 0.0)  # never predicted
    assert 0.0 < row["dice_ed"] < 1.0


def test_run_errors(tiny_data, tiny_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "missing")
    run = _make_run(tmp_path / "run")
    get_config("ci", features=(4, 8, 16)).save(run / "config.json")
    with pytest.raises(ValueError, match=r"best_model\.pth does not match .*config\.json: features"):
        load_run(run)
    # a checkpoint without a config entry whose weights do not fit
    ckpt = torch.load(run / "checkpoints" / "best_model.pth", weights_only=True)
    ckpt["config"] = {}
    torch.save(ckpt, run / "checkpoints" / "best_model.pth")
    with pytest.raises(ValueError, match="weights do not fit"):
        load_run(run)
    good = _make_run(tmp_path / "good")
    with pytest.raises(ValueError, match="unknown split"):
        evaluate(good, tiny_data, tiny_cache, split="holdout", progress=False)


def test_predict_kaggle_labels_fill_the_crop_box(tiny_data, tmp_path):
    run = _make_run(tmp_path / "run", bias=[-10.0, -10.0, 10.0])  # enhancing everywhere it looks
    out = predict(run, tmp_path / "seg.nii.gz", data_dir=tiny_data, volume_id=2, device="cpu")
    img = nib.load(str(out))
    labels = np.asarray(img.dataobj)
    image, _ = load_volume(tiny_data, 2)
    d, h, w = image.shape[1:]
    assert labels.shape == (h, w, d) and labels.dtype == np.uint8
    # Kaggle input is written with the BraTS2020 geometry, qform and sform
    np.testing.assert_allclose(img.affine, BRATS2020_AFFINE)
    np.testing.assert_allclose(img.get_qform(), BRATS2020_AFFINE)
    np.testing.assert_allclose(img.get_sform(), BRATS2020_AFFINE)
    _, _, entry = prepare_volume(image, None, margin=get_config("ci").cache_margin)
    expected = np.zeros((d, h, w), np.uint8)
    expected[tuple(slice(a, b) for a, b in entry["crop_box"])] = 4
    np.testing.assert_array_equal(labels, np.transpose(expected, (1, 2, 0)))
    assert 0 < (labels == 4).mean() < 1  # the crop box is a real part of the volume


def test_predict_nifti_matches_kaggle(tiny_data, tmp_path):
    """A BraTS2020 NIfTI case and the same case converted to the per-slice HDF5 layout give the same labels
    and affine through both predict paths; a NIfTI case keeps its own header."""
    run = _make_run(tmp_path / "run")  # random weights: a non-trivial label map
    image, mask = load_volume(tiny_data, 3)
    case = save_nifti_case(tmp_path / "BraTS20_Training_003", image, mask, header=brats2020_header())
    converted = tmp_path / "converted"
    nifti_case_to_kaggle(case, converted, 3)
    from_nifti = nib.load(str(predict(run, tmp_path / "a.nii.gz", nifti_case=case, device="cpu")))
    from_kaggle = nib.load(str(predict(run, tmp_path / "b.nii.gz", data_dir=converted, volume_id=3,
                                       device="cpu")))
    a = np.asarray(from_nifti.dataobj)
    np.testing.assert_array_equal(a, np.asarray(from_kaggle.dataobj))
    np.testing.assert_allclose(from_nifti.affine, from_kaggle.affine)
    np.testing.assert_allclose(from_nifti.affine, BRATS2020_AFFINE)
    assert set(np.unique(a).tolist()) <= {0, 1, 2, 4} and len(np.unique(a)) > 1
    # another scanner geometry: the NIfTI path writes the case's own affine
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    other = save_nifti_case(tmp_path / "BraTS20_Training_004", image, mask, affine)
    own = nib.load(str(predict(run, tmp_path / "c.nii.gz", nifti_case=other, device="cpu")))
    np.testing.assert_allclose(own.affine, affine)
    np.testing.assert_array_equal(np.asarray(own.dataobj), a)
    with pytest.raises(ValueError, match="nii"):
        predict(run, tmp_path / "x.npy", nifti_case=case)
    with pytest.raises(ValueError, match="either"):
        predict(run, tmp_path / "x.nii.gz")


def test_patch_predictions(tiny_cache, tmp_path):
    run = _make_run(tmp_path / "run")
    model, cfg = load_run(run)
    out = patch_predictions(model, cfg, tiny_cache, [1, 2])
    assert out["images"].shape == (2, 4, *cfg.patch_size)
    assert out["gts"].shape == out["probs"].shape == (2, 3, *cfg.patch_size)
    assert out["gts"].sum() > 0  # centred on the tumour
    assert ((out["probs"] >= 0) & (out["probs"] <= 1)).all() and out["titles"] == ["volume 1", "volume 2"]


def test_cli_evaluate_and_predict(tiny_data, tiny_cache, tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data), "--cache", str(tiny_cache),
                 "--split", "val", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert len(pd.read_csv(out)) == 1 and summary_path(out).is_file()
    seg = tmp_path / "p.nii.gz"
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "1", "--out", str(seg),
                 "--device", "cpu", "--quiet"]) == 0
    assert nib.load(str(seg)).shape == (48, 48, 24)
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "99", "--out",
                 str(seg), "--quiet"]) == 2
    assert "volume 99" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--out", str(seg)]) == 2


@pytest.mark.parametrize("cache_hw", [None, 32])
def test_evaluate_on_a_nifti_cache_equals_the_kaggle_cache(tiny_data, tmp_path, cache_hw):
    """The same volumes as NIfTI cases: same scores, the resampled cache reopening its source through the
    reader the index records (NIfTI here) for the full-size ground truth and voxel size."""
    from tumorlib.data.cache import open_source
    from tumorlib.data.cache.nifti import build_nifti_cache

    root = tmp_path / "nifti"
    for vid in (1, 2):
        image, mask = load_volume(tiny_data, vid)
        save_nifti_case(root / f"BraTS20_Training_{vid:03d}", image, mask)
    cfg = get_config("ci", cache_hw=cache_hw)
    run = _make_run(tmp_path / "run", bias=[-10.0, 10.0, -10.0], config=cfg,
                    splits={"train": [], "val": [], "test": [1, 2]})
    nifti_cache = build_nifti_cache(root, tmp_path / "nifti_cache", workers=1, cache_hw=cache_hw, progress=False)
    kaggle_cache = build_cache(tiny_data, tmp_path / "kaggle_cache", workers=1, cache_hw=cache_hw,
                               volume_ids=[1, 2], progress=False)
    index = load_cache_index(nifti_cache)
    assert index["reader"] == "nifti" and type(open_source(index)).__name__ == "NiftiSource"
    assert open_source(index).spacing(1) == pytest.approx((1.0, 1.0, 1.0))
    a = evaluate(run, cache_dir=nifti_cache, device="cpu", progress=False, out=tmp_path / "a.csv")
    b = evaluate(run, cache_dir=kaggle_cache, device="cpu", progress=False, out=tmp_path / "b.csv")
    assert a["volume"].tolist() == [1, 2]
    metrics = [c for c in EVAL_COLUMNS if c not in ("volume", "seconds")]
    pd.testing.assert_frame_equal(a[metrics], b[metrics], rtol=1e-6)
    assert 0.0 < a["dice_ed"].min() < 1.0


@pytest.fixture(scope="module")
def ci_run(ci_cache, tmp_path_factory):
    """A tiny ci training run on the ci data, selected on whole validation volumes every epoch."""
    from tumorlib.app.workflows import train

    run = tmp_path_factory.mktemp("ci_run") / "run"
    cfg = get_config("ci", val_volume_every=1)
    history = train(cfg, cache_dir=ci_cache, out_dir=run, progress=False, device="cpu")
    return run, history


def test_evaluate_scores_the_labels_predict_writes(ci_run, ci_cache, tmp_path):
    """For every volume, Dice and HD95 of the NIfTI file ``predict`` writes equal the evaluate CSV row."""
    from tumorlib.core.brats import labels_to_channels
    from tumorlib.evaluation.metrics import brats_scores

    run, _ = ci_run
    data = load_cache_index(ci_cache)["source"]
    frame = evaluate(run, cache_dir=ci_cache, split="all", out=tmp_path / "m.csv", device="cpu", progress=False)
    assert len(frame) == get_config("ci").synth_volumes
    rows = pd.read_csv(tmp_path / "m.csv").set_index("volume")
    for vid in rows.index:
        seg = nib.load(str(predict(run, tmp_path / f"{vid}.nii.gz", data_dir=data, volume_id=int(vid),
                                   device="cpu")))
        labels = np.transpose(np.asarray(seg.dataobj), (2, 0, 1))
        _, gt = load_volume(data, int(vid))
        scores = brats_scores(labels_to_channels(labels), gt)
        for name, value in scores.items():
            assert value == pytest.approx(rows.loc[vid, name], abs=1e-9), (vid, name)
    assert (rows["dice_wt"] > 0).any()  # a trained model finds some tumour


def test_volume_selection_is_what_evaluate_reports(ci_run, ci_cache, tmp_path):
    """The whole-volume selection score of the best epoch is evaluate's mean WT/TC/ET Dice on the val split."""
    from tumorlib.training.history import HISTORY_COLUMNS

    run, history = ci_run
    assert list(pd.read_csv(run / "history.csv").columns) == HISTORY_COLUMNS
    assert history.val_volume_dice.notna().all()  # every epoch with val_volume_every=1
    frame = evaluate(run, cache_dir=ci_cache, split="val", out=tmp_path / "v.csv", device="cpu", progress=False)
    score = frame[["dice_wt", "dice_tc", "dice_et"]].mean(axis=1).mean()
    assert score == pytest.approx(history.val_volume_dice.max(), abs=1e-9)
    best = torch.load(run / "checkpoints" / "best_model.pth", weights_only=True)
    assert best["epoch"] == int(history.val_volume_dice.idxmax()) + 1


def test_evaluate_and_predict_refuse_another_channel_order(ci_run, ci_cache, tmp_path):
    run, _ = ci_run
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    cfg["kaggle_channel_order"] = ["t1", "t1ce", "t2", "flair"]
    (other / "config.json").write_text(json.dumps(cfg))
    from tumorlib.nn.checkpoint import atomic_torch_save, load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "best_model.pth")  # a run trained on data stored in that order
    ckpt["config"]["kaggle_channel_order"] = cfg["kaggle_channel_order"]
    atomic_torch_save(ckpt, other / "checkpoints" / "best_model.pth")
    from tumorlib.data.cache import CacheError

    with pytest.raises(CacheError, match=r"read with kaggle_channel_order flair,t1,t1ce,t2, the run uses "
                                         r"t1,t1ce,t2,flair; rebuild the cache with `tumorlib cache "
                                         r"--kaggle_channel_order t1,t1ce,t2,flair`"):
        evaluate(other, cache_dir=ci_cache, split="test", device="cpu", progress=False)
    data = load_cache_index(ci_cache)["source"]
    with pytest.raises(ValueError, match=r"channel order t1,t1ce,t2,flair, the run .* was trained with "
                                         r"kaggle_channel_order flair,t1,t1ce,t2; train again"):
        predict(run, tmp_path / "x.nii.gz", data_dir=data, volume_id=1, stored_order=("t1", "t1ce", "t2", "flair"))
    assert not (tmp_path / "x.nii.gz").exists()
    index = load_cache_index(ci_cache)
    assert index["channel_order"] == ["t1", "t1ce", "t2", "flair"]
    assert index["stored_order"] == ["flair", "t1", "t1ce", "t2"]


@pytest.mark.parametrize("source", ["kaggle", "nifti"])
def test_predict_uncertainty_maps_beside_the_labels(tiny_data, tmp_path, source):
    """``predict --uncertainty``: entropy and variance NIfTI with the label file's header and full grid,
    equal to the flip members' maps inside the crop and 0 outside it."""
    from tumorlib.data.cache import uncrop
    from tumorlib.inference.predict import uncertainty_paths
    from tumorlib.inference.uncertainty import flip_members, uncertainty_maps, volume_predictor

    run = _make_run(tmp_path / "run")  # random weights: members that disagree
    image, mask = load_volume(tiny_data, 2)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    if source == "nifti":
        case = save_nifti_case(tmp_path / "BraTS20_Training_002", image, mask, affine)
        kwargs, args = {"nifti_case": case}, ["--nifti", str(case)]
    else:
        kwargs, args = {"data_dir": tiny_data, "volume_id": 2}, ["--data", str(tiny_data), "--volume", "2"]
    out = tmp_path / "out" / "case_pred.nii.gz"
    assert main(["predict", "--run", str(run), *args, "--out", str(out), "--device", "cpu", "--quiet",
                 "--uncertainty"]) == 0
    paths = uncertainty_paths(out)
    assert paths == {"entropy": tmp_path / "out" / "case_pred_entropy.nii.gz",
                     "variance": tmp_path / "out" / "case_pred_variance.nii.gz"}
    labels = nib.load(str(out))
    model, cfg = load_run(run, "cpu")
    image_c, _, entry = prepare_volume(image, None, cache_hw=cfg.cache_hw, margin=cfg.cache_margin,
                                       dtype=np.float16)
    expected = uncertainty_maps(flip_members(volume_predictor(model, cfg, "cpu"), image_c))
    for name, path in paths.items():
        img = nib.load(str(path))
        assert img.shape == labels.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, labels.affine)
        np.testing.assert_allclose(img.get_qform(), labels.get_qform())
        np.testing.assert_allclose(img.get_sform(), labels.get_sform())
        data = np.transpose(np.asarray(img.dataobj), (2, 0, 1))
        np.testing.assert_allclose(data, uncrop(expected[name], entry, fill=0.0), atol=1e-5)  # float noise of the windows (seen 3e-6)
        inside = tuple(slice(a, b) for a, b in entry["crop_box"])
        outside = np.ones(data.shape, bool)
        outside[inside] = False
        assert (data[outside] == 0).all() and data[inside].max() > 0
    np.testing.assert_allclose(labels.affine, affine if source == "nifti" else BRATS2020_AFFINE)
    assert nib.load(str(paths["entropy"])).get_fdata().max() <= 1.0 + 1e-6
    plain = predict(run, tmp_path / "plain.nii.gz", device="cpu", **kwargs)  # without: labels only, equal
    np.testing.assert_array_equal(np.asarray(nib.load(str(plain)).dataobj), np.asarray(labels.dataobj))
    assert not any(uncertainty_paths(plain)[k].exists() for k in ("entropy", "variance"))


def test_evaluate_uncertainty_columns(tiny_data, tiny_cache, tmp_path, capsys):
    """``evaluate --uncertainty``: entropy and ECE columns computed by hand for constant logits; without the
    flag the CSV keeps ``EVAL_COLUMNS`` only."""
    import math

    from tumorlib.evaluation.confidence import UNCERTAINTY_COLUMNS

    run = _make_run(tmp_path / "run", bias=[-10.0, -10.0, 10.0], splits={"train": [], "val": [], "test": [1, 2]})
    out = tmp_path / "u.csv"
    assert main(["evaluate", "--run", str(run), "--cache", str(tiny_cache), "--out", str(out), "--device", "cpu",
                 "--uncertainty"]) == 0
    assert "ece_wt" in capsys.readouterr().out  # the printed summary
    frame = pd.read_csv(out)
    assert list(frame.columns) == [*EVAL_COLUMNS, *UNCERTAINTY_COLUMNS]
    lo, hi = 1 / (1 + math.exp(10.0)), 1 / (1 + math.exp(-10.0))
    p = np.array([lo, lo, hi])
    t = 1 - np.prod(1 - p)  # every voxel, every member: the same distribution
    q = np.array([1 - t, *(t * p / p.sum())])
    h = -(q * np.log(q)).sum() / math.log(4)
    regions = {"wt": t, "tc": 1 - (1 - lo) * (1 - hi), "et": hi}
    index = load_cache_index(tiny_cache)
    for _, row in frame.iterrows():
        assert row["mean_entropy_tumour"] == pytest.approx(h, rel=1e-3)
        assert row["uncertain_fraction"] == 0.0  # entropy far below 0.5 everywhere
        _, mask = load_cached_volume(tiny_cache, int(row["volume"]), index=index)
        gt = brats_regions(np.asarray(mask))
        for i, r in enumerate(("wt", "tc", "et")):  # one bin: |fraction positive - probability|
            assert row[f"ece_{r}"] == pytest.approx(abs(gt[i].mean() - regions[r]), abs=1e-5)
    summary = pd.read_csv(summary_path(out), index_col="statistic")
    assert summary.loc["mean", "ece_wt"] == pytest.approx(frame["ece_wt"].mean())
    plain = evaluate(run, cache_dir=tiny_cache, device="cpu", progress=False, out=tmp_path / "p.csv")
    assert list(plain.columns) == list(EVAL_COLUMNS)
    pd.testing.assert_frame_equal(plain.drop(columns="seconds"), frame[list(EVAL_COLUMNS)].drop(columns="seconds"))


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("bias, flags, ids", [([-10.0, -10.0, 10.0], {"touches_border"}, [7, 8]),
                                              ([-10.0, -10.0, -10.0], {"empty_tumour", "empty_et"}, [8])])
def test_report_flags_of_known_predictions(ci_cache, tmp_path, bias, flags, ids):
    """Enhancing tumour in every voxel: the whole crop, on its border, far above the training volumes;
    nothing predicted: empty tumour and ET. One PNG per volume, one CSV row each."""
    from tumorlib.app.report import case_report
    from tumorlib.evaluation.qc import QC_COLUMNS, region_volumes_ml, volume_range

    index = load_cache_index(ci_cache)
    train = [1, 2, 3, 4, 5]
    run = _make_run(tmp_path / "run", bias=bias, splits={"train": train, "val": [6], "test": [7, 8]})
    rows, pngs, csv_path = case_report(run, ids, cache_dir=ci_cache, device="cpu")
    assert pngs == [run / "reports" / f"volume_{v}.png" for v in ids]
    assert csv_path == run / "reports" / "qc.csv"
    for png in pngs:
        width, height = _png_size(png)
        assert width > 500 and height > 300
    table = pd.read_csv(csv_path)
    assert list(table.columns) == list(QC_COLUMNS) and table["case"].tolist() == ids
    wt = [region_volumes_ml(np.asarray(load_cached_volume(ci_cache, v, index=index)[1]), (1, 1, 1))["wt"]
          for v in train]
    low, high = volume_range(wt)
    for row in rows:
        expected = set(flags)
        if not low <= row["volume_wt_ml"] <= high:
            expected.add("volume_outlier")
        assert set(filter(None, row["flags"].split(";"))) == expected
        assert row["et_postprocessing"] == "none" and not row["flag_uncertain"]
        shape = load_cache_index(ci_cache)["volumes"][str(row["case"])]["shape"]
        if "touches_border" in flags:
            assert row["volume_et_ml"] == pytest.approx(np.prod(shape) / 1000.0) and row["lesions_et"] == 1
            assert row["flag_volume_outlier"]  # the whole crop is far above every training tumour
        else:
            assert row["volume_wt_ml"] == 0.0 and row["lesions_wt"] == 0
    assert table["flags"].fillna("").tolist() == [r["flags"] for r in rows]


def test_cli_report_on_a_trained_run(ci_run, ci_cache, tmp_path, capsys):
    from tumorlib.evaluation.qc import FLAG_NAMES, QC_COLUMNS

    run, _ = ci_run
    out = tmp_path / "page.png"
    assert main(["report", "--run", str(run), "--cache", str(ci_cache), "--volume", "1", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    _png_size(out)
    table = pd.read_csv(tmp_path / "qc.csv")
    assert list(table.columns) == list(QC_COLUMNS) and len(table) == 1
    row = table.iloc[0]
    raised = [f for f in FLAG_NAMES if row[f"flag_{f}"]]
    assert (row["flags"] if isinstance(row["flags"], str) else "") == ";".join(raised)
    assert 0.0 <= row["uncertain_fraction"] <= 1.0
    assert main(["report", "--run", str(run), "--cache", str(ci_cache), "--volume", "1", "2", "--out",
                 str(out)]) == 2
    assert "one PNG" in capsys.readouterr().err


def test_report_applies_the_runs_rule_and_counts_what_it_removed(ci_cache, tmp_path):
    from tumorlib.app.report import case_report
    from tumorlib.inference.postprocess import PostProcessing, write_postprocessing

    run = _make_run(tmp_path / "run", bias=[-10.0, -10.0, 10.0], splits={"train": [1, 2, 3, 4, 5], "val": [6],
                                                                         "test": [7, 8]})
    rule = PostProcessing(min_mm3=(1e12, 0, 0))  # the one whole-crop component is "small": removed
    write_postprocessing(run, {"rule": rule.to_dict()})
    rows, _, csv_path = case_report(run, [7], cache_dir=ci_cache, device="cpu")
    assert rows[0]["et_postprocessing"] == rule.describe() and rows[0]["components_removed_wt"] == 1
    assert rows[0]["volume_wt_ml"] == 0.0 and "empty_tumour" in rows[0]["flags"]
    assert pd.read_csv(csv_path)["components_removed_wt"].tolist() == [1]


def test_one_prediction_per_volume_gives_scores_uncertainty_calibration_and_figures(ci_run, ci_cache, tmp_path,
                                                                                    monkeypatch):
    """``evaluate(uncertainty=True, on_volume=KeptPredictions(...))`` predicts each volume with the 8 flip
    passes only (not 9): its scores equal the plain evaluate's, its kept volumes equal
    ``predict_cached_volume``'s, and its calibration the one of a separate loop over the volumes."""
    import tumorlib.inference.uncertainty as uncertainty_module
    from tumorlib.evaluation.calibration import CalibrationMetric
    from tumorlib.evaluation.evaluate import KeptPredictions
    from tumorlib.inference.postprocess import run_postprocessing
    from tumorlib.inference.predictor import predict_cached_volume

    run, _ = ci_run
    model, cfg = load_run(run, "cpu")
    plain = evaluate(run, cache_dir=ci_cache, device="cpu", progress=False, out=tmp_path / "plain.csv")
    passes = []
    counted = uncertainty_module.predict_volume
    monkeypatch.setattr(uncertainty_module, "predict_volume", lambda *a, **k: passes.append(1) or counted(*a, **k))
    kept = KeptPredictions(cfg, ci_cache, run_postprocessing(run, cfg), CalibrationMetric(targets=cfg.targets))
    frame = evaluate(run, cache_dir=ci_cache, device="cpu", progress=False, out=tmp_path / "u.csv",
                     uncertainty=True, on_volume=kept)
    monkeypatch.undo()
    assert len(passes) == 8 * len(frame)  # the identity flip gives the labels
    scores = [c for c in EVAL_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(plain[scores], frame[scores])
    assert frame["mean_entropy_tumour"].notna().any()
    loop = CalibrationMetric(targets=cfg.targets)
    for vid in frame["volume"]:
        expected = predict_cached_volume(model, cfg, ci_cache, int(vid), device="cpu",
                                         postprocessing=run_postprocessing(run, cfg))
        for got, want in zip(kept.volume(int(vid)), expected):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        loop.update(expected[2], expected[1])
    assert kept.calibration.aggregate("pooled") == loop.aggregate("pooled")
    assert kept.calibration.aggregate() == loop.aggregate()
    with pytest.raises(KeyError, match="not evaluated"):
        kept.volume(10_000)


def test_predict_with_uncertainty_of_an_ensemble_is_its_plain_prediction(ci_run, ci_cache):
    """For an ensemble of runs, the labels' probabilities from the flip members (each run's identity pass,
    averaged) equal ``predict_volume``'s mean of the runs' predictions, bit for bit."""
    from tumorlib.inference.predictor import load_runs, predict_volume
    from tumorlib.inference.uncertainty import predict_with_uncertainty

    run, _ = ci_run
    model, cfg = load_runs([run, run], "cpu")
    image, _ = load_cached_volume(ci_cache, int(sorted(load_cache_index(ci_cache)["volumes"], key=int)[0]))
    expected = predict_volume(model, image, cfg, "cpu")
    prob, maps, extra = predict_with_uncertainty(model, image, cfg, "cpu", uncertainty=True)
    torch.testing.assert_close(prob, expected, rtol=0, atol=0)
    assert maps["members"] == 16 and extra > 0.0
    tta, _, _ = predict_with_uncertainty(model, image, cfg, "cpu", tta=True, uncertainty=True)
    torch.testing.assert_close(tta, predict_volume(model, image, cfg, "cpu", tta=True), rtol=0, atol=0)


def test_run_opens_once_for_every_command(ci_run, ci_cache, tmp_path):
    """``Run``: the one opener. Its split is ``splits.json``'s, its engine is built once, an unknown volume or
    split is refused naming it, and ``evaluate``/``tune_postprocessing`` given the open run score what they
    score given the folder."""
    from tumorlib.evaluation.tuning import tune_postprocessing
    from tumorlib.inference.run import Run

    run_dir, _ = ci_run
    run = Run.open(run_dir, "cpu")
    with pytest.raises(RuntimeError, match="cache first"):
        run.split("test")
    assert run.cache(cache_dir=ci_cache) == ci_cache.resolve() and run.index is not None
    splits = json.loads((run_dir / "splits.json").read_text())
    assert run.split("test") == splits["test"] and run.split("val") == splits["val"]
    assert run.engine("torch") is run.engine("torch") and run.engine("torch", amp=False) is not run.engine("torch")
    with pytest.raises(ValueError, match=r"volumes \[10000\] are not in the cache"):
        run.split("test", [10_000])
    with pytest.raises(ValueError, match="unknown split"):
        run.split("nope")
    scores = [c for c in EVAL_COLUMNS if c != "seconds"]
    by_folder = evaluate(run_dir, cache_dir=ci_cache, device="cpu", progress=False, out=tmp_path / "a.csv")
    by_run = evaluate(run, cache_dir=ci_cache, progress=False, out=tmp_path / "b.csv")
    pd.testing.assert_frame_equal(by_folder[scores], by_run[scores])
    import shutil

    copy = shutil.copytree(run_dir, tmp_path / "copy")  # tuning writes RUN/postprocessing.json: not into ci_run
    record = tune_postprocessing(Run.open(copy, "cpu"), cache_dir=ci_cache, progress=False, score_test=False)
    assert record["volumes"] == splits["val"] and (copy / "postprocessing.json").is_file()
    assert not (run_dir / "postprocessing.json").exists()
