"""Fault injection, what a training run and a cache keep between commands: a refused resume or a failed
train --overwrite leaves the run (or its previous-* copy) whole and loadable, one training holds a run folder
at a time, a run folder without a model says so and where one waits, and the cache rebuilds or refuses what
no longer matches what it checked.

The helpers are in faults_cli.py, the shared folders (finished_run, small_tmpfs) in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from tumorlib.app.cli import main

from faults_cli import cache_args, copy_tree, run_cli, synth_args, train_args, tree_hash


# ------------------------------------------------------------------ training runs: splits, previous runs, locks


def _hashes(folder: Path, names) -> dict[str, str]:
    """sha256 of each named file below ``folder`` that exists."""
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names if (folder / n).is_file()}


def test_refused_resume_leaves_splits_unchanged(finished_run, ci_cache, tmp_path, capsys):
    run = copy_tree(finished_run, tmp_path / "run")
    digest = tree_hash(run)
    assert main(train_args(ci_cache, run, "--resume", "--split_seed", "7")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume" in err and "split_seed=42 in the checkpoint but 7 now" in err
    assert tree_hash(run) == digest  # splits.json (and everything else) as it was
    # the same config, but a splits.json that no longer matches the cache's split: refused too
    splits = json.loads((run / "splits.json").read_text())
    splits["train"], splits["val"] = splits["train"][1:], splits["val"] + splits["train"][:1]
    (run / "splits.json").write_text(json.dumps(splits))
    digest = tree_hash(run)
    assert main(train_args(ci_cache, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "splits.json holds other volumes than the split of this cache now" in err
    assert tree_hash(run) == digest


def test_new_run_refused_without_overwrite(finished_run, ci_cache, tmp_path, capsys):
    run = copy_tree(finished_run, tmp_path / "run")
    digest = tree_hash(run)
    assert main(train_args(ci_cache, run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} already holds a finished training run" in err
    assert "--resume" in err and "--overwrite" in err
    assert tree_hash(run) == digest


def _fail_first_step(monkeypatch, exc):
    from tumorlib.training.engine import Trainer

    def fail(self, micro_batches):
        raise exc

    monkeypatch.setattr(Trainer, "train_step", fail)


@pytest.mark.parametrize("exc,code,text", [
    (FloatingPointError("non-finite training loss"), 3, "the inputs are finite: lower --lr"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    ("sigterm", 143, "stopped by SIGTERM"),
])
def test_new_run_failing_at_epoch_1_keeps_the_previous_model(finished_run, ci_cache, tmp_path, monkeypatch,
                                                             capsys, exc, code, text):
    """--overwrite moves the old run aside (a loadable run folder) and names it while nothing better exists."""
    from tumorlib.app.cli import _Terminated
    from tumorlib.inference.predictor import load_run
    from tumorlib.training.run_folder import RUN_FILES

    run = copy_tree(finished_run, tmp_path / "run")
    old = _hashes(run, RUN_FILES)
    _fail_first_step(monkeypatch, _Terminated() if exc == "sigterm" else exc)
    assert main(train_args(ci_cache, run, "--overwrite")) == code
    err = capsys.readouterr().err
    (prev,) = run.glob("previous-*")
    assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
    assert f"no epoch finished; the previous run is kept whole in {prev}" in err
    assert "last good epoch (0)" not in err
    assert _hashes(prev, RUN_FILES) == old  # byte for byte
    assert not (run / "checkpoints" / "best_model.pth").exists()
    load_run(prev)  # still a usable run folder


def test_new_run_discards_the_previous_once_it_has_a_model(finished_run, ci_cache, tmp_path, capsys):
    from tumorlib.training.run_folder import RUN_FILES

    run = copy_tree(finished_run, tmp_path / "run")
    old = _hashes(run, RUN_FILES)
    assert main(train_args(ci_cache, run, "--overwrite", "--seed", "3")) == 0
    assert not list(run.glob("previous-*"))
    new = _hashes(run, RUN_FILES)
    assert set(new) == set(old) and new["checkpoints/best_model.pth"] != old["checkpoints/best_model.pth"]


@pytest.mark.slow  # a training subprocess, killed
def test_two_trainings_into_one_out_second_refused_kill_keeps_previous(finished_run, ci_cache, tmp_path, capsys):
    """A real second process: refused naming the holder's PID; a SIGKILL at epoch 1 keeps the old model."""
    from tumorlib.training.run_folder import RUN_FILES

    run = copy_tree(finished_run, tmp_path / "run")
    old = _hashes(run, RUN_FILES)
    proc = run_cli(*train_args(ci_cache, run, "--overwrite", "--samples_per_epoch", "4000"))
    try:
        deadline = time.monotonic() + 120
        lock = run / ".tumorlib.lock"
        while time.monotonic() < deadline and proc.poll() is None and not (
                list(run.glob("previous-*")) and lock.read_text().strip() == str(proc.pid)):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert main(train_args(ci_cache, run, "--resume")) == 2
        err = capsys.readouterr().err
        assert err == (f"tumorlib train: error: {run} is in use by another training run (pid {proc.pid}); wait for "
                       f"it to finish or stop it, or choose another folder\n")
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    (prev,) = run.glob("previous-*")
    assert _hashes(prev, RUN_FILES) == old
    assert not (run / "checkpoints" / "best_model.pth").exists()


# ----------------------------------------------------- run folders without a model, checkpoints without a resume field


def _config_only_run(folder: Path) -> Path:
    """A run folder as a run killed before its first epoch leaves it: ``config.json`` (and splits) only."""
    from tumorlib.core.config import get_config

    folder.mkdir(parents=True)
    get_config("ci").save(folder / "config.json")
    (folder / "splits.json").write_text('{"train": [1], "val": [2], "test": [3]}\n')
    return folder


def _read_run_args(command, run, data, cache, tmp_path):
    """evaluate or predict of ``run``: the two commands that open a run's model."""
    if command == "evaluate":
        return ["evaluate", "--run", str(run), "--cache", str(cache), "--data", str(data), "--quiet"]
    return ["predict", "--run", str(run), "--data", str(data), "--volume", "1", "--out", str(tmp_path / "p.nii.gz"),
            "--quiet"]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_r3_a_run_folder_with_only_its_config_is_refused(command, tiny_data, tiny_cache, tmp_path, capsys):
    run = _config_only_run(tmp_path / "run")
    before = tree_hash(run)
    args = _read_run_args(command, run, tiny_data, tiny_cache, tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"run folder {run} holds no trained model: checkpoints/best_model.pth is missing" in err
    assert "config.json, splits.json" in err and "tumorlib train --out" in err
    assert tree_hash(run) == before and not (tmp_path / "p.nii.gz").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_run_whose_model_waits_in_previous_says_where(command, tiny_data, tiny_cache, tmp_path, capsys):
    """A `train --overwrite` killed before the new run's first best model: the old model is in previous-*."""
    run = _config_only_run(tmp_path / "run")
    waiting = run / "previous-20261207-101010" / "checkpoints"
    waiting.mkdir(parents=True)
    (waiting / "best_model.pth").write_bytes(b"the earlier run's model")
    args = _read_run_args(command, run, tiny_data, tiny_cache, tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"the earlier run's model waits in {waiting.parent}: evaluate that with --run {waiting.parent}" in err
    assert f"tumorlib train --out {run} --overwrite" in err
    assert (waiting / "best_model.pth").read_bytes() == b"the earlier run's model"


def test_r3_resuming_a_run_folder_with_only_its_config_is_refused(tmp_path):
    from tumorlib.core.config import get_config
    from tumorlib.training.loop import fit
    from test_train import TINY, Patches

    run = _config_only_run(tmp_path / "run")
    before = tree_hash(run)
    with pytest.raises(FileNotFoundError, match=rf"cannot resume {run}: it holds only config.json, splits.json "
                                                r"and no checkpoints/last.pth \(the run stopped before its first "
                                                r"epoch\); rerun without --resume"):
        fit(get_config("ci", **TINY), Patches(4), Patches(2, seed=1), run, resume=True, progress=False)
    assert tree_hash(run) == before
    fit(get_config("ci", **TINY), Patches(4), Patches(2, seed=1), tmp_path / "empty", resume=True,
        progress=False)  # an empty folder has nothing to resume: a new run, as before


def test_r3_auto_resume_refuses_a_checkpoint_without_a_resume_field(tmp_path, monkeypatch):
    import torch

    from tumorlib.core.config import get_config
    from tumorlib.training.loop import fit
    from tumorlib.training.resume import prepare_resume
    from test_train import TINY, Patches

    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(tmp_path / "no_kaggle"))
    cfg = get_config("ci", **{**TINY, "epochs": 3})
    run = tmp_path / "run"
    fit(cfg, Patches(4), Patches(2, seed=1), run, progress=False, stop_after_epoch=1)
    last = run / "checkpoints" / "last.pth"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["kaggle_channel_order"]  # as a tumorlib before the field wrote it
    torch.save(ckpt, last)
    check = prepare_resume(cfg, run)
    assert not check.resume and "last.pth" in check.message and "not resumed" in check.message
    assert "kaggle_channel_order is not recorded in the checkpoint" in check.message
    with pytest.raises(ValueError, match=rf"cannot resume {last}: .*kaggle_channel_order is not recorded in the "
                                         r"checkpoint"):
        fit(cfg, Patches(4), Patches(2, seed=1), run, resume=True, progress=False)


# ------------------------------------------------------------------ the cache trusts what it checked


@pytest.fixture
def data_and_cache(tmp_path):
    data = tmp_path / "data"
    assert main(synth_args(data, 3)) == 0
    cache = tmp_path / "cache"
    assert main(cache_args(data, cache)) == 0
    return data, cache


def test_truncated_npy_is_rebuilt_not_reported_done(data_and_cache, capsys):
    data, cache = data_and_cache
    capsys.readouterr()
    reference = tree_hash(cache)
    target = cache / "v2_img.npy"
    target.write_bytes(target.read_bytes()[:-100])
    assert main(cache_args(data, cache)) == 0
    err = capsys.readouterr().err
    assert f"rebuilding volume 2 (damaged: {target}: size " in err
    assert tree_hash(cache) == reference


def test_label_slice_edited_in_place_is_noticed(data_and_cache, tmp_path, capsys):
    data, cache = data_and_cache
    (slice_file,) = Path(data).rglob("volume_3_slice_4.h5")
    size = slice_file.stat().st_size
    with h5py.File(slice_file, "r+") as f:  # a label corrected in place: same file size
        mask = f["mask"][()]
        mask[:, :, 1] = 1 - mask[:, :, 1]
        f["mask"][...] = mask
    assert slice_file.stat().st_size == size
    before = {n: (cache / n).read_bytes() for n in ("v1_img.npy", "v1_mask.npy")}
    assert main(cache_args(data, cache)) == 0
    assert f"rebuilding volume 3 (changed: {slice_file}: modified since recorded)" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(cache_args(data, fresh)) == 0
    assert (cache / "v3_mask.npy").read_bytes() == (fresh / "v3_mask.npy").read_bytes()
    assert {n: (cache / n).read_bytes() for n in before} == before


def test_index_names_outside_the_cache_are_refused(data_and_cache, tmp_path, capsys):
    import shutil

    data, cache = data_and_cache
    shutil.copy(cache / "v1_img.npy", tmp_path / "outside.npy")
    index = json.loads((cache / "index.json").read_text())
    index["volumes"]["1"]["image_file"] = "../outside.npy"
    (cache / "index.json").write_text(json.dumps(index))
    digest, outside = tree_hash(cache), (tmp_path / "outside.npy").read_bytes()
    capsys.readouterr()
    for args in (cache_args(data, cache), train_args(cache, tmp_path / "run")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{cache}: index file name '../outside.npy' points outside the folder" in err
    assert tree_hash(cache) == digest and (tmp_path / "outside.npy").read_bytes() == outside
    from tumorlib.data.cache import load_cached_volume
    from tumorlib.core.safety import UnsafePathError

    with pytest.raises(UnsafePathError, match="points outside"):
        load_cached_volume(cache, 1)


def test_volume_deleted_from_the_data_is_dropped(data_and_cache, capsys):
    from tumorlib.data.cache import cached_volume_ids

    data, cache = data_and_cache
    for f in Path(data).rglob("volume_2_slice_*.h5"):
        f.unlink()
    assert main(cache_args(data, cache)) == 0
    assert "volume 2 dropped: its source is gone" in capsys.readouterr().err
    assert cached_volume_ids(cache) == [1, 3]
    assert not list(cache.glob("v2_*"))


@pytest.mark.slow  # mount/remount subprocesses
def test_read_only_finished_cache_is_usable(small_tmpfs, tmp_path, capsys):
    from tumorlib.core.config import get_config
    from tumorlib.data.resolve import resolve_cache

    data = tmp_path / "data"
    assert main(synth_args(data, 2)) == 0
    cache = small_tmpfs / "cache"
    assert main(cache_args(data, cache)) == 0
    capsys.readouterr()
    digest = tree_hash(small_tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        assert main(cache_args(data, cache)) == 0
        assert f"cached 2 volumes" in capsys.readouterr().out
        cfg = get_config("ci")
        assert resolve_cache(cfg, data, cache, progress=False) == cache
        assert resolve_cache(cfg, None, cache, progress=False) == cache
        assert tree_hash(small_tmpfs) == digest
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    target = cache / "v1_mask.npy"
    target.write_bytes(target.read_bytes()[:-10])
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        assert main(cache_args(data, cache)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"volume 1 needs rebuilding (damaged: {target}: size" in err
        assert "read-only" in err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
