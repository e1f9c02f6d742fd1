"""How long reusing a finished Kaggle cache takes: the check of every volume's source records.

Every ``build_cache`` (and so every ``tumorlib train`` and ``evaluate``) on a finished cache first checks
that nothing changed: the slice files found below the data folder, each volume's fingerprint and the size
and time of each of its slice files (``tumorlib.data.cache.build``). On the full Kaggle pack that is 369
volumes x 155 slices. ``benchmark_cache_reuse`` builds a synthetic tree of that size (tiny slice files:
the check reads names, sizes and times, plus a few bytes of each volume's middle slice) with a matching
cache index, then times ``build_cache`` on it, which returns without building anything.

Run it as ``python -m tumorlib.benchmarks.cache_reuse [n_volumes n_slices]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tumorlib.core.brats import KAGGLE_STORED_ORDER
from tumorlib.core.safety import atomic_write
from tumorlib.data.cache.fingerprints import kaggle_fingerprint
from tumorlib.data.cache.layout import (build_settings, dump_entry, dump_index, image_name, mask_name, meta_name,
                                        output_records, source_records)
from tumorlib.data.cache.preprocess import CACHE_VERSION
from tumorlib.data.cache.readers import order_record
from tumorlib.data.cache.store import FORMAT_NAME, INDEX_NAME

__all__ = ["benchmark_cache_reuse", "make_reuse_tree"]


def make_reuse_tree(root: Path, n_volumes: int, n_slices: int, slice_bytes: int = 64) -> tuple[Path, Path]:
    """A synthetic Kaggle folder and a finished cache index that matches it.

    Args:
        root: an empty folder; ``root/data`` and ``root/cache`` are created.
        n_volumes: volumes (ids 1..n).
        n_slices: slice files per volume.
        slice_bytes: size of each slice file (not valid HDF5: the reuse check never opens it as such).

    Returns:
        ``(data_dir, cache_dir)``.
    """
    data, cache = root / "data", root / "cache"
    folder = data / "BraTS2020_training_data" / "content" / "data"
    folder.mkdir(parents=True)
    cache.mkdir()
    settings = build_settings(None, 4, "kaggle")
    entries = {}
    for vid in range(1, n_volumes + 1):
        files = []
        for s in range(n_slices):
            path = folder / f"volume_{vid}_slice_{s}.h5"
            path.write_bytes(bytes([vid % 256, s % 256]) * (slice_bytes // 2))
            files.append(path)
        np.save(cache / image_name(vid), np.zeros((4, 1, 1, 1), np.float16))
        np.save(cache / mask_name(vid), np.zeros((3, 1, 1, 1), np.uint8))
        entry: dict[str, Any] = {
            "volume": vid, "source": str(data.resolve()), "fingerprint": kaggle_fingerprint(files),
            "cache_hw": None, "margin": 4, "image_file": image_name(vid), "mask_file": mask_name(vid),
            "sources": source_records(data.resolve(), files), "stored_order": list(KAGGLE_STORED_ORDER),
            "shape": [1, 1, 1], "files": output_records(cache, [image_name(vid), mask_name(vid)])}
        (cache / meta_name(vid)).write_text(dump_entry(entry) + "\n")
        entries[vid] = entry
    index = {"format": FORMAT_NAME, "version": CACHE_VERSION, "source": str(data.resolve()),
             "volume_ids": sorted(entries), **settings, **order_record(KAGGLE_STORED_ORDER),
             "volumes": {str(v): entries[v] for v in sorted(entries)}}
    atomic_write(cache / INDEX_NAME, dump_index(index))
    return data, cache


def benchmark_cache_reuse(n_volumes: int = 369, n_slices: int = 155, repeats: int = 3,
                          root: str | None = None) -> dict[str, Any]:
    """Time ``build_cache`` on a finished, unchanged cache of ``n_volumes`` x ``n_slices`` slice files.

    Args:
        n_volumes: volumes of the synthetic tree (369: the Kaggle pack).
        n_slices: slices per volume (155).
        repeats: timed calls (each in the same process: the OS's file cache is warm after the first).
        root: an empty folder to build the tree in; None: a temporary folder, removed afterwards.

    Returns:
        ``{"n_volumes", "n_slices", "files", "setup_s", "seconds": [per call], "best_s"}``.

    Raises:
        AssertionError: the reuse wrote something (its index changed): it was not a plain reuse.
    """
    from tumorlib.data.cache.build import build_cache

    with tempfile.TemporaryDirectory(prefix="tumorlib-reuse-") as tmp:
        base = Path(root) if root is not None else Path(tmp)
        t0 = time.perf_counter()
        data, cache = make_reuse_tree(base, n_volumes, n_slices)
        setup = time.perf_counter() - t0
        before = (cache / INDEX_NAME).read_text()
        seconds = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            build_cache(data, cache, workers=1, progress=False)
            seconds.append(time.perf_counter() - t0)
        assert (cache / INDEX_NAME).read_text() == before, "the reuse check rewrote the index"
    return {"n_volumes": n_volumes, "n_slices": n_slices, "files": n_volumes * n_slices, "setup_s": setup,
            "seconds": seconds, "best_s": min(seconds)}


def main(argv: list[str] | None = None) -> int:
    """``python -m tumorlib.benchmarks.cache_reuse [n_volumes n_slices]``: print the seconds."""
    args = [int(a) for a in (sys.argv[1:] if argv is None else argv)]
    result = benchmark_cache_reuse(*args[:2])
    print(f"cache reuse check, {result['n_volumes']} volumes x {result['n_slices']} slices "
          f"({result['files']} files): " + ", ".join(f"{s:.2f}" for s in result["seconds"])
          + f" s (best {result['best_s']:.2f} s; tree built in {result['setup_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
