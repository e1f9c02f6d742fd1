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
