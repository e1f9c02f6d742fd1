"""Paths with spaces and non-ASCII characters, end to end through the command line:
synth -> cache -> train (ci, tiny) -> evaluate -> predict, every folder under ``my data/Ångström ñ``."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

TINY = ["--preset", "ci", "--epochs", "1", "--warmup_epochs", "0", "--samples_per_epoch", "2", "--val_samples", "2"]


def _tumorlib(*args, env):
    result = subprocess.run([sys.executable, "-m", "tumorlib", *map(str, args)], capture_output=True, text=True,
                            timeout=600, env=env, encoding="utf-8")
    assert result.returncode == 0, f"tumorlib {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_spaces_and_non_ascii_end_to_end(tmp_path):
    base = tmp_path / "my data" / "Ångström ñ"
    data, cache, run = base / "BraTS 2020 ü", base / "cache é", base / "run ø"
    home = base / "home ß"
    env = {**os.environ, "TUMORLIB_HOME": str(home), "TUMORLIB_DATA": str(data), "PYTHONIOENCODING": "utf-8"}
    for var in ("TUMORLIB_OUT", "TUMORLIB_CACHE"):
        env.pop(var, None)
    out = _tumorlib("synth", "--out", data, "--volumes", "6", "--shape", "16", "32", "32", "--seed", "1", "--quiet",
                    env=env)
    assert "wrote 6 volumes" in out and str(data) in out
    _tumorlib("cache", "--data", data, "--out", cache, "--quiet", *TINY, env=env)
    assert (cache / "index.json").is_file()
    _tumorlib("train", "--data", data, "--cache", cache, "--out", run, "--device", "cpu", "--quiet", *TINY, env=env)
    assert (run / "config.json").is_file()
    metrics = base / "metrics ü.csv"
    _tumorlib("evaluate", "--run", run, "--data", data, "--cache", cache, "--split", "all", "--out", metrics,
              "--device", "cpu", "--quiet", env=env)
    frame = pd.read_csv(metrics)
    assert len(frame) >= 6
    seg = base / "seg ñ.nii.gz"
    _tumorlib("predict", "--run", run, "--data", data, "--volume", "1", "--out", seg, "--device", "cpu", "--quiet",
              env=env)
    nib = pytest.importorskip("nibabel")
    labels = nib.load(str(seg)).get_fdata()
    assert labels.shape == (32, 32, 16)
    assert set(pd.unique(labels.ravel())) <= {0, 1, 2, 4}
