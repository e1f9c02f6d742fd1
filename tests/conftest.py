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
    # no Kaggle mount and no kagglehub download, whatever this machine holds (tumorlib.data.sources)
    monkeypatch.setenv("TUMORLIB_KAGGLE_ROOT", str(tmp_path_factory.mktemp("no_kaggle")))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path_factory.mktemp("no_kagglehub")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Four synthetic volumes of (24, 48, 48) in the Kaggle layout; returns the dataset root."""
    root = tmp_path_factory.mktemp("tiny_data")
    make_synthetic(root, 4, (24, 48, 48), seed=0)
    return root
