"""Fault injection: kills, disk full, read-only folders, corrupt and hostile inputs, concurrent writers.

Each case asserts the message the user sees AND that no earlier data changed (a hash of the folder
before and after). Mechanisms alone are in test_safety.py; here they run through the commands.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from tumorlib.app.cli import main
from tumorlib.data import KAGGLE_SUBDIR, list_volumes, load_volume
from tumorlib.core.safety import DiskFullError, FolderBusyError, atomic_write, folder_lock

SHAPE = ("8", "24", "24")


def tree_hash(folder: Path) -> str:
    """One hash over every file's relative path and bytes below ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def synth_args(out, volumes=2, seed=0, *extra):
    return ["synth", "--out", str(out), "--volumes", str(volumes), "--shape", *SHAPE, "--seed", str(seed),
            "--quiet", *extra]


def _default_sigint():  # a shell's background job starts with SIGINT ignored; a terminal's does not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tumorlib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint, **kwargs)


@pytest.fixture(scope="module")
def old_set(tmp_path_factory):
    """An existing dataset (the 'earlier data' every case must leave unchanged) and its hash."""
    root = tmp_path_factory.mktemp("old") / "data"
    assert main(synth_args(root, 2, 0)) == 0
    return root, tree_hash(root)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ------------------------------------------------------------------ synth: refuse, replace whole, kills


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


def test_synth_kill_at_many_points_keeps_old_or_complete_new(tmp_path):
    """SIGKILL at random moments of `synth --overwrite`: the folder is the old set or the complete new one."""
    out = tmp_path / "d"
    assert main(synth_args(out, 2, 0)) == 0
    old = tree_hash(out)
    ref = tmp_path / "ref"
    assert main(synth_args(ref, 12, 1)) == 0
    new = tree_hash(ref)
    rng = np.random.default_rng(12)
    outcomes = []
    for delay in [0.0, *rng.uniform(0.0, 0.6, size=4)]:
        proc = run_cli(*synth_args(out, 12, 1, "--overwrite"))
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".d.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        digest = tree_hash(out)
        assert digest in (old, new), f"killed {delay:.2f}s into generation: {out} holds a mixed set"
        outcomes.append("new" if digest == new else "old")
        if digest == new:
            assert main(synth_args(out, 2, 0, "--overwrite")) == 0  # back to the old set for the next kill
    assert "old" in outcomes  # at least one kill landed during generation
    assert main(synth_args(out, 2, 0, "--overwrite")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "ref"]  # killed runs' partials removed


@pytest.mark.parametrize("sig,code,text", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                           (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_synth_sigterm_and_ctrl_c_one_line_exit_code_old_kept(tmp_path, sig, code, text):
    out = tmp_path / "d"
    assert main(synth_args(out, 2, 0)) == 0
    old = tree_hash(out)
    proc = run_cli(*synth_args(out, 200, 1, "--overwrite"))
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".d.partial-*/**/*.h5")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    if "as the work finished" in err:  # rare: the exception was swallowed inside a library callback
        assert list_volumes(out) == list(range(1, 201))
    else:
        assert "left as it was" in err
        assert tree_hash(out) == old


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cache_interrupted_with_workers_one_line_then_resumes(tmp_path, sig, code):
    """Signal the whole process group (as a terminal or a scheduler does): workers print nothing."""
    data = tmp_path / "data"
    assert main(synth_args(data, 6)) == 0
    args = ["cache", "--preset", "ci", "--data", str(data), "--workers", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    proc = run_cli(*args, "--out", str(tmp_path / "c"), start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "c").glob("v*_img.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the cache finished before the signal arrived")
    assert proc.returncode == code
    assert err.count("\n") == 1 and "Traceback" not in err and "rerun the same command" in err, err
    assert main([*args, "--out", str(tmp_path / "c")]) == 0  # resumes from what was kept
    for ref in sorted((tmp_path / "ref").glob("v*.npy")):
        assert (tmp_path / "c" / ref.name).read_bytes() == ref.read_bytes(), ref.name


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


def test_cli_disk_full_without_file_name(monkeypatch, capsys):
    import tumorlib.app.cli as cli
    import tumorlib.app.commands as commands

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(commands, "_cmd_synth", full)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), full))
    assert main(["synth", "--out", "x"]) == 2
    assert capsys.readouterr().err == ("tumorlib synth: error: disk full while writing an output file "
                                       "(the system did not say which)\n")


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


# ------------------------------------------------------------------ read-only folders


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
        assert err == (f"tumorlib synth: error: cannot write {out}: its folder {small_tmpfs} is read-only "
                       f"(Read-only file system)\n")
        assert tree_hash(small_tmpfs) == digest
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)


# ------------------------------------------------------------------ atomic writes under SIGKILL


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


# ------------------------------------------------------------------ concurrent writers


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


def test_folder_busy_is_one_line_in_cli(tmp_path, monkeypatch, capsys):
    import tumorlib.app.cli as cli

    def busy(args):
        with folder_lock(tmp_path, "training run"), folder_lock(tmp_path, "training run"):
            pass

    monkeypatch.setattr(cli, "build_parser", lambda p=cli.build_parser: _with_func(p(), busy))
    assert main(["synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is in use by another training run (pid {os.getpid()})" in err


# ------------------------------------------------------------------ CLI error policy


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path, monkeypatch, capsys):
    args = ["synth", "--out", str(tmp_path / "x"), "--volumes", "0"]
    assert main(args) == 2
    assert capsys.readouterr().err == "tumorlib synth: error: n_volumes must be >= 1, got 0\n"
    assert main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("tumorlib synth: error: n_volumes must be >= 1, got 0\n")
    monkeypatch.setenv("TUMORLIB_DEBUG", "1")
    assert main(args) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("exc,expected,code", [
    (KeyError("volume 9 not found below /d"), "error: volume 9 not found below /d", 2),
    (EOFError("Compressed file ended"), "error: Compressed file ended", 2),
    (FloatingPointError("loss is nan"), "error: loss is nan", 3),
    (TypeError("unsupported operand"), "internal error: TypeError: unsupported operand (rerun with --debug", 1),
])
def test_error_kinds(monkeypatch, capsys, exc, expected, code):
    import tumorlib.app.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "build_parser", lambda p=cli.build_parser: _with_func(p(), fail))
    assert main(["synth", "--out", "x"]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"tumorlib synth: {expected}") and err.count("\n") == 1


def test_notebooks_only_matching_nothing_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUMORLIB_OUT", str(tmp_path / "o"))
    assert main(["notebooks", "--dir", "notebooks", "--out", str(tmp_path / "o"), "--only", "99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorlib notebooks: error: --only 99: no notebook in notebooks starts with that "
                          "(have: 01, 02") and err.count("\n") == 1
    assert not any((tmp_path / "o").glob("*.ipynb"))


# ------------------------------------------------------------------ the Kaggle reader: bad data is named


def _slice(folder: Path, vid, s, image=None, mask=None, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    image = np.ones((6, 6, 4)) if image is None else image
    mask = np.zeros((6, 6, 3), np.uint8) if mask is None else mask
    path = folder / (name or f"volume_{vid}_slice_{s}.h5")
    with h5py.File(path, "w") as f:
        f["image"] = image
        f["mask"] = mask
    return path


@pytest.mark.parametrize("image,mask,message", [
    (None, np.full((6, 6, 3), 0.5), r"mask values must be 0 or 1, found \[0.5\] \(float64\)"),
    (None, np.full((6, 6, 3), 2, np.uint8), r"mask values must be 0 or 1, found \[2\]"),
    (np.full((6, 6, 4), 1e39), None, r"image values up to 1e\+39 overflow float32"),
    (np.full((6, 6, 4), np.nan), None, r"image holds NaN or inf values"),
    (np.bytes_(b"not an image"), None, r"image holds \|S12 values \('S'\), not numbers"),
    (None, "mask as text", r"mask holds \|S12 values \('S'\), not numbers"),
    (None, np.array(["a", "b"], dtype=h5py.string_dtype()), r"mask holds object values \('O'\), not numbers"),
])
def test_reader_bad_slice_values_name_the_file(tmp_path, image, mask, message):
    path = _slice(tmp_path, 1, 0, image=image, mask=mask)
    digest = tree_hash(tmp_path)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        load_volume(tmp_path, 1)
    assert tree_hash(tmp_path) == digest


def test_reader_warns_about_non_integer_ids(tmp_path):
    _slice(tmp_path, 1, 0)
    _slice(tmp_path, 0, 0, name="volume_1a_slice_0.h5")
    _slice(tmp_path, 0, 0, name="volume_2_slice_x.h5")
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) whose volume id or slice index is not an integer"):
        assert list_volumes(tmp_path) == [1]


def test_reader_zero_padded_ids_are_read_consistently(tmp_path):
    for s in range(3):
        _slice(tmp_path, 7, s, name=f"volume_007_slice_{s}.h5")
    assert list_volumes(tmp_path) == [7]
    image, _ = load_volume(tmp_path, 7)  # listed as 7 and readable as 7: no self-contradicting message
    assert image.shape == (4, 3, 6, 6)
    _slice(tmp_path, 7, 1)
    with pytest.raises(ValueError, match=r"volume 7: slice 1 found twice: .*volume_0*7_slice_1.h5 and "):
        load_volume(tmp_path, 7)


def test_reader_missing_trailing_slices(tmp_path):
    from tumorlib.data import make_synthetic

    root = tmp_path / "d"
    data = make_synthetic(root, 3, (8, 24, 24), seed=0)
    for s in (6, 7):
        (data / f"volume_2_slice_{s}.h5").unlink()
    digest = tree_hash(root)
    with pytest.raises(ValueError, match=rf"volume 2: 6 slices in {data} but {data / 'meta_data.csv'} lists 8: "
                                          r"slice\(s\) 6..7 are missing"):
        load_volume(root, 2)
    assert tree_hash(root) == digest
    (data / "meta_data.csv").unlink()  # without the CSV: the other volumes' depth is the reference
    with pytest.warns(UserWarning, match=r"volume 2: 6 slices .* most volumes there have 8: trailing slices"):
        image, _ = load_volume(root, 2)
    assert image.shape[1] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(root, 1)  # a complete volume: no warning


def test_reader_truncated_slice_names_the_file(tmp_path):
    path = _slice(tmp_path, 1, 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OSError, match=f"^{path}: unreadable HDF5 file"):
        load_volume(tmp_path, 1)


# ------------------------------------------------------------------ NIfTI cases


def _nifti_case(folder: Path, zooms=None, zero=None, shape=(6, 7, 5)):
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.zeros(shape, np.float32) if m == zero else rng.uniform(1, 10, shape).astype(np.float32)
        img = nib.Nifti1Image(data, np.eye(4))
        img.header.set_zooms((zooms or {}).get(m, (1.0, 1.0, 1.0)))
        nib.save(img, folder / f"case_{m}.nii.gz")
    return folder


def test_nifti_truncated_file_one_line(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = _nifti_case(tmp_path / "case", shape=(40, 40, 30))  # random data: the header survives the cut
    t2 = case / "case_t2.nii.gz"
    raw = gzip.decompress(t2.read_bytes())
    t2.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    digest = tree_hash(case)
    with pytest.raises(OSError, match=f"^{t2}: truncated or corrupt NIfTI data") as info:
        load_nifti_case(case)
    assert "\n" not in str(info.value)
    assert tree_hash(case) == digest


def test_nifti_voxel_sizes_must_agree(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = _nifti_case(tmp_path / "case", zooms={"t2": (1.0, 1.0, 2.0)})
    with pytest.raises(ValueError, match=rf"{case / 'case_t2.nii.gz'}: voxel size \(1.0, 1.0, 2.0\) mm differs "
                                         rf"from {case / 'case_t1.nii.gz'} \(1.0, 1.0, 1.0\) mm"):
        load_nifti_case(case)


def test_nifti_all_zero_modality_refused(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = _nifti_case(tmp_path / "case", zero="flair")
    with pytest.raises(ValueError, match=f"{case / 'case_flair.nii.gz'}: every voxel is 0"):
        load_nifti_case(case)


def test_nifti_shape_mismatch_names_both_files(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = _nifti_case(tmp_path / "case")
    _nifti_case(tmp_path / "other", shape=(6, 7, 4))
    os.replace(tmp_path / "other" / "case_t1ce.nii.gz", case / "case_t1ce.nii.gz")
    with pytest.raises(ValueError, match=rf"case_t1ce.nii.gz: shape \(6, 7, 4\) differs from {case / 'case_t1.nii.gz'}"):
        load_nifti_case(case)



# ------------------------------------------------------------------ training runs: splits, previous runs, locks

TRAIN = ["--preset", "ci", "--epochs", "1", "--quiet"]


def _train_args(cache, run, *extra):
    return ["train", "--cache", str(cache), "--out", str(run), *TRAIN, *extra]


def _hashes(folder: Path, names) -> dict[str, str]:
    """sha256 of each named file below ``folder`` that exists."""
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names if (folder / n).is_file()}


@pytest.fixture(scope="module")
def finished_run(ci_cache, tmp_path_factory):
    """A finished one-epoch ci run (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_train_args(ci_cache, run)) == 0
    return run


def _copy_run(finished_run, tmp_path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def test_refused_resume_leaves_splits_unchanged(finished_run, ci_cache, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    digest = tree_hash(run)
    assert main(_train_args(ci_cache, run, "--resume", "--split_seed", "7")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume" in err and "split_seed=42 in the checkpoint but 7 now" in err
    assert tree_hash(run) == digest  # splits.json (and everything else) as it was
    # the same config, but a splits.json that no longer matches the cache's split: refused too
    splits = json.loads((run / "splits.json").read_text())
    splits["train"], splits["val"] = splits["train"][1:], splits["val"] + splits["train"][:1]
    (run / "splits.json").write_text(json.dumps(splits))
    digest = tree_hash(run)
    assert main(_train_args(ci_cache, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "splits.json holds other volumes than the split of this cache now" in err
    assert tree_hash(run) == digest


def test_new_run_refused_without_overwrite(finished_run, ci_cache, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    digest = tree_hash(run)
    assert main(_train_args(ci_cache, run)) == 2
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

    run = _copy_run(finished_run, tmp_path)
    old = _hashes(run, RUN_FILES)
    _fail_first_step(monkeypatch, _Terminated() if exc == "sigterm" else exc)
    assert main(_train_args(ci_cache, run, "--overwrite")) == code
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

    run = _copy_run(finished_run, tmp_path)
    old = _hashes(run, RUN_FILES)
    assert main(_train_args(ci_cache, run, "--overwrite", "--seed", "3")) == 0
    assert not list(run.glob("previous-*"))
    new = _hashes(run, RUN_FILES)
    assert set(new) == set(old) and new["checkpoints/best_model.pth"] != old["checkpoints/best_model.pth"]


def test_ctrl_c_after_an_epoch_says_what_was_kept_then_resumes(ci_cache, tmp_path, monkeypatch, capsys):
    from tumorlib.training.engine import Trainer

    run = tmp_path / "run"
    real = Trainer.validation_step
    calls = []

    def interrupt_second(self, loader):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt()
        return real(self, loader)

    monkeypatch.setattr(Trainer, "validation_step", interrupt_second)
    assert main(_train_args(ci_cache, run, "--epochs", "2")) == 130
    err = capsys.readouterr().err
    assert err == (f"tumorlib train: interrupted (Ctrl-C); {run / 'checkpoints' / 'last.pth'} keeps epoch 1/2; "
                   f"rerun with --resume to continue from it\n")
    monkeypatch.setattr(Trainer, "validation_step", real)
    assert main(_train_args(ci_cache, run, "--epochs", "2", "--resume")) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    import pandas as pd

    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1, 2]


def test_nan_input_is_blamed_not_the_learning_rate(tmp_path):
    """A NaN in the patches: the hint names the input (a finite input that diverges blames --lr above)."""
    import torch

    from tumorlib.core.config import get_config
    from tumorlib.training.loop import fit

    class NaNPatches(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def set_epoch(self, epoch):
            pass

        def __getitem__(self, item):
            image = torch.zeros(4, 16, 32, 32)
            image[0, 0, 0, 0] = float("nan")
            return image, torch.zeros(3, 16, 32, 32, dtype=torch.uint8)

    cfg = get_config("ci", epochs=1, samples_per_epoch=2, val_samples=2, num_workers=0)
    with pytest.raises(FloatingPointError, match=r"no epoch finished, so no checkpoint was written; the input "
                                                 r"patches hold NaN or inf values"):
        fit(cfg, NaNPatches(), NaNPatches(), tmp_path / "run", progress=False)


def test_two_trainings_into_one_out_second_refused_kill_keeps_previous(finished_run, ci_cache, tmp_path, capsys):
    """A real second process: refused naming the holder's PID; a SIGKILL at epoch 1 keeps the old model."""
    from tumorlib.training.run_folder import RUN_FILES

    run = _copy_run(finished_run, tmp_path)
    old = _hashes(run, RUN_FILES)
    proc = run_cli(*_train_args(ci_cache, run, "--overwrite", "--samples_per_epoch", "4000"))
    try:
        deadline = time.monotonic() + 120
        lock = run / ".tumorlib.lock"
        while time.monotonic() < deadline and proc.poll() is None and not (
                list(run.glob("previous-*")) and lock.read_text().strip() == str(proc.pid)):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert main(_train_args(ci_cache, run, "--resume")) == 2
        err = capsys.readouterr().err
        assert err == (f"tumorlib train: error: {run} is in use by another training run (pid {proc.pid}); wait for "
                       f"it to finish or stop it, or choose another folder\n")
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    (prev,) = run.glob("previous-*")
    assert _hashes(prev, RUN_FILES) == old
    assert not (run / "checkpoints" / "best_model.pth").exists()


def test_disk_full_during_a_checkpoint_write(ci_cache, small_tmpfs, capsys):
    run = small_tmpfs / "run"
    assert main(_train_args(ci_cache, run)) == 2
    err = capsys.readouterr().err
    assert err == f"tumorlib train: error: disk full while writing {run / 'checkpoints' / 'best_model.pth'}\n"
    assert "enforce fail" not in err
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".tmp")]
    assert not leftovers


# ------------------------------------------------------------------ the cache trusts what it checked


def _cache_args(data, cache):
    return ["cache", "--preset", "ci", "--data", str(data), "--out", str(cache), "--workers", "1", "--quiet"]


@pytest.fixture
def data_and_cache(tmp_path):
    data = tmp_path / "data"
    assert main(synth_args(data, 3)) == 0
    cache = tmp_path / "cache"
    assert main(_cache_args(data, cache)) == 0
    return data, cache


def test_truncated_npy_is_rebuilt_not_reported_done(data_and_cache, capsys):
    data, cache = data_and_cache
    capsys.readouterr()
    reference = tree_hash(cache)
    target = cache / "v2_img.npy"
    target.write_bytes(target.read_bytes()[:-100])
    assert main(_cache_args(data, cache)) == 0
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
    assert main(_cache_args(data, cache)) == 0
    assert f"rebuilding volume 3 (changed: {slice_file}: modified since recorded)" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(_cache_args(data, fresh)) == 0
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
    for args in (_cache_args(data, cache), _train_args(cache, tmp_path / "run")):
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
    assert main(_cache_args(data, cache)) == 0
    assert "volume 2 dropped: its source is gone" in capsys.readouterr().err
    assert cached_volume_ids(cache) == [1, 3]
    assert not list(cache.glob("v2_*"))


def test_read_only_finished_cache_is_usable(small_tmpfs, tmp_path, capsys):
    from tumorlib.core.config import get_config
    from tumorlib.data.resolve import resolve_cache

    data = tmp_path / "data"
    assert main(synth_args(data, 2)) == 0
    cache = small_tmpfs / "cache"
    assert main(_cache_args(data, cache)) == 0
    capsys.readouterr()
    digest = tree_hash(small_tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        assert main(_cache_args(data, cache)) == 0
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
        assert main(_cache_args(data, cache)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"volume 1 needs rebuilding (damaged: {target}: size" in err
        assert "read-only" in err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)


# ------------------------------------------------------------------ predict never replaces its input


@pytest.mark.parametrize("victim", ["case_flair.nii.gz", "case_seg.nii.gz", "link"])
def test_predict_out_naming_an_input_is_refused(finished_run, tmp_path, capsys, victim):
    import nibabel as nib

    case = _nifti_case(tmp_path / "case", shape=(20, 40, 40))
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
