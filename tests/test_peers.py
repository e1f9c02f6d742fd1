"""The peer recipes (tumorlib.benchmarks.peers): a few steps of each on the ci preset's tiny data."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from tumorlib.benchmarks import peers
from tumorlib.core.brats import labels_to_channels, labels_to_regions
from tumorlib.core.config import get_config

# found, not imported: importing MONAI at collection time would load it before every other test file
pytestmark = pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="MONAI is not installed")


def test_deep_supervision_weights_halve_and_sum_to_one():
    w = peers.deep_supervision_weights(3)
    assert w == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert sum(peers.deep_supervision_weights(5)) == pytest.approx(1.0)
    assert all(a == pytest.approx(2 * b) for a, b in zip(w, w[1:]))
    with pytest.raises(ValueError):
        peers.deep_supervision_weights(0)


def test_region_targets_nest_wt_tc_et():
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :] = (1, 2, 4, 0)  # ncr, ed, et, background
    labels[1] = 2
    mask = torch.from_numpy(labels_to_channels(labels))[None]  # (1, 3, D, H, W) ncr, ed, et
    wt, tc, et = peers.region_targets(mask)[0].bool()
    assert bool((tc <= wt).all()) and bool((et <= tc).all())
    assert wt[0, 0].tolist() == [True, True, True, False]
    assert tc[0, 0].tolist() == [True, False, True, False]
    assert et[0, 0].tolist() == [False, False, True, False]
    assert bool(wt[1].all()) and not bool(tc[1].any())
    assert np.array_equal(peers.region_targets(mask)[0].numpy().astype(bool), labels_to_regions(labels))


def test_dynunet_loss_weights_the_heads():
    _, loss = peers.build_recipe("dynunet", get_config("ci"))
    target = (torch.rand(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    heads = torch.stack([torch.full((1, 3, 4, 4, 4), v) for v in (-2.0, 0.5, 3.0)], dim=1)  # (B, 3 heads, ...)
    w = peers.deep_supervision_weights(1 + peers.DEEP_SUPERVISION_HEADS)
    expected = sum(wi * float(loss(heads[:, i], target)) for i, wi in enumerate(w))
    assert float(loss(heads, target)) == pytest.approx(expected, rel=1e-6)


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown recipe"):
        peers.build_recipe("unetr", get_config("ci"))


@pytest.mark.parametrize("recipe", peers.RECIPES)
def test_a_few_steps_give_a_scored_row(recipe, ci_cache, tmp_path, monkeypatch):
    config = get_config("ci")
    torch.manual_seed(0)
    fresh, _ = peers.build_recipe(recipe, config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    trained = {}
    real_score = peers.score_peer

    def keep(model, *args, **kwargs):
        trained["state"] = model.state_dict()
        return real_score(model, *args, **kwargs)

    monkeypatch.setattr(peers, "score_peer", keep)
    row = peers.run_peer(recipe, seconds=600, seed=0, config=config, cache_dir=ci_cache, max_steps=3)
    assert set(peers.RESULT_KEYS) <= set(row)
    assert row["recipe"] == recipe and row["steps"] == 3 and row["patches"] == 3 * config.batch_size
    assert row["params"] == sum(v.numel() for v in fresh.parameters())
    for key in ("dice_wt", "dice_tc", "dice_et"):
        assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0
    changed = [k for k, v in trained["state"].items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "training left every weight as it was"
    out = tmp_path / "row.json"
    peers.write_result(out, row)
    assert json.loads(out.read_text())["recipe"] == recipe
    peers.write_result(out, row)  # a result row may be replaced


def test_write_result_refuses_another_file(tmp_path):
    other = tmp_path / "notes.json"
    other.write_text('{"something": "else"}')
    row = dict.fromkeys(peers.RESULT_KEYS, 0)
    with pytest.raises(FileExistsError, match="notes.json"):
        peers.write_result(other, row)
    assert other.read_text() == '{"something": "else"}'
    assert peers.main(["--recipe", "dynunet", "--json", str(other)]) == 2


def test_missing_monai_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_monai(name, *args, **kwargs):
        if name == "monai" or name.startswith("monai."):
            raise ImportError("No module named 'monai'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_monai)
    with pytest.raises(ImportError, match="pip install"):
        peers.build_recipe("segresnet", get_config("ci"))
    assert peers.main(["--recipe", "segresnet"]) == 2
