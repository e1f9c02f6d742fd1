"""tumorlib inspect-modalities: the stored channel order, found from images and masks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tumorlib.core.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER, reorder_channels
from tumorlib.app.cli import main
from tumorlib.data import make_phantom, make_synthetic, write_kaggle_volume
from tumorlib.data.modalities import (
    format_modality_report,
    infer_channel_order,
    inspect_modalities,
    modality_signatures,
)

ORDERS = list(itertools.permutations(CANONICAL_ORDER))


@pytest.fixture(scope="module")
def orders_root(tmp_path_factory):
    """One folder per channel order, each with the same two phantoms written in that order."""
    root = tmp_path_factory.mktemp("orders")
    volumes = {vid: make_phantom((32, 64, 64), seed=2, volume_id=vid) for vid in (1, 2)}
    for order in ORDERS:
        for vid, (image, mask) in volumes.items():
            write_kaggle_volume(root / "_".join(order), vid, image, mask, stored_order=order)
    return root


@pytest.mark.parametrize("order", ORDERS, ids=["_".join(o) for o in ORDERS])
def test_every_stored_order_is_named(orders_root, order):
    report = inspect_modalities(orders_root / "_".join(order), volumes=None, configured=KAGGLE_STORED_ORDER)
    assert report["inferred_order"] == list(order)
    assert report["agreeing_votes"] == 2 and [v["order"] for v in report["volumes"]] == [list(order)] * 2
    assert report["agrees"] == (order == KAGGLE_STORED_ORDER)


def _textbook_volume(seed: int, shape=(20, 40, 40), enhancing: bool = True):
    """A brain built only from textbook contrasts, with random levels: not tumorlib's phantom.

    T1: WM > GM > CSF, tumour dark; T1ce: T1 with the enhancing rim far brighter; T2: CSF > GM > WM,
    edema bright; FLAIR: GM > WM, CSF suppressed, edema bright. A shared bias field and noise.
    """
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = np.sqrt((z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2)
    brain = r < 1
    tissue = np.where(r < 0.7, 1, 2) * brain  # 1 WM, 2 GM
    tissue[brain & (r > 0.93)] = 3  # CSF rim
    tissue[np.sqrt((z / 0.35) ** 2 + (y / 0.15) ** 2 + ((np.abs(x) - 0.15) / 0.08) ** 2) < 1] = 3
    c = rng.uniform(-0.3, 0.3, 3)
    t = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] - 0.3) ** 2)
    ncr, et, ed = t < 0.12, (t >= 0.12) & (t < 0.2), (t >= 0.2) & (t < 0.38) & brain
    if not enhancing:
        ncr, et = t < 0.2, np.zeros(shape, bool)
    u = rng.uniform
    wm1, wm2, wmf = u(600, 1000), u(400, 700), u(400, 700)
    levels = {  # per channel (T1, T1ce, T2, FLAIR): WM, GM, CSF, edema, enhancing, necrosis
        "t1": [wm1, wm1 * u(0.65, 0.85), wm1 * u(0.2, 0.45), wm1 * u(0.55, 0.75), wm1 * u(0.6, 0.9),
               wm1 * u(0.3, 0.5)],
    }
    g = u(0.85, 1.15)
    levels["t1ce"] = [v * g for v in levels["t1"]]
    levels["t1ce"][4] = levels["t1"][4] * g * u(1.8, 3.0)
    gm2 = wm2 * u(1.2, 1.5)
    levels["t2"] = [wm2, gm2, wm2 * u(2.5, 4.0), gm2 * u(1.3, 1.8), gm2 * u(1.0, 1.3), wm2 * u(2.0, 3.0)]
    gmf = wmf * u(1.15, 1.4)
    levels["flair"] = [wmf, gmf, wmf * u(0.15, 0.4), gmf * u(1.4, 2.0), gmf * u(1.0, 1.3), wmf * u(0.8, 1.2)]
    code = tissue.copy()
    code[ed], code[et], code[ncr] = 4, 5, 6
    code[~brain] = 0
    bias = 1 + 0.15 * np.sin(2 * z + u(0, 6)) * np.cos(1.5 * y + u(0, 6))
    image = np.zeros((4,) + shape, np.float32)
    for ch, name in enumerate(CANONICAL_ORDER):
        table = np.array([0.0, *levels[name]])
        img = table[code] * bias + rng.normal(0, 0.04 * levels[name][0], shape)
        image[ch] = np.where(brain, np.maximum(img, 1.0), 0.0)
    mask = np.stack([ncr & brain, ed & brain, et & brain]).astype(np.uint8)
    return image, mask


@pytest.mark.parametrize("seed", range(6))
def test_textbook_contrasts_alone_decide(seed):
    image, mask = _textbook_volume(seed)
    order = ORDERS[(7 * seed + 3) % 24]
    vote = infer_channel_order(reorder_channels(image, CANONICAL_ORDER, order), mask)
    assert vote["order"] == list(order)
    sig = modality_signatures(image, mask)  # canonical order: T1, T1ce, T2, FLAIR
    assert sig["csf"][2] > 1.5 and max(sig["csf"][0], sig["csf"][1], sig["csf"][3]) < 1
    assert sig["enhancing"][1] > 1.5 * sig["enhancing"][0] and sig["edema"][3] > 1.2


def test_volume_without_enhancing_tumour_leaves_t1_pair_open():
    image, mask = _textbook_volume(1, enhancing=False)
    order = ("t2", "t1ce", "flair", "t1")
    vote = infer_channel_order(reorder_channels(image, CANONICAL_ORDER, order), mask)
    assert vote["order"] == ["t2", None, "flair", None] and vote["evidence"]["enhancing_voxels"] == 0
    with pytest.raises(ValueError, match=r"need image \(4, D, H, W\)"):
        infer_channel_order(image[:3], mask)


def test_cli_prints_votes_and_writes_json(tmp_path, capsys):
    make_synthetic(tmp_path / "data", 3, (32, 64, 64), seed=1)  # every volume with enhancing tumour: each votes
    out = tmp_path / "report" / "modalities.json"
    assert main(["inspect-modalities", "--data", str(tmp_path / "data"), "--volumes", "2",
                 "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "volume 1: FLAIR, T1, T1ce, T2" in text and "volume 3:" in text and "volume 2:" not in text
    assert "agrees with the configured kaggle_channel_order FLAIR, T1, T1ce, T2" in text
    report = json.loads(out.read_text())
    assert report["inferred_order"] == ["flair", "t1", "t1ce", "t2"] and report["agrees"]
    assert [v["volume"] for v in report["volumes"]] == [1, 3]
    assert main(["inspect-modalities", "--data", str(tmp_path / "data"), "--volumes", "2", "--quiet",
                 "--kaggle_channel_order", "t1,t1ce,t2,flair"]) == 0
    text = capsys.readouterr().out
    assert "DIFFERS from the configured kaggle_channel_order T1, T1ce, T2, FLAIR" in text
    assert "--kaggle_channel_order flair,t1,t1ce,t2" in text
    assert main(["inspect-modalities", "--data", str(tmp_path / "data"), "--volumes", "1", "--quiet",
                 "--kaggle_channel_order", "t1,t1ce,t2,flair"]) == 0
    text = capsys.readouterr().out  # one volume is never enough: no verdict, no fix recommended
    assert "cannot judge the order from 1 volumes: 1 volume voted; a verdict needs 2" in text
    assert "DIFFERS" not in text and "fix:" not in text and "neither confirmed nor contradicted" in text


def test_volumes_too_small_to_judge_do_not_vote(tmp_path, capsys):
    make_synthetic(tmp_path / "data", 3, (16, 32, 32), seed=1)  # about 3,500 brain voxels each
    report = inspect_modalities(tmp_path / "data", volumes=None)
    assert report["inferred_order"] is None and report["decided_votes"] == 0
    assert not any(v["judged"] for v in report["volumes"]) and "too small to judge" in report["undecided_because"]
    text = format_modality_report(report)
    assert "verdict: undecided" in text and "fix:" not in text and "DIFFERS" not in text
    assert text.count("(too small to vote: ") == 3


def test_report_text_for_an_undecided_folder():
    report = {"inferred_order": None, "configured_order": list(KAGGLE_STORED_ORDER), "agrees": False,
              "agreeing_votes": 0, "decided_votes": 0, "undecided_because": "the votes are split (1 against 1)",
              "volumes": []}
    text = format_modality_report(report)
    assert "verdict: undecided" in text and "split (1 against 1)" in text and "DIFFERS" not in text


def test_signature_figure(orders_root):
    from tumorlib.data import load_volume
    from tumorlib.viz.modalities import plot_modality_signatures

    folder = orders_root / "_".join(KAGGLE_STORED_ORDER)
    report = inspect_modalities(folder, volumes=None)
    image, mask = load_volume(folder, 1, stored_order=CANONICAL_ORDER)  # channels as stored
    fig = plot_modality_signatures(report, image, mask)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["stored channel 0: FLAIR", "stored channel 1: T1", "stored channel 2: T1ce",
                          "stored channel 3: T2"]
    bars = fig.axes[4]
    assert [t.get_text() for t in bars.get_legend().get_texts()][3] == "channel 3 = T2"
    assert len(plot_modality_signatures(report).axes) == 1
    with pytest.raises(ValueError, match="no volumes"):
        plot_modality_signatures({"volumes": []})


def test_report_without_enhancing_tumour_is_valid_json(tmp_path):
    image, mask = _textbook_volume(2, enhancing=False)
    write_kaggle_volume(tmp_path, 5, image, mask)
    report = inspect_modalities(tmp_path, volumes=None)
    assert report["inferred_order"] is None and report["decided_votes"] == 0
    assert report["volumes"][0]["order"] == ["flair", None, None, "t2"]
    text = json.dumps(report, allow_nan=False)  # no NaN: strict JSON
    assert json.loads(text)["volumes"][0]["signatures"]["enhancing"] == [None] * 4
    assert "n/a" in format_modality_report(report)
