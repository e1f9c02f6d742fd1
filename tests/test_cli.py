from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

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
    assert "argument --volumes: 0 is below 1" in out.stderr


def _subcommands(parser):
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices.items())


def _numeric_options():
    """(subcommand, option, action) for every option of every subcommand whose value is a number."""
    out = []
    for name, sub in _subcommands(build_parser()):
        for action in sub._actions:
            if action.option_strings and (action.type in (int, float) or hasattr(action.type, "minimum")):
                out.append((name, action.option_strings[-1], action))
    return out


NUMERIC = _numeric_options()


def test_every_numeric_option_states_its_range():
    """A plain type=int or type=float takes 0 and negatives silently: each numeric option declares its minimum
    (``tumorlib.app.arguments.int_at_least``), so a new one cannot slip past."""
    assert len(NUMERIC) >= 15
    plain = [f"{name} {opt}" for name, opt, action in NUMERIC if action.type in (int, float)]
    assert not plain, "numeric options without a range: " + ", ".join(plain)


@pytest.mark.parametrize("name,opt,action", NUMERIC, ids=[f"{n}{o}" for n, o, _ in NUMERIC])
def test_a_number_below_the_range_is_one_line_naming_the_option(name, opt, action, capsys):
    below = str(action.type.minimum - 1)
    values = [below] * (action.nargs if isinstance(action.nargs, int) else 1)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([name, opt, *values])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and opt in err[-1] and f"{below} is below {action.type.minimum}" in err[-1]
