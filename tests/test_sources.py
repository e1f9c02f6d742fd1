"""Data source discovery: a simulated Kaggle session, kagglehub's cache, precedence, and the setup text."""

from __future__ import annotations

import os
import re
import shlex
import stat

import pytest

import tumorlib
from tumorlib import get_config, workspace
from tumorlib.data import KAGGLE_SUBDIR, ensure_data, make_synthetic, resolve_cache
from tumorlib.core.sources import (
    find_data_source,
    find_kaggle_mount,
    find_kagglehub_download,
    kaggle_working_dir,
)
from tumorlib.app.setup_report import describe_setup, install_hint
from tumorlib.core.device import auto_amp_dtype, precision_name


def _tree(root):
    """{relative path: (size, mtime_ns)} of every file and folder below root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _read_only(root):
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


@pytest.fixture
def kaggle_session(tmp_path, monkeypatch):
    """A stand-in for /kaggle: a read-only input mount with 3 tiny volumes and a writable working folder."""
    root = tmp_path / "kaggle"
    mount = root / "input" / "brats2020-training-data"
    make_synthetic(mount, 3, (12, 32, 32), seed=1, progress=False)
    (root / "input" / "some-other-dataset").mkdir()
    (root / "input" / "some-other-dataset" / "weights.bin").write_bytes(b"x")
    (root / "working").mkdir()
    _read_only(root / "input")
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(root))
    monkeypatch.delenv("TUMORLIB_HOME", raising=False)
    yield root, mount / KAGGLE_SUBDIR
    for folder, dirs, _files in os.walk(root / "input"):  # let tmp_path clean-up delete it
        os.chmod(folder, stat.S_IRWXU)


def test_kaggle_session_reads_the_mount_and_writes_to_working(kaggle_session):
    root, data = kaggle_session
    before = _tree(root / "input")
    config = get_config("ci")
    source = find_data_source(root / "unused")
    assert source.kind == "kaggle-mount" and source.path == data and not source.synthetic
    ws = workspace(config)
    assert ws.data_dir == data.resolve() and not ws.synthetic
    assert ws.out_dir == (root / "working" / "tumorlib" / "outputs" / "ci").resolve()
    assert ensure_data(config, progress=False) == data.resolve()
    cache = resolve_cache(config, progress=False)
    assert cache == ws.cache_dir and (cache / "index.json").is_file()
    assert _tree(root / "input") == before  # nothing written, touched or removed in the input
    text = describe_setup(config)
    assert "Kaggle input mount" in text and str(data) in text
    assert re.search(r"volumes\s+3 \(ids 1\.\.3, 36 slice files\)", text)
    assert "says nothing about real BraTS" not in text


def test_no_kaggle_means_embedded_and_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(tmp_path / "absent"))
    monkeypatch.delenv("TUMORLIB_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kaggle_working_dir() is None and find_kaggle_mount() is None
    ws = workspace(get_config("ci"))
    assert ws.synthetic
    assert ws.out_dir == (tmp_path / "home" / ".cache" / "tumorlib" / "outputs" / "ci").resolve()
    text = describe_setup(get_config("ci"))
    assert "embedded synthetic set" in text and "says nothing about real BraTS" in text
    assert "volumes   8 (generated on first use)" in text


def test_tumorlib_data_wins_and_embedded_keyword(kaggle_session, tmp_path, monkeypatch):
    other = tmp_path / "mine"
    monkeypatch.setenv("TUMORLIB_DATA", str(other))
    source = find_data_source(tmp_path / "emb")
    assert source.kind == "env" and source.path == other
    monkeypatch.setenv("TUMORLIB_DATA", "embedded")
    source = find_data_source(tmp_path / "emb")
    assert source.kind == "embedded" and source.path == tmp_path / "emb"
    assert workspace(get_config("ci")).synthetic


def test_symlinks_out_of_the_input_root_are_not_followed(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    make_synthetic(outside, 1, (8, 16, 16), seed=0, progress=False)
    root = tmp_path / "kaggle"
    (root / "input" / "linked-file").mkdir(parents=True)
    os.symlink(outside / KAGGLE_SUBDIR, root / "input" / "linked-dir", target_is_directory=True)
    slice_file = next((outside / KAGGLE_SUBDIR).glob("volume_*_slice_*.h5"))
    os.symlink(slice_file, root / "input" / "linked-file" / slice_file.name)
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(root))
    assert find_kaggle_mount() is None
    assert find_data_source(tmp_path / "emb").kind == "embedded"
    # a link that stays inside the root counts
    inside = root / "input" / "real"
    make_synthetic(inside, 1, (8, 16, 16), seed=0, progress=False)
    (root / "input" / "zz-inside-link").mkdir()
    first = next((inside / KAGGLE_SUBDIR).glob("volume_*_slice_*.h5"))
    os.symlink(first, root / "input" / "zz-inside-link" / first.name)
    assert find_kaggle_mount() == inside / KAGGLE_SUBDIR


def _kagglehub_version(cache, owner, name, version, complete=True, volumes=1):
    base = cache / "datasets" / owner / name
    folder = base / "versions" / str(version)
    make_synthetic(folder, volumes, (8, 16, 16), seed=version, progress=False)
    if complete:
        (base / f"{version}.complete").write_text("")
    return folder / KAGGLE_SUBDIR


def test_kagglehub_cache_latest_complete_version(tmp_path, monkeypatch):
    cache = tmp_path / "kh"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    assert find_kagglehub_download() is None
    _kagglehub_version(cache, "awsaf49", "brats2020-training-data", 2)
    _kagglehub_version(cache, "awsaf49", "brats2020-training-data", 3, complete=False)  # interrupted
    other = _kagglehub_version(cache, "aaa", "another-pack", 1)
    found = find_kagglehub_download()
    assert found == cache / "datasets/awsaf49/brats2020-training-data/versions/2" / KAGGLE_SUBDIR
    source = find_data_source(tmp_path / "emb")
    assert source.kind == "kagglehub" and source.path == found
    assert workspace(get_config("ci")).data_dir == found.resolve()
    _kagglehub_version(cache, "awsaf49", "brats2020-training-data", 10)
    assert "versions/10" in str(find_kagglehub_download())
    # only the other pack left: it is used
    import shutil
    shutil.rmtree(cache / "datasets" / "awsaf49")
    assert find_kagglehub_download() == other


def test_kaggle_mount_wins_over_kagglehub(kaggle_session, tmp_path, monkeypatch):
    cache = tmp_path / "kh"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    _kagglehub_version(cache, "awsaf49", "brats2020-training-data", 1)
    assert find_data_source(tmp_path / "emb").kind == "kaggle-mount"


def auto_precision(device):
    """The precision name describe_setup prints for ``device`` (the one rule of tumorlib.core.device)."""
    return precision_name(auto_amp_dtype(device)[0])


def test_auto_precision_on_cpu(monkeypatch):
    monkeypatch.setenv("TUMORLIB_CPU_BF16", "0")  # a CPU without native bf16
    assert auto_precision("cpu") == "fp32"
    monkeypatch.setenv("TUMORLIB_CPU_BF16", "1")  # AMX-BF16 or AVX512-BF16
    assert auto_precision("cpu") == "bf16"


def _pip_lines(cell):
    return [shlex.split(line.lstrip("%!")) for line in cell.splitlines() if re.match(r"^[%!]?pip\b", line)]


@pytest.mark.parametrize("url", [None, "https://github.com/someone/tumorlib", "git+https://example.org/t.git"])
def test_install_hint_never_installs_torch(url, capsys):
    cell = install_hint(url, show=True)
    assert capsys.readouterr().out.strip() == cell
    lines = _pip_lines(cell)
    assert len(lines) == 2, cell
    package, deps = lines
    assert package[:3] == ["pip", "install", "-q"] and "--no-deps" in package
    assert any(tok.startswith("tumorlib @ git+") for tok in package)
    names = [re.match(r"[A-Za-z0-9_.\-]+", tok).group(0).lower() for tok in deps[3:]]
    assert "numpy" in names and "h5py" in names
    for tokens in lines:
        for tok in tokens:
            assert not re.match(r"^(torch|pytorch)\b", tok.lower()), f"asks to install torch: {tok}"
    assert "--upgrade" not in cell and " -U" not in cell
    if url:
        assert url.removeprefix("git+") in cell


def test_install_hint_is_a_top_level_name():
    assert tumorlib.install_hint is install_hint and tumorlib.describe_setup is describe_setup


def test_gpu16_preset_is_the_seed_model_at_the_same_effective_batch():
    full, gpu16 = get_config("full"), get_config("gpu16")
    assert gpu16.patch_size == full.patch_size == (64, 160, 160)
    assert gpu16.features == full.features == (32, 64, 128, 256)
    assert gpu16.batch_size == 1
    assert gpu16.batch_size * gpu16.accumulation_steps == full.batch_size * full.accumulation_steps
    assert gpu16.amp and gpu16.epochs > full.epochs


def test_previous_run_attached_as_input(tmp_path, monkeypatch):
    from tumorlib.core.sources import find_previous_run

    root = tmp_path / "kaggle"
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(root))
    assert find_previous_run("gpu16") is None
    old = root / "input" / "my-notebook-v1" / "tumorlib" / "outputs" / "gpu16" / "run"
    new = root / "input" / "my-notebook-v2" / "tumorlib" / "outputs" / "gpu16" / "run"
    (old / "checkpoints").mkdir(parents=True)
    (new / "checkpoints").mkdir(parents=True)
    (root / "input" / "x" / "tumorlib" / "outputs" / "gpu16" / "run").mkdir(parents=True)  # no checkpoint
    assert find_previous_run("gpu16") is None
    (old / "checkpoints" / "last.pth").write_bytes(b"1")
    (new / "checkpoints" / "last.pth").write_bytes(b"2")
    os.utime(old / "checkpoints" / "last.pth", (1000, 1000))
    assert find_previous_run("gpu16") == new
    assert find_previous_run("full") is None
    outside = tmp_path / "elsewhere" / "run"
    (outside / "checkpoints").mkdir(parents=True)
    (outside / "checkpoints" / "last.pth").write_bytes(b"3")
    link = root / "input" / "linked" / "tumorlib" / "outputs" / "full"
    link.mkdir(parents=True)
    os.symlink(outside, link / "run", target_is_directory=True)
    assert find_previous_run("full") is None  # a link out of the input root does not count


@pytest.mark.parametrize("major, expected", [(6, "fp16"), (7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_on_cuda_by_compute_capability(monkeypatch, major, expected):
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.version, "hip", None)
    # T4 (7.5) and P100 (6.0) emulate bf16: is_bf16_supported() says True there, the choice must not
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setenv("TUMORLIB_CPU_BF16", "0")
    assert auto_precision("cuda") == expected
    assert auto_precision("cpu") == "fp32"


def test_display_path_names_the_folders_not_the_machine(tmp_path, monkeypatch):
    from tumorlib.core.sources import display_path

    home = tmp_path / "somewhere" / "tumorlib home"
    monkeypatch.setenv("TUMORLIB_HOME", str(home))
    monkeypatch.setenv("TUMORLIB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert display_path(home / "outputs" / "ci" / "run") == "$TUMORLIB_HOME/outputs/ci/run"
    assert display_path(home) == "$TUMORLIB_HOME"
    assert display_path(tmp_path / "out" / "cache") == "$TUMORLIB_OUT/cache"  # the more specific folder wins
    assert display_path(tmp_path / "user" / "data" / "é x") == "~/data/é x"
    assert display_path("/kaggle/input/brats") == "/kaggle/input/brats"


def test_describe_setup_of_ci_says_smoke_run_and_shows_no_machine_path(monkeypatch):
    import os

    monkeypatch.setenv("TUMORLIB_DATA", "embedded")
    text = describe_setup(get_config("ci"))
    assert "ci: a smoke run (2 epochs" in text and "numbers mean nothing" in text and "make demo" in text
    assert os.environ["TUMORLIB_HOME"] not in text and "$TUMORLIB_HOME/outputs/ci" in text
    assert "smoke run" not in describe_setup(get_config("demo"))


def test_describe_setup_with_tumorlib_data_naming_a_file_says_so(tmp_path, monkeypatch):
    archive = tmp_path / "brats2020-training-data.zip"  # the download, not yet unpacked
    archive.write_bytes(b"PK")
    monkeypatch.setenv("TUMORLIB_DATA", str(archive))
    text = describe_setup(get_config("ci"))
    assert "none readable" in text and "is a file, not a folder" in text
