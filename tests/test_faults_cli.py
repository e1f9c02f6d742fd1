"""Fault injection, the command line: every error is one line on stderr with an exit code by its kind (a
traceback only with --debug), nonsense flag values and missing or wrong-kind paths are refused naming the flag,
value or path, and nothing is written for a refused command.

The helpers are in faults_cli.py, the shared folders (h3) in conftest.py.
"""

from __future__ import annotations

import errno
import os

import pytest

from tumorlib.app.cli import main
from tumorlib.core.safety import folder_lock

from faults_cli import SHAPE, cache_args, refused, run_main, train_args, valid_args


# ------------------------------------------------------------------ CLI error policy


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path, monkeypatch, capsys):
    args = ["synth", "--out", str(tmp_path / "x"), "--shape", "2", "2", "2", "--quiet"]  # refused by the library
    message = "tumorlib synth: error: phantom shape must be 3 sides of at least 8 voxels, got (2, 2, 2)\n"
    assert main(args) == 2
    assert capsys.readouterr().err == message
    assert main([*args, "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith(message)
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


def test_folder_busy_is_one_line_in_cli(tmp_path, monkeypatch, capsys):
    import tumorlib.app.cli as cli

    def busy(args):
        with folder_lock(tmp_path, "training run"), folder_lock(tmp_path, "training run"):
            pass

    monkeypatch.setattr(cli, "build_parser", lambda p=cli.build_parser: _with_func(p(), busy))
    assert main(["synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is in use by another training run (pid {os.getpid()})" in err


def test_notebooks_only_matching_nothing_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUMORLIB_OUT", str(tmp_path / "o"))
    assert main(["notebooks", "--dir", "notebooks", "--out", str(tmp_path / "o"), "--only", "99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorlib notebooks: error: --only 99: no notebook in notebooks starts with that "
                          "(have: 01, 02") and err.count("\n") == 1
    assert not any((tmp_path / "o").glob("*.ipynb"))


# ------------------------------------------------------------------ nonsense on the command line


NONSENSE = [  # (command, flag, value or values)
    ("synth", "--volumes", "-1"), ("synth", "--volumes", "abc"), ("synth", "--volumes", "1e9"),
    ("synth", "--volumes", "100000000"), ("synth", "--shape", ["0", "24", "24"]),
    ("synth", "--shape", ["-8", "24", "24"]), ("synth", "--shape", ["8", "24"]),
    ("synth", "--shape", ["8", "24", "x"]), ("synth", "--shape", ["100000", "100000", "100000"]),
    ("synth", "--seed", "-1"), ("synth", "--seed", "nan"),
    ("cache", "--workers", "0"), ("cache", "--workers", "-3"), ("cache", "--workers", "many"),
    ("cache", "--cache_hw", "-1,-1"), ("cache", "--cache_hw", "0,0"), ("cache", "--cache_hw", "16"),
    ("cache", "--cache_margin", "-5"), ("cache", "--cache_margin", "x"),
    ("cache", "--kaggle_channel_order", "t1,t1,t2,flair"), ("cache", "--kaggle_channel_order", "t1,t2,flair"),
    ("cache", "--kaggle_channel_order", "a,b,c,d"), ("cache", "--preset", "nope"),
    ("train", "--epochs", "0"), ("train", "--epochs", "1.5"), ("train", "--lr", "-1"), ("train", "--lr", "nan"),
    ("train", "--lr", "inf"), ("train", "--batch_size", "0"), ("train", "--patch_size", "0,0,0"),
    ("train", "--patch_size", "a,b,c"), ("train", "--patch_size", "15,31,31"),
    ("train", "--patch_size", "16,32,32,32"), ("train", "--features", "4,8"), ("train", "--features", "-4,8,16,32"),
    ("train", "--features", "0,0,0,0"), ("train", "--val_fraction", "1.5"), ("train", "--test_fraction", "-0.1"),
    ("train", "--val_fraction", "0.6"), ("train", "--threshold", "2"), ("train", "--threshold", "nan"),
    ("train", "--class_weights", "1,2"), ("train", "--class_weights", "-1,1,1"), ("train", "--device", "toaster"),
    ("train", "--device", "cuda:99"), ("train", "--stop-after-epoch", "-1"), ("train", "--amp_dtype", "fp8"),
    ("train", "--compile", "sometimes"), ("train", "--data_placement", "moon"), ("train", "--num_workers", "-1"),
    ("train", "--time_limit_h", "-1"), ("train", "--sw_overlap", "1.0"), ("train", "--sw_overlap", "-0.5"),
    ("train", "--sw_batch_size", "0"), ("train", "--tumor_sampling", "random"), ("train", "--tumor_prob", "2"),
    ("train", "--focal_gamma", "-1"), ("train", "--dice_weight", "2"), ("train", "--grad_clip", "-1"),
    ("train", "--accumulation_steps", "0"), ("train", "--min_lr_ratio", "2"), ("train", "--in_channels", "3"),
    ("train", "--num_classes", "2"), ("train", "--warmup_epochs", "-1"), ("train", "--samples_per_epoch", "0"),
    ("train", "--augment", "maybe"), ("train", "--amp", "perhaps"), ("train", "--sw_blend", "cubic"),
    ("train", "--weight_decay", "-1"), ("train", "--ram_cache_bytes", "-1"), ("train", "--split_seed", "x"),
    ("train", "--no_such_field", "1"),
    ("evaluate", "--split", "holdout"), ("evaluate", "--device", "toaster"),
    ("predict", "--volume", "99"), ("predict", "--volume", "-1"), ("predict", "--volume", "abc"),
    ("predict", "--kaggle_channel_order", "x,y"), ("predict", "--device", "toaster"),
    ("inspect-modalities", "--volumes", "0"), ("inspect-modalities", "--volumes", "-2"),
]


NONSENSE_FINE = {"cache--cache_hw=16", "train--patch_size=15,31,31",
                 "train--features=4,8"}  # accepted: a correct result is fine too


NONSENSE_XFAIL: dict = {}


def _nonsense_id(case):
    command, flag, value = case
    return f"{command}{flag}={','.join(value) if isinstance(value, list) else value}"


@pytest.mark.parametrize("case", [pytest.param(c, id=_nonsense_id(c), marks=NONSENSE_XFAIL.get(_nonsense_id(c), ()))
                                  for c in NONSENSE])
def test_h3_nonsense_flag_value_is_refused_naming_it(h3, tmp_path, case):
    command, flag, value = case
    values = value if isinstance(value, list) else [value]
    args = valid_args(h3, tmp_path, command)
    if flag in args:  # replace the valid value(s) that follow the flag
        i = args.index(flag)
        n = 3 if flag == "--shape" else 1
        args = args[:i] + args[i + 1 + n:]
    code, err = run_main(*args, flag, *values)
    if _nonsense_id(case) in NONSENSE_FINE:
        assert code == 0 and "Traceback" not in err, err
        return
    refused(code, err, flag.lstrip("-"), flag.lstrip("-").replace("-", "_"), *values,
            *(["channel order"] if "channel_order" in flag else []))
    assert not any(p.name in ("new", "c", "r", "m.csv", "p.nii.gz", "i.json") for p in tmp_path.iterdir()), \
        sorted(p.name for p in tmp_path.iterdir())


# ------------------------------------------------------------------ paths that do not exist, files for folders


def _path_case(h3, tmp_path, case):
    """(arguments, names one of which the refusal must name, a file that must stay byte-identical or None)."""
    afile = tmp_path / "afile.txt"
    afile.write_text("precious\n")
    nowhere = tmp_path / "nowhere"
    run, data, cache = h3["run"], h3["data"], h3["cache"]
    ev = ["evaluate", "--run", run, "--data", data, "--cache", cache, "--quiet"]
    pr = ["predict", "--run", run, "--data", data, "--volume", "1", "--quiet"]
    table = {
        "cache--data=missing": (cache_args(nowhere, tmp_path / "c"), [nowhere]),
        "cache--data=file": (cache_args(afile, tmp_path / "c"), [afile]),
        "cache--out=file": (cache_args(data, afile), [afile]),
        "cache--nifti=missing": (["cache", "--preset", "ci", "--nifti", nowhere, "--out", tmp_path / "c"], [nowhere]),
        "train--cache=missing--data=missing": (["train", "--preset", "ci", "--data", nowhere, "--cache", nowhere,
                                                "--out", tmp_path / "r", "--quiet"], [nowhere]),
        "train--cache=file": (train_args(afile, tmp_path / "r"), [afile]),
        "train--out=file": (train_args(cache, afile), [afile]),
        "train--resume-empty-folder-is-fine": (train_args(cache, tmp_path / "r", "--resume"), []),
        "train--resume--overwrite": (train_args(cache, tmp_path / "r", "--resume", "--overwrite"),
                                     ["--resume", "--overwrite"]),
        "evaluate--run=missing": (["evaluate", "--run", nowhere, "--data", data, "--cache", cache], [nowhere]),
        "evaluate--run=file": (["evaluate", "--run", afile, "--data", data, "--cache", cache], [afile]),
        "evaluate--cache=file": (["evaluate", "--run", run, "--data", data, "--cache", afile], [afile]),
        "evaluate--out=dir": ([*ev, "--out", tmp_path], [tmp_path]),
        "evaluate--out=missing-parent-is-fine": ([*ev, "--out", tmp_path / "new" / "m.csv"], []),
        "predict--run=missing": (["predict", "--run", nowhere, "--data", data, "--volume", "1", "--out",
                                  tmp_path / "p.nii.gz"], [nowhere]),
        "predict--data=missing": (["predict", "--run", run, "--data", nowhere, "--volume", "1", "--out",
                                   tmp_path / "p.nii.gz"], [nowhere]),
        "predict--out=dir": ([*pr, "--out", tmp_path], [tmp_path]),
        "predict--out=txt": ([*pr, "--out", afile], [afile, ".nii.gz"]),
        "predict-neither-volume-nor-nifti": (["predict", "--run", run, "--data", data, "--out", tmp_path / "p.nii.gz"],
                                             ["--volume", "--nifti"]),
        "predict-both-volume-and-nifti": ([*pr, "--nifti", tmp_path, "--out", tmp_path / "p.nii.gz"],
                                          ["--volume", "--nifti"]),
        "inspect--data=missing": (["inspect-modalities", "--data", nowhere], [nowhere]),
        "inspect--data=file": (["inspect-modalities", "--data", afile], [afile]),
        "inspect--json=file-in-missing-dir-is-fine": (["inspect-modalities", "--data", data, "--json",
                                                       tmp_path / "new" / "i.json"], []),
        "synth--out=file": (["synth", "--out", afile, "--volumes", "1", "--shape", *SHAPE, "--quiet"], [afile]),
        "synth--out=file--overwrite": (["synth", "--out", afile, "--volumes", "1", "--shape", *SHAPE, "--quiet",
                                        "--overwrite"], [afile]),
        "bench--data=missing": (["bench", "--data", nowhere, "--cache", tmp_path / "c", "--out", tmp_path / "b.json"],
                                [nowhere]),
    }
    args, names = table[case]
    return args, names, afile


PATH_XFAIL: dict = {}


@pytest.mark.parametrize("case", [
    "cache--data=missing", "cache--data=file", "cache--out=file", "cache--nifti=missing",
    "train--cache=missing--data=missing", "train--cache=file", "train--out=file", "train--resume-empty-folder-is-fine",
    "train--resume--overwrite", "evaluate--run=missing", "evaluate--run=file", "evaluate--cache=file",
    "evaluate--out=dir", "evaluate--out=missing-parent-is-fine", "predict--run=missing", "predict--data=missing",
    "predict--out=dir", "predict--out=txt", "predict-neither-volume-nor-nifti", "predict-both-volume-and-nifti",
    "inspect--data=missing", "inspect--data=file", "inspect--json=file-in-missing-dir-is-fine", "synth--out=file",
    "synth--out=file--overwrite", "bench--data=missing"])
def test_h3_paths_that_are_missing_or_the_wrong_kind(h3, tmp_path, case, request):
    if case in PATH_XFAIL:
        request.applymarker(PATH_XFAIL[case])
    args, names, afile = _path_case(h3, tmp_path, case)
    code, err = run_main(*args)
    if case.endswith("-is-fine"):
        assert code == 0 and "Traceback" not in err, err
    else:
        refused(code, err, *names)
    assert afile.read_text() == "precious\n"
