"""Fault injection, what the commands write: earlier data and a command's own inputs are never replaced
(synth into a folder it did not write, an --out naming an input), a file is written whole or not at all (atomic
writes killed at random, disk full, read-only folders), and two writers on one folder do not mix.

Each case asserts the message the user sees AND that no earlier data changed (a hash of the folder before and
after); the helpers are in faults_cli.py, the shared folders (h3, finished_run, small_tmpfs) in conftest.py.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tumorlib.app.cli import main
from tumorlib.data import KAGGLE_SUBDIR, list_volumes
from tumorlib.core.safety import OUTPUT_RECORD, DiskFullError, atomic_write, folder_lock, record_written

from faults_cli import (SHAPE, cache_args, copy_tree, message_lines, mounted_tmpfs, nifti_case, proc_clean, refused,
                        run_cli, run_main, slice_folder, synth, synth_args, train_args, tree_hash)


# ------------------------------------------------------------------ synth: refuse, replace whole


@pytest.fixture(scope="module")
def old_set(tmp_path_factory):
    """An existing dataset (the 'earlier data' every case must leave unchanged) and its hash."""
    root = tmp_path_factory.mktemp("old") / "data"
    assert main(synth_args(root, 2, 0)) == 0
    return root, tree_hash(root)


def test_synth_refuses_non_empty_folder(old_set, capsys):
    root, digest = old_set
    assert main(synth_args(root, 3, 1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"synth --out folder {root} is not empty" in err and "--overwrite" in err
    assert tree_hash(root) == digest


def test_synth_refuses_a_real_download(tmp_path, capsys):
    """The embedded set's layout is the real pack's: pointed at a download it must not touch it."""
    data = tmp_path / "kaggle" / KAGGLE_SUBDIR
    data.mkdir(parents=True)
    with h5py.File(data / "volume_1_slice_0.h5", "w") as f:
        f["image"] = np.ones((4, 4, 4))
        f["mask"] = np.zeros((4, 4, 3), np.uint8)
    digest = tree_hash(tmp_path / "kaggle")
    assert main(synth_args(tmp_path / "kaggle")) == 2
    assert "is not empty" in capsys.readouterr().err
    assert tree_hash(tmp_path / "kaggle") == digest


def test_synth_overwrite_replaces_whole(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(synth_args(out, 3, 0)) == 0
    assert main(synth_args(out, 2, 1, "--overwrite")) == 0
    assert list_volumes(out) == [1, 2]  # volume 3 of the old set is gone: nothing mixed
    ref = tmp_path / "ref"
    assert main(synth_args(ref, 2, 1)) == 0
    assert tree_hash(out) == tree_hash(ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "ref"]


# ------------------------------------------------------------------ disk full


def test_synth_disk_full_monkeypatched(old_set, tmp_path, monkeypatch, capsys):
    root, digest = old_set
    import tumorlib.data.synthetic as synthetic

    real = synthetic.write_kaggle_volume

    def write_then_fill(data_dir, vid, image, mask):
        if vid == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(data_dir) / "volume_2_slice_0.h5"))
        return real(data_dir, vid, image, mask)

    monkeypatch.setattr(synthetic, "write_kaggle_volume", write_then_fill)
    assert main(synth_args(root, 3, 5, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tumorlib synth: error: disk full while writing {root} (volume_2_slice_0.h5")
    assert err.count("\n") == 1
    assert tree_hash(root) == digest


@pytest.mark.slow  # a synth subprocess; mounts a tmpfs
def test_disk_full_on_a_real_small_filesystem(small_tmpfs):
    good = small_tmpfs / "history.csv"
    atomic_write(good, "epoch,loss\n1,0.5\n")
    with pytest.raises(DiskFullError, match=f"^disk full while writing {good}$"):
        atomic_write(good, b"x" * (1 << 20))
    assert good.read_text() == "epoch,loss\n1,0.5\n"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["history.csv"]
    # HDF5 can crash (not raise) when the disk fills inside a file, so synth measures the space first;
    # a subprocess, so that such a crash could not take pytest down with it
    proc = run_cli(*synth_args(small_tmpfs / "d", 4))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err == (f"tumorlib synth: error: not enough disk space for 4 volumes of (8, 24, 24) in {small_tmpfs}: "
                   f"needs about 0.8 MiB, 0.2 MiB free on {small_tmpfs}\n")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["history.csv"]


@pytest.mark.slow  # mounts a tmpfs (mount/umount subprocesses)
def test_disk_full_during_a_checkpoint_write(ci_cache, small_tmpfs, capsys):
    run = small_tmpfs / "run"
    assert main(train_args(ci_cache, run)) == 2
    err = capsys.readouterr().err
    assert err == f"tumorlib train: error: disk full while writing {run / 'checkpoints' / 'best_model.pth'}\n"
    assert "enforce fail" not in err
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".tmp")]
    assert not leftovers


# ------------------------------------------------------------------ disk full on a real 2 MiB tmpfs


@pytest.fixture
def tmpfs_2m(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    with mounted_tmpfs(tmp_path / "small", "2m") as mnt:
        yield mnt


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``folder`` up to ``leave`` free bytes; returns the filler file."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
    return filler


def _no_temp_files(folder: Path):
    left = [str(p) for p in folder.rglob("*") if p.name.startswith((".tmp", "tmp")) or ".partial" in p.name]
    assert not left, left


@pytest.mark.slow  # mounts a tmpfs (mount/umount subprocesses)
def test_h3_cache_disk_full_then_rerun_after_freeing(h3, tmpfs_2m):
    cache = tmpfs_2m / "cache"
    filler = _fill(tmpfs_2m, leave=90_000)
    code, err = run_main(*cache_args(h3["data"], cache))
    line = refused(code, err, "disk full")
    assert str(tmpfs_2m) in line
    _no_temp_files(tmpfs_2m)
    filler.unlink()
    assert run_main(*cache_args(h3["data"], cache))[0] == 0
    for r in sorted(h3["cache"].glob("v*.npy")):
        assert (cache / r.name).read_bytes() == r.read_bytes(), r.name


@pytest.mark.slow  # mounts a tmpfs (mount/umount subprocesses)
@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect-modalities"])
def test_h3_disk_full_keeps_the_previous_output(h3, tmpfs_2m, command):
    if command == "predict":
        out = tmpfs_2m / "p.nii.gz"
        shutil.copy(h3["pred"], out)
        args = ["predict", "--run", h3["run"], "--data", h3["data"], "--volume", "2", "--out", out, "--quiet"]
    elif command == "evaluate":
        out = tmpfs_2m / "m.csv"
        out.write_text("volume,dice_wt\n1,0.5\n")
        args = ["evaluate", "--run", h3["run"], "--data", h3["data"], "--cache", h3["cache"], "--out", out, "--quiet"]
    elif command == "inspect-modalities":
        out = tmpfs_2m / "i.json"
        out.write_text('{"old": true}')
        args = ["inspect-modalities", "--data", h3["data"], "--json", out]
    record_written(out, command)  # that command's earlier output: the one kind of file it may replace
    before = tree_hash(tmpfs_2m)
    _fill(tmpfs_2m)
    code, err = run_main(*args)
    (tmpfs_2m / "filler").unlink()
    refused(code, err, "disk full")
    assert tree_hash(tmpfs_2m) == before
    _no_temp_files(tmpfs_2m)


# ------------------------------------------------------------------ read-only folders


@pytest.mark.slow  # mount/remount subprocesses
def test_read_only_folder(small_tmpfs, capsys):
    out = small_tmpfs / "d"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    digest = tree_hash(small_tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        with pytest.raises(PermissionError, match=f"cannot lock {out} for a training run: the folder is read-only"):
            with folder_lock(out, "training run"):
                pass
        with pytest.raises(PermissionError, match=f"cannot write {out / 'keep.txt'}: its folder is read-only"):
            atomic_write(out / "keep.txt", "new")
        assert main(["synth", "--out", str(out), "--volumes", "1", "--shape", "8", "8", "8", "--overwrite"]) == 2
        err = capsys.readouterr().err
        # a folder holding a user's file is refused before anything is tried, read-only or not (the output guard)
        assert err == (f"tumorlib synth: error: --out {out}: --overwrite replaces only a folder tumorlib synth wrote, "
                       "and tumorlib did not write it (no record of tumorlib's in it); never replaced: choose another "
                       "folder\n")
        assert tree_hash(small_tmpfs) == digest
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)


# ------------------------------------------------------------------ atomic writes under SIGKILL


@pytest.mark.slow  # a writer subprocess killed at random moments
def test_atomic_write_killed_at_random_moments(tmp_path):
    """A writer killed at any moment leaves the complete old or the complete new file, nothing else."""
    target = tmp_path / "index.json"
    code = textwrap.dedent(f"""
        import sys
        from tumorlib.core.safety import atomic_write
        for i in range(10**6):
            atomic_write({str(target)!r}, bytes([i % 251]) * 400_000)
            if i == 0:
                print("ready", flush=True)
    """)
    rng = np.random.default_rng(3)
    for delay in rng.uniform(0.0, 0.3, size=6):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        data = target.read_bytes()
        assert len(data) == 400_000 and data == data[:1] * 400_000
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["index.json"]


# -------------------------------------------------------- an --out never replaces an input or another command's output


@pytest.mark.parametrize("victim", ["case_flair.nii.gz", "case_seg.nii.gz", "link"])
def test_predict_out_naming_an_input_is_refused(finished_run, tmp_path, capsys, victim):
    import nibabel as nib

    case = nifti_case(tmp_path / "case", shape=(20, 40, 40))
    nib.save(nib.Nifti1Image(np.zeros((20, 40, 40), np.uint8), np.eye(4)), case / "case_seg.nii.gz")
    out = case / victim
    if victim == "link":
        out = tmp_path / "pred.nii.gz"
        out.symlink_to(case / "case_t1.nii.gz")
    digest = tree_hash(case)
    assert main(["predict", "--run", str(finished_run), "--nifti", str(case), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} is an input file" in err
    assert tree_hash(case) == digest


OUT_VICTIMS = ["run/checkpoints/best_model.pth", "run/checkpoints/last.pth", "run/config.json", "run/splits.json",
               "run/history.csv", "cache/index.json", "cache/v1_img.npy",
               f"data/{KAGGLE_SUBDIR}/volume_1_slice_0.h5", f"data/{KAGGLE_SUBDIR}/meta_data.csv"]


OUT_XFAIL: dict = {}


def _victim_args(command, base, victim_path):
    run, cache, data = base / "run", base / "cache", base / "data"
    if command == "evaluate":
        return ["evaluate", "--run", run, "--cache", cache, "--out", victim_path, "--quiet"]
    if command == "predict":
        return ["predict", "--run", run, "--data", data, "--volume", "1", "--out", victim_path, "--quiet"]
    return ["inspect-modalities", "--data", data, "--json", victim_path]


@pytest.mark.parametrize("command", ["evaluate", "predict", "inspect-modalities"])
@pytest.mark.parametrize("victim", OUT_VICTIMS)
def test_h3_out_naming_an_input_or_another_output_is_refused(h3, tmp_path, command, victim, request):
    if (command, victim) in OUT_XFAIL:
        request.applymarker(OUT_XFAIL[command, victim])
    base = tmp_path / "w"
    for name in ("run", "cache", "data"):
        copy_tree(h3[name], base / name)
    digest = tree_hash(base)
    code, err = run_main(*_victim_args(command, base, base / victim))
    refused(code, err, base / victim)
    assert tree_hash(base) == digest


@pytest.mark.parametrize("case", ["cache--out=data", "cache--out=run", "train--out=cache", "train--out=data",
                                  "cache--out=data-slice-folder"])
def test_h3_folder_out_naming_another_commands_folder_is_refused(h3, tmp_path, case):
    base = tmp_path / "w"
    for name in ("run", "cache", "data"):
        copy_tree(h3[name], base / name)
    digest = tree_hash(base)
    run, cache, data = base / "run", base / "cache", base / "data"
    args = {
        "cache--out=data": cache_args(data, data),
        "cache--out=data-slice-folder": cache_args(data, slice_folder(data)),
        "cache--out=run": cache_args(data, run),
        "train--out=cache": train_args(cache, cache),
        "train--out=data": train_args(cache, data),
    }[case]
    code, err = run_main(*args)
    out = Path(args[args.index("--out") + 1])
    refused(code, err, out)
    assert tree_hash(base) == digest


# -------------------------------------------------------------- concurrent writers: two commands on one folder at once


@pytest.mark.slow  # four subprocesses that sleep while holding the lock
def test_concurrent_writers_one_wins(tmp_path):
    folder = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys, time
        from tumorlib.core.safety import FolderBusyError, folder_lock
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
        try:
            with folder_lock({str(folder)!r}, "training run"):
                (__import__("pathlib").Path({str(folder)!r}) / f"w{{os.getpid()}}").write_text("x")
                time.sleep(1.5)
        except FolderBusyError as err:
            print(err)
            sys.exit(9)
    """)
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=60), p.stdout.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 9, 9, 9]
    for code_, text in results:
        if code_ == 9:
            assert f"{folder} is in use by another training run (pid " in text
    assert len(list(folder.glob("w*"))) == 1


@pytest.mark.slow  # subprocesses and real signals: seconds each, minutes under load
def test_h3_two_caches_into_one_folder(h3, tmp_path):
    data = synth(tmp_path / "data", volumes=6)
    ref = tmp_path / "ref"
    assert run_main(*cache_args(data, ref))[0] == 0
    cache = tmp_path / "cache"
    procs = [run_cli(*[str(a) for a in cache_args(data, cache)]) for _ in range(2)]
    results = [proc_clean(p) for p in procs]
    for code, _, err in results:
        assert code == 0 or (code == 2 and "in use" in err and len(message_lines(err)) == 1), err
    assert any(code == 0 for code, _, _ in results)
    assert run_main(*cache_args(data, cache))[0] == 0
    for r in sorted(ref.glob("v*.npy")):
        assert (cache / r.name).read_bytes() == r.read_bytes(), r.name


@pytest.mark.slow  # subprocesses and real signals: seconds each, minutes under load
def test_h3_two_synths_into_one_new_folder(tmp_path):
    out = tmp_path / "d"
    args = ["synth", "--out", str(out), "--volumes", "6", "--shape", *SHAPE, "--seed", "0", "--quiet"]
    ref = synth(tmp_path / "ref", volumes=6)
    results = [proc_clean(p) for p in [run_cli(*args) for _ in range(2)]]
    for code, _, err in results:
        assert code == 0 or (code == 2 and len(message_lines(err)) == 1), err
    assert any(code == 0 for code, _, _ in results)
    assert tree_hash(out) == tree_hash(ref)


@pytest.mark.slow  # subprocesses and real signals: seconds each, minutes under load
def test_h3_two_predicts_into_one_file(h3, tmp_path):
    import nibabel as nib

    out = tmp_path / "p.nii.gz"
    args = ["predict", "--run", str(h3["run"]), "--data", str(h3["data"]), "--volume", "1", "--out", str(out),
            "--quiet"]
    results = [proc_clean(p) for p in [run_cli(*args) for _ in range(2)]]
    for code, _, err in results:
        assert code == 0 or (code == 2 and len(message_lines(err)) == 1), err
    ref = np.asarray(nib.load(h3["pred"]).dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), ref)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != OUTPUT_RECORD) == ["p.nii.gz"]


@pytest.mark.slow  # subprocesses and real signals: seconds each, minutes under load
def test_h3_train_while_the_cache_is_rebuilt(h3, tmp_path):
    """A `cache` rebuilding a volume while `train` reads the folder: train refuses or trains on whole files."""
    cache = copy_tree(h3["cache"], tmp_path / "cache")
    victim = cache / "v2_img.npy"
    victim.write_bytes(victim.read_bytes()[:-64])  # the cache will rebuild volume 2
    p_cache = run_cli(*[str(a) for a in cache_args(h3["data"], cache)])
    p_train = run_cli(*[str(a) for a in train_args(cache, tmp_path / "run")])
    for code, _, err in (proc_clean(p_cache), proc_clean(p_train)):
        assert code == 0 or len(message_lines(err)) == 1, err
    for r in sorted(h3["cache"].glob("v*.npy")):
        assert (cache / r.name).read_bytes() == r.read_bytes(), r.name
