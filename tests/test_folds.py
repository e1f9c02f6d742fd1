"""N-fold splits of the non-test volumes: ``fold_split``, the ``fold``/``folds`` config fields and ``train --fold``."""

from __future__ import annotations

import json

import pytest

from tumorlib.app.cli import main
from tumorlib.core.config import get_config
from tumorlib.data.splits import fold_split, split_ids

IDS = list(range(1, 31))


def test_folds_unset_is_todays_split():
    cfg = get_config("ci")
    assert cfg.folds is None and cfg.fold == 0
    assert split_ids(cfg, IDS) == split_ids(get_config("ci", folds=0), IDS)


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_the_folds_cover_the_non_test_volumes_and_keep_the_test_set(folds):
    plain = split_ids(get_config("ci"), IDS)
    pool = sorted(plain["train"] + plain["val"])
    vals = []
    for k in range(folds):
        split = split_ids(get_config("ci", fold=k, folds=folds), IDS)
        assert split["test"] == plain["test"]
        assert sorted(split["train"] + split["val"]) == pool and not set(split["train"]) & set(split["val"])
        vals.append(split["val"])
    assert sorted(v for val in vals for v in val) == pool  # every non-test volume validates exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert fold_split(reversed(pool), folds, 0) == fold_split(pool, folds, 0)  # order does not matter


def test_bad_folds_are_refused():
    with pytest.raises(ValueError, match="cannot make 4 folds"):
        fold_split([1, 2, 3], 4, 0)
    with pytest.raises(ValueError, match="0 <= fold < folds"):
        fold_split([1, 2, 3], 2, 2)


def test_cli_train_fold_records_the_fold_split(tiny_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "ci", "--cache", str(tiny_cache), "--out", str(run), "--device", "cpu",
                 "--fold", "1", "--folds", "3", "--epochs", "1", "--quiet"]) == 0
    cfg = get_config("ci", fold=1, folds=3, epochs=1)
    expected = split_ids(cfg, [1, 2, 3, 4])
    assert json.loads((run / "splits.json").read_text()) == expected
    saved = json.loads((run / "config.json").read_text())
    assert (saved["fold"], saved["folds"]) == (1, 3)
    assert main(["train", "--preset", "ci", "--cache", str(tiny_cache), "--out", str(tmp_path / "bad"),
                 "--folds", "1", "--quiet"]) == 2
    assert "need folds >= 2" in capsys.readouterr().err
