"""Automatic resume (a run here or a previous Kaggle session's output attached as input) and the time limit."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

import pandas as pd
import pytest
import torch

from tumorlib.core.config import get_config, workspace
from tumorlib.app.workflows import train
from tumorlib.training.epochs import fits_time_limit
from tumorlib.training.history import HISTORY_COLUMNS, TIMING_COLUMNS

KEEP = [c for c in HISTORY_COLUMNS if c not in TIMING_COLUMNS]
TINY_LIMIT = 1e-9  # hours: no epoch fits after the first, whatever the machine


def test_fits_time_limit_hand_values():
    assert fits_time_limit(100.0, 1, 250.0)  # 100 s + a mean epoch of 100 s = 200 s <= 250 s
    assert not fits_time_limit(200.0, 2, 250.0)  # 200 s + 100 s = 300 s > 250 s
    assert fits_time_limit(240.0, 4, 300.0)  # 240 + 60 = 300: exactly fits
    assert fits_time_limit(1e9, 1, 0.0)  # no limit


def test_time_limit_field_is_validated_and_gpu16_sets_one():
    assert get_config("ci").time_limit_h is None
    assert 8.0 <= get_config("gpu16").time_limit_h < 9.0  # inside Kaggle's 9-hour session
    assert get_config("ci", time_limit_h=2).time_limit_h == 2.0
    with pytest.raises(ValueError, match="time_limit_h"):
        get_config("ci", time_limit_h=-1)


def test_time_limit_stops_cleanly_and_resume_finishes(ci_cache, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = get_config("ci", epochs=3)
    stopped = train(cfg.replace(time_limit_h=TINY_LIMIT), cache_dir=ci_cache, out_dir=run, progress=True)
    assert stopped.epoch.tolist() == [1]
    out = capsys.readouterr().out
    assert "time limit" in out and "stopped after epoch 1/3" in out and "--resume" in out
    assert torch.load(run / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 1
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1]
    assert (run / "checkpoints" / "best_model.pth").is_file() and (run / "training_curves.png").is_file()
    # time_limit_h is a runtime field: the run resumes without it and ends as an uninterrupted one
    resumed = train(cfg, cache_dir=ci_cache, out_dir=run, resume=True, progress=False)
    full = train(cfg, cache_dir=ci_cache, out_dir=tmp_path / "full", progress=False)
    pd.testing.assert_frame_equal(resumed[KEEP], full[KEEP], check_exact=True)


# --------------------------------------------------------------------------- a simulated Kaggle session


def _kaggle_session(monkeypatch, root, ci_cache):
    """A Kaggle notebook under ``root``: ``root/input`` (attached inputs), a writable ``root/working``."""
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "working").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(root))
    monkeypatch.delenv("TUMORLIB_HOME", raising=False)  # the default home: root/working/tumorlib
    monkeypatch.setenv("TUMORLIB_DATA", str(ci_cache.parent))
    monkeypatch.setenv("TUMORLIB_CACHE", str(ci_cache))


def _attach_as_input(run, root, name="my-notebook-output"):
    """Copy a session's run folder where Kaggle shows a saved output in the next session, read-only."""
    dest = root / "input" / name / "tumorlib" / "outputs" / "ci" / "run"
    shutil.copytree(run, dest)
    for folder, dirs, files in os.walk(root / "input", topdown=False):
        for f in files:
            os.chmod(os.path.join(folder, f), stat.S_IRUSR | stat.S_IRGRP)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    return dest


def _tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def writable_inputs(tmp_path):
    yield
    for folder, _, _ in os.walk(tmp_path):  # let pytest remove the read-only trees
        os.chmod(folder, stat.S_IRWXU)


def test_second_session_resumes_the_attached_run(ci_cache, tmp_path, monkeypatch, capsys, writable_inputs):
    from tumorlib.app.workflows import ensure_run, train_or_resume
    from tumorlib.core.sources import display_path

    cfg = get_config("ci", epochs=3)
    first = tmp_path / "session1"
    _kaggle_session(monkeypatch, first, ci_cache)
    run1 = workspace(cfg).run_dir
    assert run1 == (first / "working" / "tumorlib" / "outputs" / "ci" / "run").resolve()
    assert train_or_resume(cfg.replace(time_limit_h=TINY_LIMIT), progress=False).epoch.tolist() == [1]

    second = tmp_path / "session2"
    _kaggle_session(monkeypatch, second, ci_cache)
    attached = _attach_as_input(run1, second)
    before = _tree_digest(second / "input")
    capsys.readouterr()
    context = ensure_run(cfg)  # 05/06 opened in the new session: restores, trains to the end, loads
    out = capsys.readouterr().out
    assert f"resuming: the previous session's run {display_path(attached)} (1/3 epochs)" in out
    run2 = workspace(cfg).run_dir
    assert context.run_dir == run2 and run2.is_relative_to(second / "working")
    assert torch.load(run2 / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 3
    assert _tree_digest(second / "input") == before  # the read-only input is never written
    full = train(cfg, cache_dir=ci_cache, out_dir=tmp_path / "uninterrupted", progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(run2 / "history.csv")[KEEP], full[KEEP], check_exact=True)


def test_previous_run_with_another_config_is_left_alone(ci_cache, tmp_path, monkeypatch, writable_inputs):
    from tumorlib.training.resume import prepare_resume

    cfg = get_config("ci", epochs=3)
    first = tmp_path / "session1"
    _kaggle_session(monkeypatch, first, ci_cache)
    train(cfg, stop_after_epoch=1, progress=False)
    second = tmp_path / "session2"
    _kaggle_session(monkeypatch, second, ci_cache)
    _attach_as_input(first / "working" / "tumorlib" / "outputs" / "ci" / "run", second)
    check = prepare_resume(cfg.replace(lr=5e-3))
    assert not check.resume and check.restored_from is None
    assert "another config" in check.message and "lr=0.001 in the checkpoint but 0.005 now" in check.message
    assert not (workspace(cfg).run_dir / "checkpoints" / "last.pth").exists()  # nothing copied
    same = prepare_resume(cfg.replace(time_limit_h=3.0))  # a runtime field may differ
    assert same.resume and same.epoch == 1 and not same.finished and same.restored_from is not None


def test_ensure_run_finishes_an_unfinished_run_instead_of_starting_over(ci_cache, tmp_path, monkeypatch, capsys):
    import tumorlib.training.loop
    from tumorlib.app.workflows import ensure_run

    _kaggle_session(monkeypatch, tmp_path / "local", ci_cache)  # no input attached
    cfg = get_config("ci", epochs=3)
    train(cfg, stop_after_epoch=2, progress=False)
    calls = []
    real_train = tumorlib.training.loop.train

    def spy(*args, **kwargs):
        calls.append(kwargs.get("resume"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tumorlib.training.loop, "train", spy)
    capsys.readouterr()
    ensure_run(cfg)
    assert calls == [True]
    assert "resuming the unfinished run" in capsys.readouterr().out
    history = pd.read_csv(workspace(cfg).run_dir / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    ensure_run(cfg)  # complete now: nothing trained
    assert calls == [True]


def test_restoring_a_previous_session_takes_the_run_folder_lock(ci_cache, tmp_path, monkeypatch, writable_inputs):
    from tumorlib.core.safety import FolderBusyError, folder_lock
    from tumorlib.training.resume import prepare_resume

    cfg = get_config("ci", epochs=3)
    first = tmp_path / "session1"
    _kaggle_session(monkeypatch, first, ci_cache)
    train(cfg, stop_after_epoch=1, progress=False)
    second = tmp_path / "session2"
    _kaggle_session(monkeypatch, second, ci_cache)
    _attach_as_input(first / "working" / "tumorlib" / "outputs" / "ci" / "run", second)
    run = workspace(cfg).run_dir
    with folder_lock(run, "training run"):  # a training (here: this process) writes into the run folder
        with pytest.raises(FolderBusyError, match=rf"{run} is in use by another training run \(pid {os.getpid()}\)"):
            prepare_resume(cfg)
        assert not (run / "checkpoints").exists() and not (run / "config.json").exists()  # nothing copied
    check = prepare_resume(cfg)  # the lock released: restored
    assert check.resume and check.epoch == 1 and check.restored_from is not None
