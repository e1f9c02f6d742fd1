"""Helpers for the fault-injection tests (test_faults_*.py): running the CLI, building its command lines,
asserting a clean refusal, and making or spoiling the files the commands read.

Each fault case asserts the message the user sees AND that no earlier data changed (a hash of the folder
before and after). Mechanisms alone are in test_safety.py; the fault tests run them through the commands.

The cases named ``test_h3_*`` ("hostile round 3") were written against the README and the CLI's --help only
(no reading of the package source). Every such case states the expected behaviour: a one-line refusal on
stderr naming the file or value (non-zero exit, no traceback), or a correct result, and no earlier file
changed. Cases that fail today are marked xfail(strict=True) with "hostile: <outcome>: <what happens>"
(``xf``).

Two ways to run the CLI: ``run_main`` calls ``tumorlib.app.cli.main`` in this process and returns
(exit code, stderr); ``run_cli`` starts ``python -m tumorlib`` as a real process (for kills, signals and two
commands at once) and returns its ``Popen``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import h5py
import numpy as np
import pytest

from tumorlib.app.cli import main
from tumorlib.data import KAGGLE_SUBDIR

SHAPE = ("8", "24", "24")


def tree_hash(folder: Path) -> str:
    """One hash over every file's relative path and bytes below ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ command lines


def synth_args(out, volumes=2, seed=0, *extra, shape=SHAPE):
    return ["synth", "--out", str(out), "--volumes", str(volumes), "--shape", *shape, "--seed", str(seed),
            "--quiet", *extra]


def cache_args(data, cache, *extra):
    return ["cache", "--preset", "ci", "--data", str(data), "--out", str(cache), "--workers", "1", "--quiet",
            *extra]


def train_args(cache, run, *extra):
    return ["train", "--preset", "ci", "--cache", str(cache), "--out", str(run), "--epochs", "1", "--quiet",
            *extra]


def valid_args(h3, tmp_path, command):
    """A valid command line for ``command`` on the ``h3`` fixture's folders (a nonsense flag is appended to it)."""
    if command == "synth":
        return ["synth", "--out", tmp_path / "new", "--volumes", "1", "--shape", *SHAPE, "--quiet"]
    if command == "cache":
        return cache_args(h3["data"], tmp_path / "c")
    if command == "train":
        return train_args(h3["cache"], tmp_path / "r")
    if command == "evaluate":
        return ["evaluate", "--run", h3["run"], "--data", h3["data"], "--cache", h3["cache"], "--out",
                tmp_path / "m.csv", "--quiet"]
    if command == "predict":
        return ["predict", "--run", h3["run"], "--data", h3["data"], "--volume", "1", "--out",
                tmp_path / "p.nii.gz", "--quiet"]
    if command == "inspect-modalities":
        return ["inspect-modalities", "--data", h3["data"], "--json", tmp_path / "i.json"]
    raise AssertionError(command)


# ------------------------------------------------------------------ running the CLI


def run_main(*args):
    """Run the CLI in-process; returns (exit code, stderr). An exception escaping main() counts as a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # noqa: BLE001 - the point is to see it
            import traceback

            err.write("Traceback (escaped main)\n" + "".join(traceback.format_exception(exc)))
            code = "raised"
    return code, err.getvalue()


def _default_sigint():  # a shell's background job starts with SIGINT ignored; a terminal's does not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, env=None, **kwargs):
    """Start ``python -m tumorlib ARGS`` as its own process (stdout and stderr piped, text)."""
    return subprocess.Popen([sys.executable, "-m", "tumorlib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint, **kwargs)


def proc_clean(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, out, err


def wait_for(predicate, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.01)
    return proc.poll() is None


def synth(out, volumes=3, shape=SHAPE, seed=0):
    """Generate a synthetic dataset in-process (it must succeed); returns its folder."""
    code, err = run_main(*synth_args(out, volumes, seed, shape=shape))
    assert code == 0, err
    return Path(out)


# ------------------------------------------------------------------ what the user sees


def xf(outcome, text):
    return pytest.mark.xfail(strict=True, reason=f"hostile: {outcome}: {text}")


_PROGRESS = re.compile(r"\|[^|]*\| *\d+/\d+ \[")  # a tqdm bar: "name:  40%|####  | 2/5 [00:01<00:01, ...]"


def message_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (its 'usage:' line and indented continuation lines) and
    without progress bars (tqdm writes them to stderr: progress, not messages)."""
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))
            and not _PROGRESS.search(ln)]


def refused(code, err, *names):
    """Assert a clean refusal: non-zero exit, no traceback, one message line that names one of ``names``."""
    assert code not in (0, None, "raised"), f"exit {code}, stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = message_lines(err)
    assert len(lines) == 1, f"not one line: {lines}"
    if names:
        assert any(str(n) in lines[0] for n in names), f"{lines[0]!r} names none of {names}"
    return lines[0]


def clean(code, err, *names):
    """A correct result (exit 0) or a clean refusal; never a traceback."""
    assert "Traceback" not in err, err[-3000:]
    if code != 0:
        refused(code, err, *names)


# ------------------------------------------------------------------ files and folders


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def slice_folder(data: Path) -> Path:
    """The folder of a dataset's Kaggle slice files."""
    return data / KAGGLE_SUBDIR


def rewrite_slice(path: Path, image=None, mask=None, drop=()):
    """Rewrite one slice file keeping what is not replaced."""
    with h5py.File(path, "r") as f:
        old = {k: f[k][()] for k in f.keys()}
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in (("image", image), ("mask", mask)):
            if key in drop:
                continue
            f[key] = old[key] if value is None else value
    return path


def nifti_case(folder: Path, zooms=None, zero=None, shape=(6, 7, 5)):
    """A NIfTI case of random intensities (``zero`` names an all-zero modality, ``zooms`` voxel sizes)."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.zeros(shape, np.float32) if m == zero else rng.uniform(1, 10, shape).astype(np.float32)
        img = nib.Nifti1Image(data, np.eye(4))
        img.header.set_zooms((zooms or {}).get(m, (1.0, 1.0, 1.0)))
        nib.save(img, folder / f"case_{m}.nii.gz")
    return folder


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` at the new folder ``mnt`` (root only; skips the test where mounting is not allowed)."""
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
