"""Tests for tumorlib.data.cache: normalisation, crop/uncrop, the build (atomic, resumable) and checks."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tumorlib.core.config import get_config, workspace
from tumorlib.data import list_volumes, load_volume, make_phantom, make_synthetic, write_kaggle_volume
from tumorlib.data.resolve import resolve_cache
from tumorlib.data.cache import (
    INDEX_NAME,
    CacheError,
    brain_mask,
    build_cache,
    build_cache_from_reader,
    cached_volume_ids,
    load_cache_index,
    load_cached_volume,
    normalize_volume,
    prepare_volume,
    source_to_cache,
    uncrop,
)

REPO = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in (".lock", ".tumorlib.lock")}


# --------------------------------------------------------------------------- normalisation


def test_normalize_hand_computed():
    image = np.zeros((2, 1, 2, 3), np.float32)
    image[0, 0, 0, :] = [1.0, 2.0, 3.0]  # brain: the three voxels of row 0
    image[1, 0, 0, :] = [4.0, 4.0, 4.0]  # constant channel: std 0, only centred
    out, mean, std = normalize_volume(image)
    assert mean == pytest.approx([2.0, 4.0])
    assert std == pytest.approx([np.sqrt(2 / 3), 1.0])
    np.testing.assert_allclose(out[0, 0, 0], [-1.224745, 0.0, 1.224745], rtol=1e-5)
    np.testing.assert_array_equal(out[1, 0, 0], [0.0, 0.0, 0.0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 1], 0.0)  # background exactly 0


def test_normalize_matches_float64_reference():
    rng = np.random.default_rng(3)
    image = (rng.random((4, 37, 41, 29)) * 1000).astype(np.float32)
    image[:, :, :5] = 0  # background
    image[2, 10, 20, 10] = 0  # a zero inside the brain of one channel is still a brain voxel
    brain = np.any(image != 0, axis=0)
    out, mean, std = normalize_volume(image)
    for c in range(4):
        ref = image[c][brain].astype(np.float64)
        assert mean[c] == pytest.approx(ref.mean(), rel=1e-6)  # float16 resolution is 5e-4
        assert std[c] == pytest.approx(ref.std(), rel=1e-6)
        expected = np.where(brain, (image[c] - ref.mean()) / ref.std(), 0.0)
        np.testing.assert_allclose(out[c], expected, atol=2e-6)
    assert (out[:, ~brain] == 0).all()
    assert out[:, brain].mean(axis=1) == pytest.approx(np.zeros(4), abs=1e-5)
    out16, _, _ = normalize_volume(image, dtype=np.float16)
    assert out16.dtype == np.float16
    np.testing.assert_allclose(out16.astype(np.float32), out, atol=2e-3)


def test_normalize_ill_conditioned_and_explicit_brain():
    rng = np.random.default_rng(4)
    image = (10_000 + rng.standard_normal((2, 20, 30, 30))).astype(np.float32)  # mean 1e4, std 1
    image[:, :, :4] = 0
    brain = np.any(image != 0, axis=0)
    _, mean, std = normalize_volume(image)
    ref = image[:, brain].astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(std, ref.std(axis=1), rtol=1e-5)
    # an explicit brain mask with a nonzero background: only the masked voxels count
    noisy = image + np.float32(5.0)
    out, mean2, std2 = normalize_volume(noisy, brain=brain)
    np.testing.assert_allclose(mean2, ref.mean(axis=1) + 5.0, rtol=1e-9)
    np.testing.assert_allclose(std2, ref.std(axis=1), rtol=1e-5)
    assert (out[:, ~brain] == 0).all()


def test_normalize_empty_and_errors():
    out, mean, std = normalize_volume(np.zeros((4, 3, 3, 3), np.float32))
    assert (out == 0).all() and (mean == 0).all() and (std == 1).all()
    with pytest.raises(ValueError, match="C, D, H, W"):
        normalize_volume(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="brain mask"):
        normalize_volume(np.zeros((4, 3, 3, 3)), brain=np.zeros((3, 3, 2), bool))


# --------------------------------------------------------------------------- crop and uncrop


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((40, 64, 56), seed=1, volume_id=2)


def test_prepare_keeps_every_tumour_voxel_and_brain(phantom):
    image, mask = phantom
    image = image.copy()
    mask = mask.copy()
    mask[1, 0, 0, 0] = 1  # a tumour voxel outside the brain (in a corner) must still be kept
    img_c, mask_c, entry = prepare_volume(image, mask, margin=3, volume_id=2)
    assert entry["crop_box"][0][0] == 0 and entry["crop_box"][1][0] == 0 and entry["crop_box"][2][0] == 0
    assert mask_c.sum() == mask.sum()
    assert entry["class_voxels"] == [int(m.sum()) for m in mask]
    assert entry["tumor_voxels"] == int(mask.any(axis=0).sum())
    assert int(brain_mask(image).sum()) == entry["brain_voxels"]
    assert img_c.shape == (4, *entry["shape"]) and mask_c.shape == (3, *entry["shape"])
    for z, y, x in entry["tumor_coords"]:
        assert mask_c[:, z, y, x].any()


def test_crop_box_margin(phantom):
    image, mask = phantom
    brain = brain_mask(image)
    zs, ys, xs = np.nonzero(brain | mask.any(axis=0))
    _, _, entry = prepare_volume(image, mask, margin=2)
    for (a, b), lo, hi, size in zip(entry["crop_box"], (zs.min(), ys.min(), xs.min()),
                                    (zs.max(), ys.max(), xs.max()), image.shape[1:]):
        assert a == max(0, lo - 2) and b == min(size, hi + 3)


def test_uncrop_round_trip(phantom):
    image, mask = phantom
    img_c, mask_c, entry = prepare_volume(image, mask, margin=4)
    np.testing.assert_array_equal(uncrop(mask_c, entry), mask)
    full, _, _ = normalize_volume(image)
    np.testing.assert_allclose(uncrop(img_c, entry), full, atol=1e-5)
    labels = mask_c.argmax(axis=0).astype(np.uint8)  # 3-D arrays work too
    assert uncrop(labels, entry).shape == image.shape[1:]
    np.testing.assert_array_equal(source_to_cache(mask, entry), mask_c)
    logits = uncrop(np.ones((3, *entry["shape"]), np.float32), entry, fill=-50.0)
    assert logits.min() == -50.0 or tuple(entry["shape"]) == image.shape[1:]
    with pytest.raises(ValueError, match="cached shape"):
        uncrop(mask, entry)


def test_resampling_records_factor_and_maps_back(phantom):
    image, mask = phantom
    img_c, mask_c, entry = prepare_volume(image, mask, cache_hw=32, margin=2)
    assert entry["resampled_shape"] == [40, 32, 28]
    assert entry["zoom"] == pytest.approx([1.0, 0.5, 0.5])
    back = uncrop(mask_c, entry)
    assert back.shape == mask.shape and back.dtype == np.uint8
    inter = np.logical_and(back, mask).sum()
    assert 2 * inter / (back.sum() + mask.sum()) > 0.6  # nearest down and up: close, not exact (ragged labels)
    again = source_to_cache(back, entry)
    assert again.shape == mask_c.shape
    # cache_hw at or above the native size keeps the native grid
    _, _, native = prepare_volume(image, mask, cache_hw=64)
    assert native["zoom"] == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache of four tiny volumes, built with one worker."""
    data = tmp_path_factory.mktemp("cache_data")
    make_synthetic(data, 4, (24, 48, 48), seed=0)
    cache = build_cache(data, tmp_path_factory.mktemp("cache") / "c", workers=1, progress=False)
    return data, cache


def test_build_contents(built):
    data, cache = built
    index = load_cache_index(cache)
    assert cached_volume_ids(cache) == [1, 2, 3, 4] == index["volume_ids"]
    assert index["version"] == 1 and index["cache_hw"] is None and index["margin"] == 4
    for vid in (1, 4):
        image, mask = load_volume(data, vid)
        img_ref, mask_ref, entry_ref = prepare_volume(image, mask, dtype=np.float16, volume_id=vid)
        img, msk = load_cached_volume(cache, vid)
        assert isinstance(img, np.memmap) and img.dtype == np.float16 and msk.dtype == np.uint8
        for name, ref in ((f"v{vid}_img.npy", img_ref), (f"v{vid}_mask.npy", mask_ref)):
            blob = io.BytesIO()
            np.save(blob, ref)
            assert (cache / name).read_bytes() == blob.getvalue()  # streamed writes = np.save
        np.testing.assert_array_equal(img, img_ref)
        np.testing.assert_array_equal(msk, mask_ref)
        entry = index["volumes"][str(vid)]
        for key in ("crop_box", "mean", "std", "class_voxels", "tumor_coords", "source_shape", "zoom"):
            assert entry[key] == entry_ref[key]
        assert entry["source"] == str(Path(data).resolve())
        assert np.asarray(entry["mean"]).shape == (4,) and min(entry["std"]) > 0
    img, msk = load_cached_volume(cache, 2, mmap=False)
    assert not isinstance(img, np.memmap)
    with pytest.raises(KeyError, match="volume 9"):
        load_cached_volume(cache, 9)


def test_parallel_build_is_byte_identical(built, tmp_path):
    data, cache = built
    other = build_cache(data, tmp_path / "par", workers=2, progress=False)
    assert _files(other) == _files(cache)


def test_rebuild_skips_finished_volumes(built):
    data, cache = built
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    build_cache(data, cache, workers=1, progress=False)
    build_cache(data, cache, workers=1, progress=False, volume_ids=[2])  # a subset keeps the others
    after = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert before == after
    assert cached_volume_ids(cache) == [1, 2, 3, 4]


def test_subset_then_rest(built, tmp_path):
    data, cache = built
    part = build_cache(data, tmp_path / "part", workers=1, progress=False, volume_ids=[3, 1])
    assert cached_volume_ids(part) == [1, 3]
    build_cache(data, part, workers=1, progress=False)
    assert _files(part) == _files(cache)


def test_torn_files_are_redone(built, tmp_path):
    data, cache = built
    reference = _files(cache)
    work = tmp_path / "torn"
    work.mkdir()
    for name, blob in reference.items():
        (work / name).write_bytes(blob)
    # as if killed while writing volume 2 (image renamed, mask half-written under its temporary name)
    (work / "v2_meta.json").unlink()
    (work / "v2_mask.npy").unlink()
    (work / ".v2_mask.npy.tmp999").write_bytes(reference["v2_mask.npy"][:100])
    (work / "v3_img.npy").write_bytes(reference["v3_img.npy"][:500])  # torn: no meta means not finished
    (work / "v3_meta.json").unlink()
    (work / INDEX_NAME).unlink()
    with pytest.raises(CacheError, match="unfinished build"):
        load_cache_index(work)
    build_cache(data, work, workers=1, progress=False)
    assert _files(work) == reference


_KILL_SCRIPT = """
import sys
from tumorlib.data.cache import build_cache
build_cache(sys.argv[1], sys.argv[2], workers=1, progress=False)
"""


def test_sigkill_and_resume_is_byte_identical(tmp_path):
    data = make_synthetic(tmp_path / "data", 8, (32, 64, 64), seed=5)
    reference = build_cache(data, tmp_path / "ref", workers=1, progress=False)
    target = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(data), str(target)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(target.glob("v*_meta.json")):  # the first volume finished
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(0.03)  # now somewhere inside a later volume
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = list(target.glob("v*_meta.json"))
    assert 1 <= len(finished) < 8 and not (target / INDEX_NAME).exists()
    build_cache(data, target, workers=1, progress=False)
    assert _files(target) == _files(reference)
    assert not list(target.glob(".*.tmp*"))


# --------------------------------------------------------------------------- mismatches and errors


def test_other_data_is_refused(built, tmp_path):
    data, cache = built
    other = make_synthetic(tmp_path / "other", 2, (24, 48, 48), seed=1)
    with pytest.raises(CacheError, match="built from"):
        build_cache(other, cache, workers=1, progress=False)


def test_cache_records_and_enforces_the_channel_order(tmp_path):
    """Files stored in another order, read with that order, give the same canonical cache; the index
    records both orders; a build or run with another order is refused in one line saying how to fix it."""
    from tumorlib.data.cache import check_cache_order, load_cached_volume, open_source

    order = ("t2", "t1", "flair", "t1ce")
    image, mask = make_phantom((16, 32, 32), seed=3, volume_id=1)
    write_kaggle_volume(tmp_path / "pack", 1, image, mask)  # the pack's order
    write_kaggle_volume(tmp_path / "other", 1, image, mask, stored_order=order)
    a = build_cache(tmp_path / "pack", tmp_path / "a", workers=1, progress=False)
    b = build_cache(tmp_path / "other", tmp_path / "b", workers=1, progress=False, stored_order=order)
    np.testing.assert_array_equal(load_cached_volume(a, 1)[0], load_cached_volume(b, 1)[0])
    index = load_cache_index(b)
    assert index["channel_order"] == ["t1", "t1ce", "t2", "flair"] and index["stored_order"] == list(order)
    assert load_cache_index(a)["stored_order"] == ["flair", "t1", "t1ce", "t2"]
    np.testing.assert_array_equal(open_source(index).read(1)[0], load_volume(tmp_path / "pack", 1)[0])
    check_cache_order(b, index, order)  # the same order passes
    with pytest.raises(CacheError, match=r"read with kaggle_channel_order t2,t1,flair,t1ce, the run uses "
                                         r"flair,t1,t1ce,t2; rebuild the cache with `tumorlib cache "
                                         r"--kaggle_channel_order flair,t1,t1ce,t2`"):
        build_cache(tmp_path / "other", b, workers=1, progress=False)
    old = {k: v for k, v in index.items() if k != "stored_order"}
    with pytest.raises(CacheError, match="does not record the channel order"):
        check_cache_order(b, old, order)


def test_changed_data_in_place_is_rebuilt(tmp_path, capsys):
    data = make_synthetic(tmp_path / "d", 2, (16, 32, 32), seed=0)
    cache = build_cache(data, tmp_path / "c", workers=1, progress=False)
    kept = (cache / "v1_img.npy").stat().st_mtime_ns
    image, mask = make_phantom((16, 32, 32), seed=9, volume_id=2)  # same sizes, other content
    write_kaggle_volume(data, 2, image, mask)
    build_cache(data, cache, workers=1, progress=False)
    assert "rebuilding volume 2 (changed: " in capsys.readouterr().err
    fresh = build_cache(data, tmp_path / "fresh", workers=1, progress=False)
    assert _files(cache) == _files(fresh)  # the new content, as a fresh build of it
    assert (cache / "v1_img.npy").stat().st_mtime_ns == kept  # the unchanged volume was not rewritten


def test_other_settings_are_refused(built):
    data, cache = built
    with pytest.raises(CacheError, match="margin"):
        build_cache(data, cache, workers=1, margin=2, progress=False)
    with pytest.raises(CacheError, match="cache_hw"):
        build_cache(data, cache, workers=1, cache_hw=32, progress=False)


def test_version_and_format_checks(built, tmp_path):
    _, cache = built
    work = tmp_path / "v"
    work.mkdir()
    index = json.loads((cache / INDEX_NAME).read_text())
    index["version"] = 99
    (work / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CacheError, match="version 99.*build the cache again"):
        load_cache_index(work)
    (work / INDEX_NAME).write_text(json.dumps({"hello": 1}))
    with pytest.raises(CacheError, match="not a tumorlib cache"):
        load_cache_index(work)
    (work / INDEX_NAME).write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        load_cache_index(work)
    with pytest.raises(CacheError, match="no cache index"):
        load_cache_index(tmp_path / "nothing")


def test_index_mismatch_names_the_file(built, tmp_path):
    _, cache = built
    work = tmp_path / "m"
    work.mkdir()
    for name, blob in _files(cache).items():
        (work / name).write_bytes(blob)
    np.save(work / "v3_img.npy", np.zeros((4, 2, 2, 2), np.float16))
    with pytest.raises(CacheError, match="v3_img.npy.*does not match its index"):
        load_cached_volume(work, 3)
    (work / "v4_mask.npy").write_bytes(b"garbage")
    with pytest.raises(CacheError, match="v4_mask.npy"):
        load_cached_volume(work, 4)


def test_reader_errors_pass_through(tmp_path):
    def bad_reader(volume_id):
        raise ValueError(f"volume {volume_id}: slice 3 missing in /somewhere")

    with pytest.raises(ValueError, match="volume 1: slice 3 missing"):
        build_cache_from_reader(bad_reader, [1], tmp_path / "c", source="x", workers=1, progress=False)
    data = make_synthetic(tmp_path / "d", 2, (12, 24, 24), seed=0)
    (Path(data) / "volume_2_slice_5.h5").unlink()
    with pytest.raises(ValueError, match="volume 2: slice"):
        build_cache(data, tmp_path / "c2", workers=2, progress=False)


def test_any_reader_is_cached_by_the_same_code(tmp_path):
    phantoms = {7: make_phantom((12, 24, 20), seed=0, volume_id=7), 9: make_phantom((10, 20, 24), seed=0,
                                                                                      volume_id=9)}
    cache = build_cache_from_reader(phantoms.__getitem__, [9, 7], tmp_path / "c", source="memory",
                                    reader_name="dict", workers=1, progress=False)
    assert cached_volume_ids(cache) == [7, 9]
    img, msk = load_cached_volume(cache, 9)
    np.testing.assert_array_equal(uncrop(np.asarray(msk), load_cache_index(cache)["volumes"]["9"]),
                                  phantoms[9][1])


def test_resolve_cache_builds_the_workspace_cache_once(tiny_data, monkeypatch):
    monkeypatch.setenv("TUMORLIB_DATA", str(tiny_data))
    cfg = get_config("ci")
    cache = resolve_cache(cfg, progress=False)
    assert cache == workspace(cfg).cache_dir
    assert cached_volume_ids(cache) == list_volumes(tiny_data)
    stamp = (cache / INDEX_NAME).stat().st_mtime_ns
    assert resolve_cache(cfg, progress=False) == cache
    assert (cache / INDEX_NAME).stat().st_mtime_ns == stamp
    with pytest.raises(CacheError, match="margin"):
        resolve_cache(cfg.replace(cache_margin=1), progress=False)


def test_slices_added_after_caching_are_noticed(tmp_path, capsys):
    """A volume cached while its trailing slices were missing is rebuilt once they are back (the source
    records list only the files that were there; the fingerprint names them all)."""
    data = make_synthetic(tmp_path / "d", 2, (16, 32, 32), seed=0)
    last = sorted(data.glob("volume_1_slice_*.h5"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))[-1]
    kept = last.read_bytes()
    last.unlink()
    (data / "meta_data.csv").rename(tmp_path / "meta_data.csv")  # without it a short volume only warns
    with pytest.warns(UserWarning):
        cache = build_cache(data, tmp_path / "c", workers=1, progress=False)
    assert np.load(cache / "v1_img.npy", mmap_mode="r").shape[1] <= 15
    last.write_bytes(kept)
    build_cache(data, cache, workers=1, progress=False)
    assert "rebuilding volume 1 (changed: source: its fingerprint differs" in capsys.readouterr().err
    fresh = build_cache(data, tmp_path / "fresh", workers=1, progress=False)
    assert _files(cache) == _files(fresh)


def test_an_interrupted_build_rerun_with_another_order_is_refused(tiny_data, tmp_path):
    from tumorlib.data.cache.layout import meta_name

    cache = tmp_path / "cache"
    build_cache(tiny_data, cache, workers=1, progress=False, volume_ids=[1])
    (cache / "index.json").unlink()  # killed before the index was written: only v1's files and meta
    assert json.loads((cache / meta_name(1)).read_text())["stored_order"] == ["flair", "t1", "t1ce", "t2"]
    before = _files(cache)
    with pytest.raises(CacheError, match=r"volume 1 was read with kaggle_channel_order flair,t1,t1ce,t2, this "
                                         r"build asks for t2,t1,flair,t1ce; rerun with --kaggle_channel_order "
                                         r"flair,t1,t1ce,t2"):
        build_cache(tiny_data, cache, workers=1, progress=False, stored_order=("t2", "t1", "flair", "t1ce"))
    assert _files(cache) == before  # refused before anything was written
    build_cache(tiny_data, cache, workers=1, progress=False)  # the same order finishes the build
    assert all(e["stored_order"] == ["flair", "t1", "t1ce", "t2"] for e in load_cache_index(cache)["volumes"].values())


def test_a_leftover_volume_without_a_recorded_order_is_rebuilt(tiny_data, tmp_path, capsys):
    from tumorlib.data.cache.layout import dump_entry, meta_name

    cache = tmp_path / "cache"
    build_cache(tiny_data, cache, workers=1, progress=False, volume_ids=[1])
    (cache / "index.json").unlink()
    entry = json.loads((cache / meta_name(1)).read_text())
    del entry["stored_order"]  # as a build before orders were recorded per volume left it
    (cache / meta_name(1)).write_text(dump_entry(entry) + "\n")
    capsys.readouterr()
    build_cache(tiny_data, cache, workers=1, progress=False)
    assert "rebuilding volume 1 (changed: v1_meta.json: its channel order is not recorded)" in capsys.readouterr().err
    assert load_cache_index(cache)["volumes"]["1"]["stored_order"] == ["flair", "t1", "t1ce", "t2"]


def test_cache_reuse_benchmark_runs_tiny_and_reuses(tmp_path):
    from tumorlib.benchmarks.cache_reuse import benchmark_cache_reuse

    result = benchmark_cache_reuse(n_volumes=3, n_slices=5, repeats=2, root=str(tmp_path))
    assert result["files"] == 15 and len(result["seconds"]) == 2 and result["best_s"] < 5.0


def test_one_scan_reuse_check_notices_a_changed_slice(tmp_path, capsys):
    """The scan's sizes and times stand in for ``stat`` calls: a slice rewritten in place still counts."""
    from tumorlib.benchmarks.cache_reuse import make_reuse_tree
    from tumorlib.data.cache.fingerprints import KaggleScan, kaggle_fingerprint
    from tumorlib.data.cache.store import volume_problem

    data, cache = make_reuse_tree(tmp_path, 2, 4)
    index = load_cache_index(cache)
    scan = KaggleScan(data.resolve())
    assert scan.ids() == [1, 2]
    assert scan.fingerprint(2) == kaggle_fingerprint(scan.source_files(2)) == index["volumes"]["2"]["fingerprint"]
    assert volume_problem(cache, index["volumes"]["2"], data.resolve(), scan.stat) is None
    target = scan.source_files(2)[1]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    kind, path, why = volume_problem(cache, index["volumes"]["2"], data.resolve(), KaggleScan(data.resolve()).stat)
    assert kind == "changed" and path.endswith(target.name) and why == "modified since recorded"


# --------------------------------------------------------------------------- images that cannot be scans


def test_an_all_zero_volume_is_refused_not_cached(tmp_path):
    from tumorlib.core.plausibility import ImplausibleImageError

    data = make_synthetic(tmp_path / "d", 2, (12, 24, 24), seed=0)
    image, mask = load_volume(data, 2)
    write_kaggle_volume(data, 2, np.zeros_like(image), mask)  # the slices of volume 2, all zero
    with pytest.raises(ImplausibleImageError, match=r"^volume 2 \(.*\), T1: every voxel is 0"):
        build_cache(tmp_path / "d", tmp_path / "c", workers=1, progress=False)
    assert not (tmp_path / "c" / "v2_img.npy").exists() and not (tmp_path / "c" / INDEX_NAME).exists()


def test_any_reader_s_implausible_volume_is_refused_by_the_build(tmp_path):
    from tumorlib.core.plausibility import ImplausibleImageError

    image, mask = make_phantom((10, 20, 24), seed=0, volume_id=3)
    image[2] = image[1]
    with pytest.raises(ImplausibleImageError, match=r"^volume 3 \(memory\): T1ce and T2 are identical"):
        build_cache_from_reader({3: (image, mask)}.__getitem__, [3], tmp_path / "c", source="memory",
                                reader_name="dict", workers=1, progress=False)
    assert not (tmp_path / "c" / "v3_img.npy").exists()


def _copy_cache(cache: Path, work: Path) -> Path:
    work.mkdir()
    for name, blob in _files(cache).items():
        (work / name).write_bytes(blob)
    return work


@pytest.mark.parametrize("edit,message", [
    (lambda im: im * 0, r"T1: every voxel is 0"),
    (lambda im: im[[0, 1, 1, 3]], r"T1ce and T2 are identical in every voxel"),
])
def test_a_cached_volume_that_cannot_be_a_scan_is_refused_for_prediction(built, tmp_path, edit, message):
    """A cache built before the check (or edited): refused where a volume is loaded to be segmented."""
    from tumorlib.core.config import get_config
    from tumorlib.core.plausibility import ImplausibleImageError
    from tumorlib.evaluation.scoring import predicted_channels
    from tumorlib.inference.predictor import predict_cached_volume

    work = _copy_cache(built[1], tmp_path / "w")
    np.save(work / "v2_img.npy", edit(np.load(work / "v2_img.npy")))
    load_cached_volume(work, 2)  # patch sampling reads it as it is (memory-mapped, no full read)
    with pytest.raises(ImplausibleImageError, match=rf"^cache {work}: volume 2(, |: ){message}"):
        load_cached_volume(work, 2, check=True)
    config = get_config("ci")
    with pytest.raises(ImplausibleImageError, match=message):  # before the model is touched (None here)
        predict_cached_volume(None, config, work, 2)
    with pytest.raises(ImplausibleImageError, match=message):
        predicted_channels(None, config, work, 2, "cpu", load_cache_index(work))


# --------------------------------------------------------------------------- index.json pointing at other files


def _edited_index(built, tmp_path, edit) -> Path:
    work = _copy_cache(built[1], tmp_path / "w")
    index = json.loads((work / INDEX_NAME).read_text())
    edit(index["volumes"])
    (work / INDEX_NAME).write_text(json.dumps(index))
    return work


@pytest.mark.parametrize("edit,message", [
    (lambda v: v["2"].update(image_file="v1_img.npy"), r"volumes 1 and 2 both point at v1_img.npy"),
    (lambda v: v["4"].update(mask_file="./v3_mask.npy"), r"volumes 3 and 4 both point at v3_mask.npy"),
    (lambda v: v["2"].update(mask_file="v2_img.npy"), r"volume 2 points at v2_img.npy twice"),
    (lambda v: (v.pop("3"), v["2"].update(image_file="v3_img.npy")),
     r"volume 2 points at v3_img.npy, the file of volume 3"),
])
def test_index_pointing_volumes_at_one_file_is_refused_naming_both(built, tmp_path, edit, message):
    work = _edited_index(built, tmp_path, edit)
    with pytest.raises(CacheError, match=rf"^{work / INDEX_NAME}: {message}") as info:
        load_cache_index(work)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("volumes,message", [
    ([], r"'volumes' is list \[\], not an object"),
    ("v1\nv2", r"'volumes' is str 'v1\\nv2', not an object"),
    ({"one": {}}, r"volume id 'one' is not a number"),
    ({"1": [1, 2]}, r"volume 1's entry is list, not an object"),
])
def test_index_volumes_of_the_wrong_shape_are_one_line(built, tmp_path, volumes, message):
    work = _copy_cache(built[1], tmp_path / "w")
    index = json.loads((work / INDEX_NAME).read_text())
    index["volumes"] = volumes
    (work / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CacheError, match=rf"^{work / INDEX_NAME}: {message}") as info:
        load_cache_index(work)
    assert "\n" not in str(info.value)
