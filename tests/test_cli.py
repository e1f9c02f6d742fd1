from __future__ import annotations

import subprocess
import sys

import numpy as np

from tumorlib.app.cli import build_parser, main
from tumorlib.app.arguments import config_from_args
from tumorlib.data import list_volumes, load_volume, make_phantom


def test_synth_then_load(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--volumes", "2", "--shape", "10", "20", "24",
                 "--seed", "5", "--quiet"]) == 0
    assert "wrote 2 volumes" in capsys.readouterr().out
    assert list_volumes(tmp_path) == [1, 2]
    image, mask = load_volume(tmp_path, 2)
    ref_image, ref_mask = make_phantom((10, 20, 24), seed=5, volume_id=2)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(mask, ref_mask)


def test_config_flags():
    parser = build_parser()
    args = parser.parse_args(["synth", "--out", "x"])
    assert args.command == "synth"
    from tumorlib.app.arguments import add_config_args
    import argparse

    p = argparse.ArgumentParser()
    add_config_args(p)
    cfg = config_from_args(p.parse_args(["--preset", "ci", "--epochs", "5", "--patch_size", "8,16,16"]))
    assert cfg.preset == "ci" and cfg.epochs == 5 and cfg.patch_size == (8, 16, 16)


def test_console_entry_point_reports_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tumorlib", "synth", "--out", str(tmp_path), "--volumes", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "n_volumes must be >= 1" in out.stderr
