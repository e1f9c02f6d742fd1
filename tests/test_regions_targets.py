"""The ``targets`` config field: networks trained on the classes (ncr, ed, et) or on the regions (wt, tc, et).

Runs whose outputs are known in advance (a fresh ``UNet3D`` whose 1x1x1 head gives constant logits) show
that every consumer decodes a run by its own rule; one tiny ``--targets regions`` run trains end to end
through the command line.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from tumorlib.app.cli import main
from tumorlib.core.brats import channels_to_regions, labels_to_channels
from tumorlib.core.config import PRESETS, get_config, load_config
from tumorlib.core.regions import (
    TARGETS,
    Decoder,
    loss_targets,
    output_keys,
)
from constant_runs import make_run as _make_run


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with
def decode_probabilities(prob, threshold=0.5):
    return Decoder("classes", threshold).labels(prob)


def decode_to_channels(prob, threshold=0.5):
    return Decoder("classes", threshold).channels(prob)


def decode_regions(prob, threshold=0.5):
    return Decoder("regions", threshold).labels(prob)


def decode_outputs(prob, config_or_targets, threshold=0.5):
    return Decoder.of(config_or_targets, threshold).labels(prob)


def decode_outputs_to_channels(prob, config_or_targets, threshold=0.5):
    return Decoder.of(config_or_targets, threshold).channels(prob)


def decode_outputs_batch(prob, config_or_targets, threshold=0.5):
    return Decoder.of(config_or_targets, threshold).batch(prob)


def _region_map():
    """(3, 1, 1, 6) region probabilities (wt, tc, et) and the labels ``decode_regions`` gives at 0.5."""
    wt = [0.1, 0.9, 0.9, 0.9, 0.2, 0.6]
    tc = [0.1, 0.2, 0.8, 0.8, 0.9, 0.4]
    et = [0.1, 0.1, 0.3, 0.7, 0.1, 0.9]
    # bg; ED (wt only); NCR (wt, tc); ET; NCR (tc outside wt keeps the inner label); ET (et outside tc)
    return np.array([wt, tc, et], np.float32).reshape(3, 1, 1, 6), [0, 2, 1, 4, 1, 4]


def test_targets_field_default_choices_and_one_line_error(capsys):
    assert TARGETS == ("classes", "regions")
    assert all(cfg.targets == "classes" for cfg in PRESETS.values())
    assert get_config("ci", targets="regions").targets == "regions"
    with pytest.raises(ValueError, match="config field targets must be one of classes, regions, got 'foo'"):
        get_config("ci", targets="foo")
    assert main(["train", "--preset", "ci", "--targets", "foo"]) == 2
    err = capsys.readouterr().err
    assert err == "tumorlib train: error: config field targets must be one of classes, regions, got 'foo'\n"
    from tumorlib.core.config import resume_fields

    assert "targets" in resume_fields()  # a run resumes only with the targets it was trained on


def test_old_config_without_targets_loads_as_classes(tmp_path):
    data = get_config("ci", et_min_voxels=5).to_dict()
    assert data["targets"] == "classes"
    del data["targets"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = load_config(tmp_path / "config.json")
    assert config.targets == "classes" and config.et_min_voxels == 5
    assert output_keys(config) == ("ncr", "ed", "et")
    assert output_keys(object()) == ("ncr", "ed", "et")  # anything without the field: classes


def test_loss_target_of_a_known_mask_is_its_regions():
    from tumorlib.nn.losses import DiceFocalLoss, loss_from_config

    labels = np.array([0, 1, 2, 4, 2, 1, 0, 4], np.uint8).reshape(1, 2, 2, 2)
    mask = torch.from_numpy(labels_to_channels(labels[0])).float()[None]  # (1, 3, 2, 2, 2) ncr, ed, et
    want = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 1],   # WT: any class
                         [0, 1, 0, 1, 0, 1, 0, 1],   # TC: ncr or et
                         [0, 0, 0, 1, 0, 0, 0, 1]],  # ET
                        dtype=torch.float32).reshape(1, 3, 2, 2, 2)
    assert torch.equal(loss_targets(mask, "regions"), want)
    assert loss_targets(mask, "regions").dtype == mask.dtype
    assert loss_targets(mask, "classes") is mask
    assert np.array_equal(loss_targets(mask[0].numpy(), "regions"), want[0].numpy())
    logits = torch.randn(1, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    regions_loss = loss_from_config(get_config("ci", targets="regions"))
    assert regions_loss.targets == "regions"
    assert torch.allclose(regions_loss(logits, mask), DiceFocalLoss(get_config("ci").class_weights)(logits, want))
    classes_loss = loss_from_config(get_config("ci"))
    assert torch.allclose(classes_loss(logits, mask), DiceFocalLoss(get_config("ci").class_weights)(logits, mask))


def test_decode_outputs_picks_the_rule_of_the_targets():
    prob, want = _region_map()
    assert decode_outputs(prob, "regions").ravel().tolist() == want
    assert np.array_equal(decode_outputs(prob, get_config("ci", targets="regions")), decode_regions(prob))
    assert np.array_equal(decode_outputs(prob, get_config("ci")), decode_probabilities(prob))
    assert np.array_equal(decode_outputs(torch.from_numpy(prob), "classes", 0.6), decode_probabilities(prob, 0.6))
    assert np.array_equal(decode_outputs_to_channels(prob, "regions"), labels_to_channels(decode_regions(prob)))
    assert np.array_equal(decode_outputs_to_channels(prob, "classes"), decode_to_channels(prob))
    batch = torch.from_numpy(np.stack([prob, prob[::-1].copy()]))
    for targets in TARGETS:
        for threshold in (0.25, 0.5, 0.75):
            got = decode_outputs_batch(batch, targets, threshold)
            assert got.dtype == torch.bool
            for b in range(2):
                expect = decode_outputs_to_channels(batch[b].numpy(), targets, threshold)
                assert np.array_equal(got[b].numpy().astype(np.uint8), expect), (targets, threshold, b)
    with pytest.raises(ValueError, match="targets must be one of classes, regions, got 'x'"):
        decode_outputs(prob, "x")


def test_training_validation_dice_decodes_by_the_targets():
    """Logits that are +-10 on a mask's regions: Dice 1 for a regions run, not for a classes run."""
    from tumorlib.nn.losses import loss_from_config
    from tumorlib.training.engine import validate

    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    labels[1:3, 1:2, 1:3] = 1
    labels[2, 2, 2] = 4
    mask = torch.from_numpy(labels_to_channels(labels)).float()[None]
    logits = torch.where(channels_to_regions(mask), 10.0, -10.0)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits.expand(x.shape[0], -1, -1, -1, -1)

    loader = [(torch.zeros(1, 4, 4, 4, 4), mask)]
    config = get_config("ci", targets="regions")
    out = validate(Fixed(), loader, loss_from_config(config), torch.device("cpu"), None, 0.5, None, "regions")
    assert {k: out[k] for k in ("val_dice_ncr", "val_dice_ed", "val_dice_et", "val_dice_wt")} == pytest.approx(
        {"val_dice_ncr": 1.0, "val_dice_ed": 1.0, "val_dice_et": 1.0, "val_dice_wt": 1.0})
    classes = validate(Fixed(), loader, loss_from_config(get_config("ci")), torch.device("cpu"))
    assert classes["val_dice_mean"] < 0.99


def test_entropy_of_region_outputs_by_hand():
    from tumorlib.inference.uncertainty import categorical_distribution, entropy, uncertainty_maps

    p_wt, p_tc, p_et = 0.8, 0.6, 0.3
    prob = np.array([p_wt, p_tc, p_et], np.float32).reshape(3, 1, 1, 1)
    q = categorical_distribution(prob, "regions").ravel()
    want = [1 - p_wt, p_wt * p_tc * (1 - p_et), p_wt * (1 - p_tc), p_wt * p_tc * p_et]  # bg, ncr, ed, et
    np.testing.assert_allclose(q, want, rtol=1e-6)
    h = -sum(v * math.log(v) for v in want) / math.log(4)
    np.testing.assert_allclose(entropy(q.reshape(4, 1)), [h], rtol=1e-5)
    maps = uncertainty_maps([prob, prob], targets=get_config("ci", targets="regions"))
    np.testing.assert_allclose(maps["entropy"].ravel(), [h], rtol=1e-5)
    second = np.array([0.4, 0.5, 0.5], np.float32).reshape(3, 1, 1, 1)
    maps = uncertainty_maps([prob, second], targets="regions")
    np.testing.assert_allclose(maps["variance"].ravel(), [np.var([p_wt, 0.4])], rtol=1e-5)  # tumour = p_wt
    # the class reading of the same numbers is another distribution
    assert not np.allclose(categorical_distribution(prob), categorical_distribution(prob, "regions"))
    # edges: certain background, and certain enhancing tumour
    edge = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]], np.float32).reshape(3, 1, 1, 2)
    np.testing.assert_allclose(categorical_distribution(edge, "regions")[:, 0, 0], [[1, 0], [0, 0], [0, 0], [0, 1]])


def test_calibration_of_region_outputs_scores_them_as_they_are():
    from tumorlib.evaluation.calibration import (
        CalibrationMetric,
        bin_statistics,
        calibration_error,
        expected_calibration_error,
        region_probabilities,
    )

    rng = np.random.default_rng(0)
    prob = rng.random((3, 4, 5, 6)).astype(np.float32)
    gt = labels_to_channels(rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(4, 5, 6)))
    assert np.array_equal(region_probabilities(prob, "regions"), prob)
    ece = expected_calibration_error(prob, gt, targets="regions")
    regions = channels_to_regions(gt)
    for c, name in enumerate(("wt", "tc", "et")):
        assert ece[name] == pytest.approx(calibration_error(*bin_statistics(prob[c], regions[c])))
    metric = CalibrationMetric(targets=get_config("ci", targets="regions"))
    assert metric.update(prob, gt) == pytest.approx(ece)
    assert expected_calibration_error(prob, gt) != pytest.approx(ece)  # classes: the noisy-OR first


def test_every_consumer_decodes_a_regions_run_by_its_rule(tiny_data, tiny_cache, tmp_path):
    """Logits (+10, -10, -10): edema in the whole crop for a regions run, necrosis for a classes run."""
    from tumorlib.data.cache import load_cache_index
    from tumorlib.evaluation.evaluate import evaluate, patch_predictions
    from tumorlib.evaluation.scoring import predicted_channels, volume_scores
    from tumorlib.inference.predict import predict, probabilities_path
    from tumorlib.inference.predictor import load_run, predict_cached_volume

    bias = [10.0, -10.0, -10.0]
    for targets, label in (("regions", 2), ("classes", 1)):
        run = _make_run(tmp_path / targets, bias, targets=targets)
        model, config = load_run(run, "cpu")
        assert config.targets == targets
        index = load_cache_index(tiny_cache)
        entry = index["volumes"]["1"]
        done = predicted_channels(model, config, tiny_cache, 1, torch.device("cpu"), index)
        channel = [1, 2, 4].index(label)
        assert done.pred[channel].all() and done.pred.sum() == done.pred[channel].sum()
        assert np.array_equal(predict_cached_volume(model, config, tiny_cache, 1)[3], done.pred)
        assert (patch_predictions(model, config, tiny_cache, [1])["preds"][0, channel] == 1).all()
        seg = predict(run, tmp_path / f"{targets}.nii.gz", data_dir=tiny_data, volume_id=1, device="cpu",
                      save_probabilities=True)
        labels = np.transpose(np.asarray(nib.load(str(seg)).dataobj), (2, 0, 1))
        box = tuple(slice(lo, hi) for lo, hi in entry["crop_box"])
        assert (labels[box] == label).all() and labels.sum() == labels[box].sum()
        assert np.array_equal(labels_to_channels(labels[box]), done.pred)  # predict and scoring agree
        probs = nib.load(str(probabilities_path(seg)))
        keys = ",".join(output_keys(targets))
        assert probs.header["descrip"].item().decode() == f"tumorlib sigmoid outputs {keys} (targets={targets})"
        frame = evaluate(run, tiny_data, tiny_cache, split="all", out=tmp_path / f"{targets}.csv", device="cpu",
                         progress=False)
        scored = volume_scores(done.pred, done.target, done.spacing, lesions=False)
        row = frame.set_index("volume").loc[1]
        assert all(row[k] == pytest.approx(v, abs=1e-9) for k, v in scored.items() if k.startswith("dice_"))


def test_export_contract_names_the_outputs(tmp_path):
    pytest.importorskip("onnx", reason="the onnx exporter needs the onnx package (pip install onnx)")
    from tumorlib.inference.export import export_model

    for targets, channels in (("classes", ["ncr", "ed", "et"]), ("regions", ["wt", "tc", "et"])):
        run = _make_run(tmp_path / targets, [0.0, 0.0, 0.0], targets=targets)
        contract = json.loads(export_model(run, "onnx", tmp_path / f"export-{targets}").read_text())
        assert contract["output"]["targets"] == targets and contract["output"]["channels"] == channels
        reference = f"Decoder(targets='{targets}')"
        assert contract["output"]["decoding"]["reference"].endswith(reference)


def test_an_ensemble_of_a_classes_and_a_regions_run_is_refused(tmp_path, tiny_data, tiny_cache, capsys):
    from tumorlib.inference.predictor import ENSEMBLE_FIELDS, load_runs

    assert "targets" in ENSEMBLE_FIELDS
    a = _make_run(tmp_path / "a", [0.0, 0.0, 0.0])
    b = _make_run(tmp_path / "b", [0.0, 0.0, 0.0], targets="regions")
    with pytest.raises(ValueError, match=rf"run {b}: targets 'regions' differs from 'classes' of run {a}"):
        load_runs([a, b])
    assert main(["evaluate", "--run", str(a), "--run", str(b), "--cache", str(tiny_cache), "--device", "cpu",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "targets" in err


def test_cli_trains_evaluates_and_predicts_a_regions_run(tiny_data, tiny_cache, tmp_path):
    from tumorlib.training.history import HISTORY_COLUMNS

    run = tmp_path / "run"
    assert main(["train", "--preset", "ci", "--targets", "regions", "--data", str(tiny_data), "--cache",
                 str(tiny_cache), "--out", str(run), "--device", "cpu", "--epochs", "1", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["targets"] == "regions"
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS and len(history) == 1
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data), "--cache", str(tiny_cache),
                 "--out", str(tmp_path / "m.csv"), "--device", "cpu", "--quiet"]) == 0
    assert len(pd.read_csv(tmp_path / "m.csv")) > 0
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "1", "--out", str(out),
                 "--device", "cpu", "--save-probabilities", "--quiet"]) == 0
    labels = np.asarray(nib.load(str(out)).dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
