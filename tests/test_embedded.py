from __future__ import annotations

import json

import pytest

from tumorlib.core.config import get_config, workspace
from tumorlib.data import ensure_data, list_volumes, load_volume
from tumorlib.data.embedded import SYNTH_MARKER


def test_ensure_data_generates_once(monkeypatch):
    cfg = get_config("ci", synth_volumes=2, synth_shape=(12, 24, 24))
    root = ensure_data(cfg, progress=False)
    assert root == workspace(cfg).data_dir and (root / SYNTH_MARKER).is_file()
    assert list_volumes(root) == [1, 2]
    stamp = (root / SYNTH_MARKER).stat().st_mtime_ns
    assert ensure_data(cfg, progress=False) == root
    assert (root / SYNTH_MARKER).stat().st_mtime_ns == stamp  # not regenerated
    marker = json.loads((root / SYNTH_MARKER).read_text())
    (root / SYNTH_MARKER).write_text(json.dumps({**marker, "version": marker["version"] - 1}))
    ensure_data(cfg, progress=False)  # written by an older generator: regenerated
    assert json.loads((root / SYNTH_MARKER).read_text()) == marker
    assert not list(root.parent.glob("*.tmp*"))


def test_ensure_data_uses_tumorlib_data(monkeypatch, tiny_data, tmp_path):
    monkeypatch.setenv("TUMORLIB_DATA", str(tiny_data))
    assert ensure_data(get_config("ci")) == tiny_data.resolve()
    image, _ = load_volume(ensure_data(get_config("ci")), 1)
    assert image.shape == (4, 24, 48, 48)
    monkeypatch.setenv("TUMORLIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"neither Kaggle volume_\{id\}_slice_\{s\}\.h5 files nor NIfTI cases"):
        ensure_data(get_config("ci"))
