"""Tests for the loading benchmark (tumorlib.benchmarks.loading) and the ``tumorlib bench``/``cache`` commands."""

from __future__ import annotations

import json
import os
import sys

import matplotlib
import pytest

from tumorlib.benchmarks import loading as bench
from tumorlib.benchmarks import loading_report as report
from tumorlib.app.cli import main
from tumorlib.core.config import get_config
from tumorlib.data import cached_volume_ids

matplotlib.use("Agg")

KEYS = ("h5_volume_load_s", "npy_volume_load_s", "load_speedup", "patch_samples_per_s", "h5_read_s_per_volume",
        "cache_build_s_per_volume", "h5_volume_load_cold_s", "npy_volume_load_cold_s", "load_speedup_cold")


@pytest.fixture(scope="module")
def result(tiny_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench") / "cache"
    cfg = get_config("ci", cache_workers=2)
    return bench.benchmark_loading(tiny_data, cache, cfg, n_volumes=2, repeats=1, n_patches=6), cache


def test_benchmark_keys_and_values(result):
    res, cache = result
    for key in KEYS:
        assert key in res
    assert cached_volume_ids(cache) == [1, 2, 3, 4]  # the cache was built for the whole folder
    for key in ("h5_volume_load_s", "npy_volume_load_s", "h5_read_s_per_volume", "cache_build_s_per_volume"):
        assert res[key] > 0
    assert res["load_speedup"] == pytest.approx(res["h5_volume_load_s"] / res["npy_volume_load_s"])
    assert res["cache_build_overhead"] == pytest.approx(res["cache_build_s_per_volume"] / res["h5_read_s_per_volume"])
    assert res["patch_samples_per_s"] > 0 and res["patch_samples_per_s_float32"] > 0
    assert res["cache_build_parallel_s_per_volume"] > 0
    assert res["volume_ids"] == [1, 2] and res["volume_shape"] == [24, 48, 48]
    assert res["patch_size"] == [16, 32, 32]
    assert res["h5_bytes_per_volume"] > res["npy_bytes_per_volume"] > 0
    if sys.platform.startswith("linux"):
        assert res["h5_volume_load_cold_s"] > 0 and res["load_speedup_cold"] > 0
    json.dumps(res)  # JSON-ready
    assert not list(cache.parent.glob("tumorlib-bench-*"))  # scratch builds removed


def test_targets_table_and_plot(result):
    res, _ = result
    met = report.loading_targets_met(res)
    assert set(met) == set(report.LOADING_TARGETS)
    assert met["load_speedup"] == (res["load_speedup"] >= 40)
    assert report.loading_targets_met({"load_speedup": None})["load_speedup"] is None
    table = report.loading_table(res)
    assert list(table.columns) == ["cold_s", "warm_s"] and table.loc["HDF5 slices", "warm_s"] == res["h5_volume_load_s"]
    ax = report.plot_loading_benchmark(res)
    assert len(ax.patches) == (4 if res["h5_volume_load_cold_s"] is not None else 2)
    text = report.format_loading_result(res)
    assert "load_speedup" in text and "target >= 40" in text


def test_drop_page_cache(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"0" * 8192)
    assert bench.drop_page_cache([f]) == hasattr(os, "posix_fadvise")
    assert f.read_bytes() == b"0" * 8192


def test_time_helpers_on_their_own(tiny_data, tmp_path):
    builds = bench.time_cache_build(tiny_data, [1, 2], workers=1, rounds=3, tmp_root=tmp_path)
    assert len(builds["read"]) == len(builds["build"]) == 3 and builds["parallel_build_per_volume"] is None
    assert min(builds["read"]) > 0 and min(builds["build"]) > 0
    assert list(tmp_path.iterdir()) == []


def test_cli_cache_and_bench(tiny_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache", "--data", str(tiny_data), "--out", str(cache), "--workers", "1", "--quiet",
                 "--preset", "ci"]) == 0
    assert "cached 4 volumes" in capsys.readouterr().out
    out = tmp_path / "bench.json"
    assert main(["bench", "--data", str(tiny_data), "--cache", str(cache), "--out", str(out), "--preset", "ci",
                 "--volumes", "1", "--repeats", "1", "--patches", "4", "--no-cold", "--no-build", "--quiet"]) == 0
    res = json.loads(out.read_text())
    for key in KEYS:
        assert key in res
    assert res["h5_volume_load_cold_s"] is None and res["cache_build_s_per_volume"] is None
    assert "load_speedup" in capsys.readouterr().out
    # the reader's errors reach the command line as a clear message
    assert main(["cache", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "c2"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_map_populated_reads_the_array(tmp_path):
    import numpy as np

    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", a)
    m = bench.map_populated(tmp_path / "a.npy")
    assert m.dtype == np.float16 and m.shape == (2, 3, 4) and not m.flags.writeable
    np.testing.assert_array_equal(m, a)
