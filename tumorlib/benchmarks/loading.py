"""Loading and throughput benchmarks (notebook 03_benchmark, ``tumorlib bench``).

The loading benchmark measures, in one run and interleaved so both sides see the same machine load:
reading a volume from its HDF5 slices against loading it from the ``.npy`` cache (warm page cache,
and cold where the page cache of single files can be dropped with ``posix_fadvise``), the cache
build against reading the slices it starts from, and training patches per second cut from the
cache in one process. Its tables, figure, targets and JSON file are ``tumorlib.benchmarks.loading_report``.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tumorlib.core.config import Config

__all__ = [
    "benchmark_loading",
    "drop_page_cache",
    "map_populated",
    "time_cache_build",
    "time_patch_sampling",
    "time_volume_loads",
]


def drop_page_cache(paths: Sequence[str | os.PathLike]) -> bool:
    """Evict files from the OS page cache (``posix_fadvise(DONTNEED)``; no root needed).

    Args:
        paths: files to evict.

    Returns:
        True when the platform supports it (Linux), False otherwise (nothing done).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "fdatasync"):
                os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _settle() -> None:
    """Flush dirty pages (untimed), so the previous round's write-back does not run inside the next."""
    if hasattr(os, "sync"):
        os.sync()


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def map_populated(path: str | os.PathLike) -> Any:
    """A ``.npy`` file memory-mapped read-only with every page loaded (``MAP_POPULATE`` on Linux;
    elsewhere the pages are touched): the whole array is in memory without a private copy.

    Args:
        path: a ``.npy`` file.

    Returns:
        The array (read-only, backed by the page cache).
    """
    import mmap

    import numpy as np

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if hasattr(mmap, "MAP_POPULATE"):
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
        else:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.ndarray(shape, dtype, buffer=mm, offset=offset, order="F" if fortran else "C")
    if not hasattr(mmap, "MAP_POPULATE") and array.size:
        array.sum(dtype=np.float64)  # touch every page
    return array


def _cache_files(cache_dir: Path, index: dict[str, Any], vid: int) -> list[Path]:
    from tumorlib.core.folders import inside

    entry = index["volumes"][str(vid)]
    return [inside(cache_dir, entry["image_file"]), inside(cache_dir, entry["mask_file"])]


def time_volume_loads(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                      repeats: int = 3, cold: bool = True) -> dict[str, list[float]]:
    """Seconds to load whole volumes from HDF5 slices and from the cache, interleaved.

    Each repeat loads every volume once from each source (after one untimed warm-up pass), so both
    see the same machine load. Cold loads first evict that volume's files from the page cache.

    Args:
        data_dir: the Kaggle-format folder.
        cache_dir: its cache.
        volume_ids: volumes to load.
        repeats: warm passes over the volumes.
        cold: also time one cold load per volume and source (Linux only).

    Returns:
        ``{"h5": [...], "npy": [...], "npy_mapped": [...], "h5_cold": [...], "npy_cold": [...]}`` in
        seconds (cold lists empty when not measured); ``npy`` reads private copies (``np.load``),
        ``npy_mapped`` maps the files with every page loaded (``map_populated``, no copy).
    """
    from tumorlib.data import find_slices, load_volume
    from tumorlib.data.cache import load_cache_index, load_cached_volume

    cache = Path(cache_dir)
    index = load_cache_index(cache)
    out: dict[str, list[float]] = {"h5": [], "npy": [], "npy_mapped": [], "h5_cold": [], "npy_cold": []}
    if cold:
        slices = find_slices(data_dir)
        for vid in volume_ids:
            h5_files = list(slices[int(vid)].values())
            if not drop_page_cache(h5_files):
                break
            out["h5_cold"].append(_timed(lambda: load_volume(data_dir, vid)))
            drop_page_cache(_cache_files(cache, index, vid))
            out["npy_cold"].append(_timed(lambda: load_cached_volume(cache, vid, mmap=False, index=index)))
    for vid in volume_ids:  # warm-up
        load_volume(data_dir, vid)
        load_cached_volume(cache, vid, mmap=False, index=index)
    for _ in range(repeats):
        for vid in volume_ids:
            out["h5"].append(_timed(lambda: load_volume(data_dir, vid)))
            out["npy"].append(_timed(lambda: load_cached_volume(cache, vid, mmap=False, index=index)))
            out["npy_mapped"].append(_timed(lambda: [map_populated(f) for f in _cache_files(cache, index, vid)]))
    return out


def time_cache_build(data_dir: str | os.PathLike, volume_ids: Sequence[int], cache_hw: int | None = None,
                     margin: int = 4, workers: int = 1, rounds: int = 2,
                     tmp_root: str | os.PathLike | None = None) -> dict[str, list[float] | float | None]:
    """Seconds per volume to read the slices once against seconds per volume to build the cache.

    Each round reads every volume once with ``load_volume`` (the floor of any build), then builds
    a fresh cache of the same volumes serially (``workers=1``) in a scratch folder; rounds alternate
    so both see the same machine load. Then, when ``workers > 1``, one parallel build. The scratch
    folder is removed.

    Args:
        data_dir: the Kaggle-format folder (read once untimed first, so both see a warm page cache).
        volume_ids: volumes to build.
        cache_hw: as ``build_cache``.
        margin: as ``build_cache``.
        workers: processes of the parallel build (1: skip it).
        rounds: alternating read/build rounds.
        tmp_root: where the scratch folder goes (None: the system's temporary folder).

    Returns:
        ``{"read": [s per volume, per round], "build": [s per volume, per round],
        "parallel_build_per_volume": s or None}``.
    """
    from tumorlib.data import load_volume
    from tumorlib.data.cache import build_cache

    ids = list(volume_ids)
    for vid in ids:
        load_volume(data_dir, vid)
    scratch = Path(tempfile.mkdtemp(prefix="tumorlib-bench-", dir=tmp_root))
    try:
        reads, builds = [], []
        for r in range(rounds):
            _settle()
            reads.append(sum(_timed(lambda: load_volume(data_dir, vid)) for vid in ids) / len(ids))
            _settle()
            builds.append(_timed(lambda: build_cache(data_dir, scratch / f"serial{r}", workers=1, cache_hw=cache_hw,
                                                     margin=margin, progress=False, volume_ids=ids)) / len(ids))
            shutil.rmtree(scratch / f"serial{r}", ignore_errors=True)
        parallel = None
        if workers > 1 and len(ids) > 1:
            parallel = _timed(lambda: build_cache(data_dir, scratch / "parallel", workers=workers,
                                                  cache_hw=cache_hw, margin=margin, progress=False,
                                                  volume_ids=ids)) / len(ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"read": reads, "build": builds, "parallel_build_per_volume": parallel}


def time_patch_sampling(cache_dir: str | os.PathLike, volume_ids: Sequence[int],
                        patch_size: Sequence[int] = (64, 160, 160), tumor_prob: float = 0.6,
                        n_patches: int = 200, ram_cache_bytes: int = 2**30, dtype: str = "float16",
                        seed: int = 0) -> float:
    """Training patches per second from one process, as the tensors the training loop consumes.

    Cuts ``n_patches`` patches with ``BraTS3DDataset`` (after one untimed pass over the volumes, so
    the RAM cache and page cache are warm as in a training epoch).

    Args:
        cache_dir: the cache.
        volume_ids: volumes to sample from.
        patch_size: (pd, ph, pw).
        tumor_prob: share of tumour-centred patches.
        n_patches: patches timed.
        ram_cache_bytes: the dataset's RAM cache bound.
        dtype: image dtype handed to the loop (``float16``: the loop casts on its device).
        seed: sampling seed.

    Returns:
        Patches per second.
    """
    from tumorlib.data.dataset import BraTS3DDataset

    ds = BraTS3DDataset(cache_dir, volume_ids, patch_size=patch_size, tumor_prob=tumor_prob,
                        ram_cache_bytes=ram_cache_bytes, seed=seed, samples_per_epoch=n_patches, dtype=dtype)
    ds.set_epoch(1)
    for i in range(min(len(volume_ids), n_patches)):
        ds[i]
    ds.set_epoch(2)
    t0 = time.perf_counter()
    for i in range(n_patches):
        ds[i]
    return n_patches / (time.perf_counter() - t0)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a / b) if a is not None and b else None


def _cache_holding(data: Path, cache: Path, ids: Sequence[int], cfg: Config, progress: bool) -> dict[str, Any]:
    """The index of ``cache``, built first (not timed) when it does not hold every volume of ``ids``."""
    from tumorlib.data.cache import build_cache, load_cache_index

    try:
        index = load_cache_index(cache)
        have = all(str(v) in index["volumes"] for v in ids)
    except (ValueError, OSError):
        have = False
    if not have:
        build_cache(data, cache, workers=cfg.cache_workers, cache_hw=cfg.cache_hw, margin=cfg.cache_margin,
                    progress=progress, stored_order=cfg.kaggle_channel_order)
    return load_cache_index(cache)


def _patch_rates(cache: Path, ids: Sequence[int], cfg: Config, n_patches: int) -> tuple[float, float, float]:
    """Patches per second: float16 with the preset's RAM cache, float32, and memory-mapped (no RAM cache)."""
    common = dict(patch_size=cfg.patch_size, tumor_prob=cfg.tumor_prob, seed=cfg.seed)
    half = max(1, n_patches // 2)
    return (time_patch_sampling(cache, ids, n_patches=n_patches, ram_cache_bytes=cfg.ram_cache_bytes, **common),
            time_patch_sampling(cache, ids, n_patches=half, ram_cache_bytes=cfg.ram_cache_bytes, dtype="float32",
                                **common),
            time_patch_sampling(cache, ids, n_patches=half, ram_cache_bytes=0, **common))


def _bytes_on_disk(data: Path, cache: Path, index: dict[str, Any], ids: Sequence[int]) -> tuple[int, int]:
    """Bytes of the volumes' HDF5 slices and of their cache files."""
    from tumorlib.data import find_slices

    slices = find_slices(data)
    h5_bytes = sum(p.stat().st_size for v in ids for p in slices[int(v)].values())
    return h5_bytes, sum(f.stat().st_size for v in ids for f in _cache_files(cache, index, v))


def _machine() -> dict[str, Any]:
    """Where the benchmark ran: platform, Python, CPUs, torch threads, load average."""
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def benchmark_loading(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, config: Config | None = None,
                      volume_ids: Sequence[int] | None = None, n_volumes: int = 3, repeats: int = 3,
                      n_patches: int = 200, cold: bool = True, build: bool = True,
                      progress: bool = False) -> dict[str, Any]:
    """The loading benchmark, as a JSON-ready dict.

    Builds ``cache_dir`` first when it does not hold the volumes (not timed; the build is timed
    separately in a scratch folder).

    Args:
        data_dir: the Kaggle-format folder.
        cache_dir: its cache folder.
        config: a ``Config`` (patch size, tumour share, RAM cache, cache settings); None: the
            ``$TUMORLIB_PRESET`` preset.
        volume_ids: volumes to measure; None: the first ``n_volumes``.
        n_volumes: see ``volume_ids``.
        repeats: warm loads per volume and source.
        n_patches: patches timed.
        cold: measure cold loads (Linux; null elsewhere).
        build: time the cache build against the slice reads (null otherwise).
        progress: progress bars while building the cache.

    Returns:
        Keys ``h5_volume_load_s`` (median, ``load_volume``), ``npy_volume_load_s`` (median, image
        and mask read into private memory with ``np.load``), ``load_speedup`` (their ratio),
        ``npy_volume_mapped_s`` and ``load_speedup_mapped`` (the files mapped with every page loaded,
        no copy), ``patch_samples_per_s`` (float16 image + uint8 mask tensors, the preset's RAM
        cache), ``patch_samples_per_s_float32``, ``patch_samples_per_s_mmap`` (no RAM cache),
        ``h5_read_s_per_volume`` and ``cache_build_s_per_volume`` (medians over alternating rounds,
        serial build), ``cache_build_overhead`` (their ratio), ``cache_build_parallel_s_per_volume``
        (``cache_workers`` processes), the cold figures ``h5_volume_load_cold_s``,
        ``npy_volume_load_cold_s``, ``load_speedup_cold`` (null when not measured), and context:
        ``volume_shape``, ``cached_shape``, ``volume_ids``, ``patch_size``, sizes on disk, machine.
    """
    from tumorlib.core.config import get_config
    from tumorlib.data import list_volumes

    cfg = config if config is not None else get_config()
    data, cache = (Path(p).expanduser().resolve() for p in (data_dir, cache_dir))
    ids = list(volume_ids) if volume_ids is not None else list_volumes(data)[:n_volumes]
    index = _cache_holding(data, cache, ids, cfg, progress)

    loads = time_volume_loads(data, cache, ids, repeats=repeats, cold=cold)
    builds = (time_cache_build(data, ids, cache_hw=cfg.cache_hw, margin=cfg.cache_margin,
                               workers=cfg.cache_workers, rounds=max(2, repeats), tmp_root=cache.parent)
              if build else None)
    patches, patches32, patches_mmap = _patch_rates(cache, ids, cfg, n_patches)
    h5_bytes, npy_bytes = _bytes_on_disk(data, cache, index, ids)
    h5, npy, h5_cold, npy_cold = (_median(loads[k]) for k in ("h5", "npy", "h5_cold", "npy_cold"))
    read, built = (_median(builds[k]) if builds else None for k in ("read", "build"))
    first = index["volumes"][str(ids[0])]
    return {
        "h5_volume_load_s": h5,
        "npy_volume_load_s": npy,
        "load_speedup": _ratio(h5, npy),
        "npy_volume_mapped_s": _median(loads["npy_mapped"]),
        "load_speedup_mapped": _ratio(h5, _median(loads["npy_mapped"])),
        "patch_samples_per_s": patches,
        "patch_samples_per_s_float32": patches32,
        "patch_samples_per_s_mmap": patches_mmap,
        "h5_read_s_per_volume": read,
        "cache_build_s_per_volume": built,
        "cache_build_overhead": _ratio(built, read),
        "cache_build_parallel_s_per_volume": builds["parallel_build_per_volume"] if builds else None,
        "h5_volume_load_cold_s": h5_cold,
        "npy_volume_load_cold_s": npy_cold,
        "load_speedup_cold": _ratio(h5_cold, npy_cold),
        "volume_ids": [int(v) for v in ids],
        "volume_shape": first["source_shape"],
        "cached_shape": first["shape"],
        "h5_bytes_per_volume": h5_bytes // len(ids),
        "npy_bytes_per_volume": npy_bytes // len(ids),
        "patch_size": list(cfg.patch_size),
        "tumor_prob": cfg.tumor_prob,
        "repeats": repeats,
        "n_patches": n_patches,
        "cache_workers": cfg.cache_workers,
        "preset": cfg.preset,
        "machine": _machine(),
    }
