"""The one output guard (``tumorlib.core.outputs.guard_output``), tested from the parser itself.

Which options are outputs is stated once: an option declared with ``tumorlib.app.arguments.add_output_arg``
carries ``tumorlib_output`` (its ``OutputSpec``); ``tumorlib.app.cli.main`` checks every such option of the
chosen subcommand before its handler runs. ``test_every_value_option_is_classified`` keeps the rule honest:
an option taking a value that is neither an output nor listed here as an input or a value fails, so a new
``--out`` declared with a plain ``add_argument`` cannot slip past.

The parser-generated case points each output option of each subcommand at each protected kind of file
(and at a symlink, a hard link and a ``../`` path to it); folder options also at each protected folder and
at a new folder inside it. Handlers are replaced by a stub: a case the guard lets through exits 99.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from tumorlib.app import cli
from tumorlib.app.cli import build_parser, main
from tumorlib.core.outputs import OUTPUT_RECORD, record_written
from tumorlib.data import KAGGLE_SUBDIR

from constant_runs import make_run

# options that take a value and name no output: inputs (read, never written) and plain values
NOT_OUTPUTS = {
    "data", "cache", "run", "nifti", "pred", "ref", "dir", "only", "preset", "device", "volume", "volumes",
    "shape", "seed", "timeout", "workers", "repeats", "patches", "train_steps", "train_warmup", "loss_steps",
    "compile_mode", "split", "engine", "kaggle_channel_order", "format", "stop_after_epoch",
    "layout", "labels", "pred_labels", "ref_labels",  # label conventions and layouts (names, not paths)
}
NOT_OUTPUT_PREFIXES = ("cfg_", "cpu_")  # config fields, the CPU table's sizes and counts


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def output_options(parser: argparse.ArgumentParser) -> list[tuple[str, str, object]]:
    """(subcommand, flag, OutputSpec) of every option the guard checks, from the parser."""
    found = []
    for name, p in subcommands(parser).items():
        for action in p._actions:
            spec = getattr(action, "tumorlib_output", None)
            if spec is not None:
                found.append((name, action.option_strings[0], spec))
    return found


def test_every_value_option_is_classified():
    unknown = []
    for name, p in subcommands(build_parser()).items():
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or getattr(action, "tumorlib_output", None):
                continue
            if action.dest in NOT_OUTPUTS or action.dest.startswith(NOT_OUTPUT_PREFIXES):
                continue
            unknown.append(f"{name} {action.option_strings[0]}")
    assert not unknown, f"options neither outputs (add_output_arg) nor known inputs/values: {unknown}"


def test_the_known_outputs_are_found():
    found = {(c, f) for c, f, _ in output_options(build_parser())}
    assert found >= {("synth", "--out"), ("notebooks", "--out"), ("inspect-modalities", "--json"),
                     ("cache", "--out"), ("bench", "--out"), ("train", "--out"), ("evaluate", "--out"),
                     ("predict", "--out"), ("report", "--out"), ("report", "--csv"), ("export", "--out"),
                     ("baseline", "--out")}


# ------------------------------------------------------------------ the protected files


def _nifti_case(folder: Path) -> Path:
    import nibabel as nib

    folder.mkdir(parents=True)
    for mod in ("t1", "t1ce", "t2", "flair", "seg"):
        data = np.full((6, 6, 4), 3 if mod != "seg" else 0, np.int16)
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"case_{mod}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_cache):
    """One of each protected kind, written without training; returns (base, {kind: file}, {kind: folder kind})."""
    base = tmp_path_factory.mktemp("guard")
    assert main(["synth", "--out", str(base / "data"), "--volumes", "1", "--shape", "8", "8", "8", "--quiet"]) == 0
    slices = base / "data" / KAGGLE_SUBDIR
    _nifti_case(base / "nifti" / "case")
    shutil.copytree(tiny_cache, base / "cache")
    run = make_run(base / "run", splits={"train": [1], "val": [2], "test": [3]})
    shutil.copy(run / "checkpoints" / "best_model.pth", run / "checkpoints" / "last.pth")
    (run / "history.csv").write_text("epoch,lr\n1,0.001\n")
    (run / "postprocessing.json").write_text('{"min_voxels": {"wt": 0, "tc": 0, "et": 0}}\n')
    (run / ".tumorlib.lock").write_text("")
    export = base / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx model bytes")
    (export / "contract.json").write_text(json.dumps({"written_by": "tumorlib.inference.export",
                                                      "files": {"model.onnx": {"size": 16}}}))
    outputs = base / "outputs"
    outputs.mkdir()
    for name, writer in (("pred.nii.gz", "predict"), ("metrics.csv", "evaluate")):
        (outputs / name).write_bytes(b"an earlier output of " + writer.encode())
        record_written(outputs / name, writer)
    (outputs / "notes.csv").write_text("a user's own file\n")
    files = {
        "slice": slices / "volume_1_slice_0.h5", "meta_data.csv": slices / "meta_data.csv",
        "nifti-image": base / "nifti" / "case" / "case_flair.nii.gz",
        "nifti-seg": base / "nifti" / "case" / "case_seg.nii.gz",
        "cache-index": base / "cache" / "index.json", "cache-array": base / "cache" / "v1_img.npy",
        "run-config": run / "config.json", "run-splits": run / "splits.json", "run-history": run / "history.csv",
        "checkpoint-best": run / "checkpoints" / "best_model.pth",
        "checkpoint-last": run / "checkpoints" / "last.pth", "postprocessing": run / "postprocessing.json",
        "lock": run / ".tumorlib.lock", "export-model": export / "model.onnx",
        "export-contract": export / "contract.json", "output-of-predict": outputs / "pred.nii.gz",
        "output-of-evaluate": outputs / "metrics.csv", "output-record": outputs / OUTPUT_RECORD,
        "user-file": outputs / "notes.csv",
    }
    folders = {"slices": slices, "dataset": base / "data", "nifti": base / "nifti", "nifti-case": base / "nifti" / "case",
               "cache": base / "cache", "run": run, "checkpoints": run / "checkpoints", "export": export}
    for path in files.values():
        assert path.is_file(), path
    return base, files, folders


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "links" not in p.relative_to(folder).parts):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _required(p: argparse.ArgumentParser, skip: str, dummy: Path) -> list[str]:
    """Values for the subcommand's required options other than ``skip`` (never read: the guard runs first)."""
    argv = []
    for action in p._actions:
        if not action.required or not action.option_strings or action.option_strings[0] == skip:
            continue
        numeric = action.type is int or hasattr(action.type, "minimum")
        value = action.choices[0] if action.choices else "1" if numeric else str(dummy)
        argv += [action.option_strings[0], str(list(action.choices)[0]) if action.choices else value]
    return argv


def _variants(target: Path, links: Path, tag: str) -> dict[str, Path]:
    """The target itself, a symlink and a ``../`` path to it, and for a file a hard link to it."""
    links.mkdir(exist_ok=True)
    out = {"direct": target, "dotdot": target.parent / ".." / target.parent.name / target.name}
    sym = links / f"sym-{tag}"
    if not sym.is_symlink():
        sym.symlink_to(target)
    out["symlink"] = sym
    if target.is_file():
        hard = links / f"hard-{tag}"
        if not hard.exists():
            os.link(target, hard)
        out["hardlink"] = hard
    return out


def _cases(world):
    """(subcommand, flag, what, variant, path) of every pair the parser-generated test runs."""
    base, files, folders = world
    links = base / "links"
    cases = []
    for command, flag, spec in output_options(build_parser()):
        for kind, target in files.items():
            if kind == f"output-of-{command}":
                continue  # its own earlier output: replacing it is allowed (test_own_earlier_output_is_replaced)
            for variant, path in _variants(target, links, kind).items():
                cases.append((command, flag, kind, variant, path))
        if spec.kind == "folder":
            for kind, folder in folders.items():
                if kind == spec.makes or (spec.makes == "dataset" and kind == "slices"):
                    pass
                else:
                    for variant, path in _variants(folder, links, f"dir-{kind}").items():
                        cases.append((command, flag, f"folder:{kind}", variant, path))
                if kind in ("slices", "nifti-case", "cache", "checkpoints", "export"):  # sealed folders: a new
                    # folder in a run (RUN/export-onnx), a dataset root or beside NIfTI cases is not read as data
                    cases.append((command, flag, f"inside:{kind}", "direct", folder / "new"))
    return cases


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def test_every_output_option_refuses_every_protected_kind(world, monkeypatch):
    base, files, folders = world
    parser = build_parser()
    for p in subcommands(parser).values():
        p.set_defaults(func=lambda args: 99)  # the guard must refuse before any handler runs
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    cases = _cases(world)
    before = _tree(base)
    failures = []
    for command, flag, kind, variant, path in cases:
        p = subcommands(parser)[command]
        digest = _hash(path.resolve()) if path.resolve().is_file() else None
        code, err = _run([command, flag, str(path), *_required(p, flag, base / "dummy")])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or str(path) not in lines[0]:
            failures.append(f"{command} {flag} {kind} ({variant}): exit {code}, {lines}")
        elif digest is not None and _hash(path.resolve()) != digest:
            failures.append(f"{command} {flag} {kind} ({variant}): bytes changed")
    assert not failures, f"{len(failures)} of {len(cases)} not refused:\n" + "\n".join(failures[:40])
    assert _tree(base) == before
    print(f"{len(cases)} (subcommand, option, protected kind, path form) cases refused")


def test_the_pair_count(world, capsys):
    cases = _cases(world)
    pairs = {(c, f, k) for c, f, k, _, _ in cases}
    options = {(c, f) for c, f, _, _, _ in cases}
    with capsys.disabled():  # 12 options, 286 pairs, 1034 cases when written
        print(f"\n{len(options)} output options, {len(pairs)} (subcommand, option, protected kind) pairs, "
              f"{len(cases)} cases with the path forms")
    assert len(options) >= 12 and len(pairs) >= 12 * len(world[1]) - 3, (len(options), len(pairs))


# ------------------------------------------------------------------ record-based replacing


def test_own_earlier_output_is_replaced(tmp_path):
    from tumorlib.core.outputs import guard_output

    out = tmp_path / "m.csv"
    out.write_text("x\n")
    record_written(out, "evaluate")
    assert guard_output(out, option="--out", writer="evaluate") == out
    out.write_text("edited by hand\n")  # changed since: no longer what tumorlib wrote
    with pytest.raises(FileExistsError, match="not written by tumorlib"):
        guard_output(out, option="--out", writer="evaluate")


def test_another_commands_output_is_refused(tmp_path):
    from tumorlib.core.outputs import guard_output

    out = tmp_path / "p.nii.gz"
    out.write_bytes(b"labels")
    record_written(out, "predict")
    with pytest.raises(FileExistsError, match="written by tumorlib predict"):
        guard_output(out, option="--out", writer="evaluate")


def test_a_users_file_is_refused_by_the_cli(tmp_path, tiny_cache):
    run = make_run(tmp_path / "run", splits={"train": [1], "val": [2], "test": [3]})
    mine = tmp_path / "mine.csv"
    mine.write_text("my notes\n")
    code, err = _run(["evaluate", "--run", str(run), "--cache", str(tiny_cache), "--out", str(mine), "--quiet"])
    assert code == 2 and err.count("\n") == 1 and f"--out {mine}" in err and "not written by tumorlib" in err
    assert mine.read_text() == "my notes\n"


def test_synth_overwrite_refuses_a_folder_it_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    code, err = _run(["synth", "--out", str(folder), "--volumes", "1", "--shape", "8", "8", "8", "--quiet",
                      "--overwrite"])
    assert code == 2 and err.count("\n") == 1 and str(folder) in err and "tumorlib did not write" in err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_synth_overwrite_refuses_its_folder_with_a_file_added(tmp_path):
    folder = tmp_path / "synth"
    args = ["synth", "--out", str(folder), "--volumes", "1", "--shape", "8", "8", "8", "--quiet"]
    assert _run(args)[0] == 0
    assert _run([*args, "--overwrite"])[0] == 0  # its own folder, as it wrote it: replaced
    (folder / "notes.txt").write_text("mine")
    code, err = _run([*args, "--overwrite"])
    assert code == 2 and err.count("\n") == 1 and "notes.txt" in err
    assert (folder / "notes.txt").read_text() == "mine"


def test_outputs_are_recorded_where_they_are_written(tmp_path):
    import tumorlib.core.outputs as outputs

    from tumorlib.core.safety import atomic_write

    atomic_write(tmp_path / "a.json", "{}\n", writer="bench")
    assert outputs.written_by(tmp_path / "a.json") == "bench"
    atomic_write(tmp_path / "b.json", "{}\n")
    assert outputs.written_by(tmp_path / "b.json") is None



def test_brats2023_and_msd_data_are_protected_too(tmp_path):
    """The guard knows every layout tumorlib reads: a 2023 case folder and an MSD set's folders are data."""
    from tumorlib.core.outputs import guard_output

    case = tmp_path / "gli" / "BraTS-GLI-00001-000"
    case.mkdir(parents=True)
    for m in ("t1n", "t1c", "t2w", "t2f"):
        (case / f"BraTS-GLI-00001-000-{m}.nii.gz").write_bytes(b"x")
    msd = tmp_path / "Task01_BrainTumour"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (msd / sub).mkdir(parents=True)
    (msd / "dataset.json").write_text("{}")
    (msd / "imagesTr" / "BRATS_001.nii.gz").write_bytes(b"x")
    for path in (case / "BraTS-GLI-00001-000-seg.nii.gz", case / "BraTS-GLI-00001-000-t2f.nii.gz",
                 msd / "labelsTr" / "BRATS_485.nii.gz", msd / "imagesTs" / "pred.nii.gz",
                 msd / "imagesTr" / "BRATS_001.nii.gz"):
        with pytest.raises(ValueError):
            guard_output(path, writer="predict")
        assert not path.exists() or path.read_bytes() == b"x"
    assert guard_output(tmp_path / "preds" / "BRATS_485.nii.gz", writer="predict")  # beside the data: fine


def test_predict_out_name_rule_comes_before_the_guard(tmp_path, capsys):
    from tumorlib.app.cli import main

    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(["predict", "--run", str(tmp_path), "--data", str(tmp_path), "--volume", "1",
                 "--out", str(existing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must end in .nii.gz or .nii" in err and existing.read_text() == "mine"
    with pytest.raises(SystemExit) as stop:  # argparse refuses it before the training rows run
        main(["bench", "--cpu", "--cpu-repeats", "0"])
    assert stop.value.code == 2 and "--cpu-repeats: 0 is below 1" in capsys.readouterr().err


# ------------------------------------------------------------------ a file where a folder is read

FOLDER_INPUTS = ("--data", "--run", "--nifti", "--cache", "--pred", "--ref")
#: Folder options that are alternatives (given one, the others are refused as "not both").
ALTERNATIVES = {"evaluate": ({"--pred", "--ref"}, {"--run", "--data", "--cache"}), "predict": ({"--nifti"}, {"--data"})}


def _folder_input_cases():
    cases = []
    for name, p in subcommands(build_parser()).items():
        flags = [a.option_strings[0] for a in p._actions if a.option_strings and a.option_strings[0] in FOLDER_INPUTS]
        for flag in flags:
            groups = ALTERNATIVES.get(name, ())
            kept = next((g for g in groups if flag in g), groups[-1] if groups else set())  # one alternative
            ruled_out = set().union(*(g for g in groups if g is not kept))
            cases.append((name, flag, tuple(f for f in flags if f not in ruled_out)))
    return cases


FOLDER_CASES = _folder_input_cases()


@pytest.mark.parametrize("command,flag,flags", FOLDER_CASES, ids=[f"{c}{f}" for c, f, _ in FOLDER_CASES])
def test_a_file_given_for_a_folder_says_so(tmp_path, command, flag, flags):
    """Every option of every subcommand that reads a folder, given a file: one line saying it is a file.

    The option under test gets the file first; the subcommand's other folder options get it too (whichever
    is read first must say so), its other required options a path that is not there."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n")
    p = subcommands(build_parser())[command]
    argv = [command]
    for f in (flag, *(f for f in flags if f != flag)):
        argv += [f, str(a_file)]
    skip = {a.option_strings[0] for a in p._actions if a.option_strings and a.option_strings[0] in flags}
    for action in p._actions:  # the other required options
        if action.required and action.option_strings and action.option_strings[0] not in skip:
            numeric = action.type is int or hasattr(action.type, "minimum")
            value = list(action.choices)[0] if action.choices else "1" if numeric else tmp_path / "out" / "case.nii.gz"
            argv += [action.option_strings[0], str(value)]
    if command == "evaluate":
        argv += ["--out", str(tmp_path / "out" / "m.csv")]
    if command == "predict" and "--data" in argv:
        argv += ["--volume", "1"]
    code, err = _run(argv)
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln]
    assert code == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0] and str(a_file) in lines[0], \
        (code, lines)
    assert a_file.read_text() == "not a folder\n"
