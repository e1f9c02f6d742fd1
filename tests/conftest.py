"""Shared fixtures: an isolated TUMORLIB_HOME and small Kaggle-format datasets."""

from __future__ import annotations

import pytest

from tumorlib.data import make_synthetic


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Point TUMORLIB_HOME at a temporary folder and clear the other path variables."""
    monkeypatch.setenv("TUMORLIB_HOME", str(tmp_path_factory.mktemp("tumorlib_home")))
    for var in ("TUMORLIB_DATA", "TUMORLIB_OUT", "TUMORLIB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    # no Kaggle mount and no kagglehub download, whatever this machine holds (tumorlib.core.sources)
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(tmp_path_factory.mktemp("no_kaggle")))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path_factory.mktemp("no_kagglehub")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Four synthetic volumes of (24, 48, 48) in the Kaggle layout; returns the dataset root."""
    root = tmp_path_factory.mktemp("tiny_data")
    make_synthetic(root, 4, (24, 48, 48), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tiny_data, tmp_path_factory):
    """The cache of ``tiny_data`` with the ci preset's settings; returns the cache folder."""
    from tumorlib.core.config import get_config
    from tumorlib.data.cache import build_cache

    cfg = get_config("ci")
    return build_cache(tiny_data, tmp_path_factory.mktemp("tiny_cache") / "cache", workers=1,
                       cache_hw=cfg.cache_hw, margin=cfg.cache_margin, progress=False)


@pytest.fixture(scope="session")
def ci_cache(tmp_path_factory):
    """The ci preset's embedded data (8 volumes of 24x48x48) and its cache; returns the cache folder."""
    from tumorlib.core.config import get_config
    from tumorlib.data.cache import build_cache

    cfg = get_config("ci")
    root = tmp_path_factory.mktemp("ci_data")
    make_synthetic(root, cfg.synth_volumes, cfg.synth_shape, seed=cfg.synth_seed, progress=False)
    return build_cache(root, root / "cache", workers=1, cache_hw=cfg.cache_hw, margin=cfg.cache_margin,
                       progress=False)


# ------------------------------------------------------------------ the fault tests' shared folders (test_faults_*.py)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    from faults_cli import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "tmpfs", "256k") as mnt:
        yield mnt


@pytest.fixture(scope="session")
def finished_run(ci_cache, tmp_path_factory):
    """A finished one-epoch ci run (copied by each test that changes it)."""
    from faults_cli import train_args
    from tumorlib.app.cli import main

    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(ci_cache, run)) == 0
    return run


@pytest.fixture(scope="session")
def h3(tmp_path_factory):
    """Three volumes of 8x24x24, their ci cache and a one-epoch ci run; shared, never changed by the cases."""
    from faults_cli import cache_args, run_main, synth, train_args, tree_hash

    base = tmp_path_factory.mktemp("h3")
    data = synth(base / "data")
    cache = base / "cache"
    code, err = run_main(*cache_args(data, cache))
    assert code == 0, err
    run = base / "run"
    code, err = run_main(*train_args(cache, run))
    assert code == 0, err
    code, err = run_main("predict", "--run", run, "--data", data, "--volume", 1, "--out", base / "pred.nii.gz",
                         "--quiet")
    assert code == 0, err
    digests = {name: tree_hash(base / name) for name in ("data", "cache", "run")}
    yield {"base": base, "data": data, "cache": cache, "run": run, "pred": base / "pred.nii.gz"}
    for name, digest in digests.items():  # the shared inputs survived every case
        assert tree_hash(base / name) == digest, f"the shared {name} folder was changed by a case"
