"""tumorlib.core.safety, tumorlib.core.folders and tumorlib.core.integrity: each mechanism on its own (faults: test_faults_*.py)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tumorlib.core.integrity import VerificationError, file_record, record_problem, verify_record
from tumorlib.core.folders import (
    check_empty_folder,
    check_not_input,
    discard_previous,
    inside,
    move_aside,
    replace_folder,
)
from tumorlib.core.safety import (
    LOCK_NAME,
    DiskFullError,
    FolderBusyError,
    OutputIsInputError,
    UnsafePathError,
    atomic_open,
    atomic_path,
    atomic_write,
    folder_lock,
    is_disk_full,
)


def _hold_lock(folder, seconds=30):
    """A subprocess holding the writer lock of ``folder``; returns once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from tumorlib.core.safety import folder_lock
        with folder_lock({str(folder)!r}, "test writer"):
            print("locked", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_excludes_second_writer_and_names_holder(tmp_path):
    proc = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(FolderBusyError, match=rf"{tmp_path / 'run'} is in use by another training run "
                                                  rf"\(pid {proc.pid}\)"):
            with folder_lock(tmp_path / "run", "training run"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path / "run"):  # a killed holder leaves no stale lock
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released: no PID left behind


def test_lock_released_on_exception_and_not_reentrant(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with folder_lock(tmp_path):
            with pytest.raises(FolderBusyError, match=str(os.getpid())):
                with folder_lock(tmp_path):
                    pass
            raise RuntimeError("boom")
    with folder_lock(tmp_path):
        pass


def test_lock_released_on_sigterm(tmp_path):
    proc = _hold_lock(tmp_path)
    proc.terminate()
    proc.wait(timeout=10)
    with folder_lock(tmp_path):
        pass


def test_lock_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(PermissionError, match=f"cannot lock {ro} .*read-only"):
            with folder_lock(ro):
                pass
    finally:
        ro.chmod(0o755)


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(KeyError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise KeyError("stop")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(target, "a"):
            pass


def test_atomic_path_for_writers_that_take_a_name(tmp_path):
    import numpy as np

    target = tmp_path / "v1_img.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".v1_img.npy")
        np.save(tmp, np.arange(5))  # the suffix is kept, so np.save adds nothing
    np.testing.assert_array_equal(np.load(target), np.arange(5))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            np.save(tmp, np.zeros(3))
            raise RuntimeError("killed")
    np.testing.assert_array_equal(np.load(target), np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["v1_img.npy"]


def test_atomic_write_disk_full_message(tmp_path, monkeypatch):
    target = tmp_path / "best_model.pth"
    atomic_write(target, b"good")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match=f"^disk full while writing {target}$") as info:
        atomic_write(target, b"better")
    assert info.value.errno == errno.ENOSPC and is_disk_full(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth"]


def test_move_aside_refuses_then_keeps_previous(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best_model.pth").write_bytes(b"model")
    (run / "history.csv").write_text("epoch\n1\n")
    names = ["checkpoints/best_model.pth", "history.csv", "curves.png"]
    with pytest.raises(FileExistsError, match=r"already holds a finished run \(checkpoints/best_model.pth, "
                                              r"history.csv\).*--resume.*--overwrite"):
        move_aside(run, names)
    assert (run / "history.csv").read_text() == "epoch\n1\n"
    prev = move_aside(run, names, overwrite=True)
    assert prev.parent == run and prev.name.startswith("previous-")
    assert (prev / "checkpoints" / "best_model.pth").read_bytes() == b"model"
    assert not (run / "history.csv").exists()
    assert move_aside(run, names) is None  # nothing finished left: no refusal
    discard_previous(prev)
    assert not prev.exists()
    discard_previous(None)


def test_check_empty_folder(tmp_path):
    check_empty_folder(tmp_path / "missing")
    check_empty_folder(tmp_path)
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(FileExistsError, match=f"{tmp_path} is not empty \\(holds x.h5\\)"):
        check_empty_folder(tmp_path)
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_empty_folder(tmp_path / "x.h5")


def test_replace_folder(tmp_path):
    target = tmp_path / "out"

    def build(text):
        return lambda folder: (folder / "f.txt").write_text(text)

    replace_folder(target, build("one"))
    assert (target / "f.txt").read_text() == "one"
    with pytest.raises(FileExistsError, match="not empty"):
        replace_folder(target, build("two"))

    def failing(folder):
        (folder / "f.txt").write_text("half")
        raise ValueError("generator failed")

    with pytest.raises(ValueError, match="generator failed"):
        replace_folder(target, failing, overwrite=True)
    assert (target / "f.txt").read_text() == "one"
    replace_folder(target, build("two"), overwrite=True)
    assert (target / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old folder left


def test_replace_folder_removes_partials_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.partial-{dead}"
    stale.mkdir()
    replace_folder(tmp_path / "out", lambda f: (f / "a").write_text("a"))
    assert not stale.exists()


def test_check_not_input(tmp_path):
    flair = tmp_path / "case_flair.nii.gz"
    flair.write_bytes(b"x")
    check_not_input(tmp_path / "seg.nii.gz", [flair])
    with pytest.raises(OutputIsInputError, match=f"--out {flair} is an input file"):
        check_not_input(flair, [flair])
    link = tmp_path / "link.nii.gz"
    link.symlink_to(flair)
    with pytest.raises(OutputIsInputError):
        check_not_input(link, [flair])
    hard = tmp_path / "hard.nii.gz"
    os.link(flair, hard)
    with pytest.raises(OutputIsInputError):
        check_not_input(hard, [flair])
    with pytest.raises(OutputIsInputError):
        check_not_input(tmp_path / "sub" / ".." / "case_flair.nii.gz", [flair])


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.npy", "a/../../x.npy", "", "sub/../../../etc"])
def test_inside_refuses_names_leaving_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match=f"^{tmp_path}: index file name"):
        inside(tmp_path, name)


def test_inside_accepts_plain_names_and_refuses_symlinks_out(tmp_path):
    assert inside(tmp_path, "v1.npy") == tmp_path.resolve() / "v1.npy"
    assert inside(tmp_path, "sub/v1.npy") == tmp_path.resolve() / "sub" / "v1.npy"
    outside = tmp_path.parent / f"{tmp_path.name}_outside.npy"
    outside.write_bytes(b"x")
    (tmp_path / "evil.npy").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="leads outside the folder"):
        inside(tmp_path, "evil.npy")


def test_file_records(tmp_path):
    path = tmp_path / "v1.npy"
    path.write_bytes(b"0123456789")
    cheap, deep = file_record(path), file_record(path, checksum=True)
    assert cheap["size"] == 10 and "blake2b" not in cheap and len(deep["blake2b"]) == 32
    assert record_problem(path, deep, checksum=True) is None
    verify_record(path, cheap)
    # same size, same time, different bytes: only the checksum notices
    st = path.stat()
    path.write_bytes(b"0123456780")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert record_problem(path, deep) is None
    assert record_problem(path, deep, checksum=True) == "checksum differs from recorded"
    path.write_bytes(b"01234")
    assert record_problem(path, cheap) == "size 5 != recorded 10"
    time.sleep(0.01)
    path.write_bytes(b"abcdefghij")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**7))
    assert record_problem(path, cheap) == "modified since recorded"
    assert record_problem(path, cheap, mtime=False) is None
    with pytest.raises(VerificationError, match=f"^{path}: modified since recorded$"):
        verify_record(path, cheap)
    path.unlink()
    assert record_problem(path, cheap) == "missing"
