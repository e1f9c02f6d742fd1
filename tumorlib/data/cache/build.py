"""Building a cache: the streamed writer and the parallel, resumable build from any volume reader.

The source of each volume is a plain callable ``reader(volume_id) -> (image, mask)``, so any format
(Kaggle HDF5 slices, NIfTI cases) is cached by the same code (``build_cache_from_reader``). Every file is
written to a temporary name and renamed, so a build killed at any point and run again skips the
finished volumes, redoes the interrupted one and ends byte-identical to an uninterrupted build.

A finished cache is reused without a lock after a check of its records (``store.volume_problem``:
sizes of the cache files, sizes and times of the source files), so a read-only cache can be used. Only
when something needs building is the folder's writer lock taken (``safety.folder_lock``): damaged
volumes and volumes whose source changed are rebuilt, volumes whose source is gone are dropped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tumorlib.core.brats import KAGGLE_STORED_ORDER, check_order

from .preprocess import _cast_into, _Plan, _resample_and_plan, _single_thread_torch, _slabs, _zscore_slabs
from .readers import check_cache_order, order_record
from .store import (
    CACHE_VERSION,
    FORMAT_NAME,
    INDEX_NAME,
    CacheError,
    _atomic_write,
    _check_settings,
    _dump_entry,
    _dump_index,
    _image_name,
    _mask_name,
    _meta_name,
    _output_records,
    _read_entry,
    _settings,
    _source_records,
    load_cache_index,
    volume_problem,
)

if TYPE_CHECKING:
    from tumorlib.core.config import Config, Workspace

__all__ = ["Fingerprint", "Reader", "build_cache", "build_cache_from_reader", "ensure_cache"]

Reader = Callable[[int], tuple[np.ndarray, np.ndarray]]
Fingerprint = Callable[[int], str]
SourceFiles = Callable[[int], Sequence[Path]]


def _compute_one(reader: Reader, volume_id: int, cache_hw: int | None, margin: int, source: str,
                 fingerprint: str | None, sources: dict[str, Any] | None = None) -> _Plan:
    """Read and plan one volume (crop, moments, index entry); the z-scoring happens while writing."""
    image, mask = reader(volume_id)
    plan = _resample_and_plan(image, mask, cache_hw, margin, volume_id)
    plan.entry = {"volume": int(volume_id), "source": source, "fingerprint": fingerprint, "cache_hw": cache_hw,
                  "margin": int(margin), "image_file": _image_name(volume_id), "mask_file": _mask_name(volume_id),
                  **({"sources": sources} if sources is not None else {}), **plan.entry}
    return plan


def _stream_image(f: Any, plan: _Plan) -> None:
    """Write the z-scored float16 image as ``.npy`` slab by slab (same bytes as ``np.save`` of
    ``prepare_volume``'s image, without holding the whole float16 volume in memory)."""
    shape = (plan.image.shape[0],) + tuple(plan.entry["shape"])
    np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
    out = None
    with _single_thread_torch():
        for _, _, w in _zscore_slabs(plan.image, plan.brain, plan.mean, plan.std, background_zero=True):
            if out is None or out.shape[0] < w.shape[0]:
                out = np.empty(w.shape, np.float16)
            o = out[: w.shape[0]]
            _cast_into(o, w)
            f.write(memoryview(o).cast("B"))


def _stream_mask(f: Any, plan: _Plan) -> None:
    """Write the cropped uint8 mask as ``.npy`` slab by slab (same bytes as ``np.save``)."""
    m = plan.mask
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": m.shape})
    slabs = _slabs(m.shape[1:])
    buf = np.empty(((slabs[0].stop - slabs[0].start) if slabs else 0,) + m.shape[2:], np.uint8)
    for k in range(m.shape[0]):
        for sl in slabs:
            b = buf[: sl.stop - sl.start]
            np.copyto(b, m[k, sl], casting="unsafe")
            f.write(memoryview(b).cast("B"))


def _write_one(cache: Path, plan: _Plan) -> dict[str, Any]:
    """Write a planned volume: image, mask, then the meta file that marks it finished."""
    volume_id = plan.entry["volume"]
    _atomic_write(cache / _image_name(volume_id), lambda f: _stream_image(f, plan))
    _atomic_write(cache / _mask_name(volume_id), lambda f: _stream_mask(f, plan))
    plan.entry["files"] = _output_records(cache, [_image_name(volume_id), _mask_name(volume_id)])
    text = _dump_entry(plan.entry) + "\n"
    _atomic_write(cache / _meta_name(volume_id), lambda f: f.write(text), mode="w")
    return plan.entry


def _cache_one(reader: Reader, volume_id: int, cache_dir: str, cache_hw: int | None, margin: int,
               source: str, fingerprint: str | None, sources: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read, prepare and write one volume; returns its index entry. Runs in a worker process."""
    return _write_one(Path(cache_dir), _compute_one(reader, volume_id, cache_hw, margin, source, fingerprint,
                                                     sources))


@dataclass
class _Survey:
    """What a cache folder holds for a build: usable entries, volumes to (re)build, volumes to drop."""

    indexed: set[int] = field(default_factory=set)
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    todo: dict[int, str] = field(default_factory=dict)  # volume -> why it is (re)built
    dropped: dict[int, str] = field(default_factory=dict)  # volume -> why it leaves the index

    @property
    def clean(self) -> bool:
        """Nothing to build, drop or index: the cache is usable as it is."""
        return not self.todo and not self.dropped and self.indexed == set(self.entries)


def _survey(cache: Path, ids: Sequence[int], source: str, settings: dict[str, Any], cache_hw: int | None,
            margin: int, fingerprint: Fingerprint | None = None) -> _Survey:
    """Check a cache folder against the volumes asked for, reading only the index, meta files and ``stat``s
    (and each asked volume's source fingerprint, when the reader has one: slices added or replaced).

    Raises:
        CacheError: a cache of another folder, other settings or another version.
        UnsafePathError: an index file name leading outside the cache folder.
    """
    survey = _Survey()
    indexed: dict[int, dict[str, Any]] = {}
    if (cache / INDEX_NAME).is_file():
        header = load_cache_index(cache)
        _check_settings(cache, header, settings)
        if header.get("source") != source:
            raise CacheError(f"cache {cache} was built from {header.get('source')}, not {source}; "
                             "delete it or choose another cache folder")
        indexed = {int(k): e for k, e in header["volumes"].items()}
        survey.indexed = set(indexed)
    asked = set(ids)
    for vid in sorted(asked | set(indexed)):
        entry = indexed.get(vid) or _read_entry(cache, vid)
        if entry is None:
            survey.todo[vid] = "not cached yet"
            continue
        if entry.get("source") != source:
            raise CacheError(f"cache {cache}: volume {vid} was cached from other data "
                             f"({entry.get('source')}); delete the folder or choose another one")
        if entry.get("cache_hw") != cache_hw or entry.get("margin") != margin:
            raise CacheError(f"cache {cache}: volume {vid} was cached with cache_hw={entry.get('cache_hw')}, "
                             f"margin={entry.get('margin')}, this build asks for cache_hw={cache_hw}, "
                             f"margin={margin}; delete the folder or choose another one")
        problem = volume_problem(cache, entry, source)
        if problem is None and fingerprint is not None and vid in asked \
                and entry.get("fingerprint") != fingerprint(vid):
            problem = ("changed", "source", "its fingerprint differs (slices added, removed or replaced)")
        if problem is None:
            survey.entries[vid] = entry
        elif problem[0] == "gone" and vid not in asked:
            survey.dropped[vid] = f"{problem[1]}: {problem[2]}"
        else:
            survey.todo[vid] = f"{problem[0]}: {problem[1]}: {problem[2]}"
    return survey


# --------------------------------------------------------------------------- build

def build_cache_from_reader(reader: Reader, volume_ids: Sequence[int], cache_dir: str | os.PathLike, *,
                            source: str, fingerprint: Fingerprint | None = None, reader_name: str = "custom",
                            source_files: SourceFiles | None = None, workers: int = 2,
                            cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                            stored_order: Sequence[str] | None = None) -> Path:
    """Cache volumes from any source given as ``reader(volume_id) -> (image, mask)``.

    Finished volumes whose records still match (``store.volume_problem``) are skipped, so an interrupted
    build is resumed by running it again; a finished, intact cache is returned without taking the lock or
    writing anything. Damaged volumes and volumes whose source files changed are rebuilt (one line on
    stderr each). Volumes already in the index and not asked for stay in it, unless their source files
    are gone: those are dropped.

    Args:
        reader: returns image (4, D, H, W) float and mask (3, D, H, W) uint8 for a volume id;
            must be picklable when ``workers > 1`` (a module-level function or a ``functools.partial``).
        volume_ids: the volumes to cache.
        cache_dir: output folder (created).
        source: the data folder, recorded in the index; a cache of another folder is refused.
        fingerprint: ``fingerprint(volume_id) -> str`` identifying the source content cheaply;
            None records no fingerprint.
        reader_name: recorded in the index (``kaggle``, ``nifti``, ...).
        source_files: ``source_files(volume_id) -> paths`` under ``source``; their sizes and times are
            recorded and re-checked on reuse. None: no source check.
        workers: processes working on volumes in parallel (1: in this process).
        cache_hw: largest in-plane size (zoom down when the data is bigger); None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        stored_order: the channel order of the source files the reader maps to the canonical order
            (Kaggle HDF5: the config's ``kaggle_channel_order``); None where the reader stacks the
            modalities itself (NIfTI). The index records it as ``stored_order`` beside
            ``channel_order`` (the cached images' order, always canonical).

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data, other settings, another stored channel
            order or another version; or something needs building and the folder is read-only (names the
            volume and file).
        FolderBusyError: another build holds the folder's lock (names its PID).
        UnsafePathError: an index file name that leads outside the cache folder.
        Exception: whatever the reader raises for bad input, unchanged.
    """
    from tumorlib.core.progress import tqdm
    from tumorlib.core.safety import folder_lock

    cache = Path(cache_dir).expanduser().resolve()
    ids = sorted(int(v) for v in volume_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"build_cache: duplicate volume ids in {ids}")
    settings = _settings(cache_hw, margin, reader_name)
    orders = order_record(stored_order)
    if stored_order is not None and (cache / INDEX_NAME).is_file():
        check_cache_order(cache, load_cache_index(cache), stored_order)
    if _survey(cache, ids, source, settings, cache_hw, margin, fingerprint).clean:
        return cache  # finished and intact: no lock, nothing written (works on a read-only folder)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(cache, "cache build"))
        except PermissionError as err:
            survey = _survey(cache, ids, source, settings, cache_hw, margin, fingerprint)
            first = next(iter({**survey.todo, **survey.dropped}.items()), None)
            what = f"volume {first[0]} needs rebuilding ({first[1]})" if first else "its index needs rewriting"
            raise CacheError(f"cache {cache}: {what}, but {err}; make it writable or use another cache "
                             f"folder") from err
        for tmp in [*cache.glob(".*.tmp*"), *cache.glob(".tmp-*")]:  # leftovers of killed builds
            tmp.unlink()
        survey = _survey(cache, ids, source, settings, cache_hw, margin, fingerprint)  # again, now that we hold the lock
        for vid, why in survey.todo.items():
            if not why.startswith("not cached"):
                print(f"cache {cache}: rebuilding volume {vid} ({why})", file=sys.stderr)
        for vid, why in survey.dropped.items():
            print(f"cache {cache}: volume {vid} dropped: its source is gone ({why})", file=sys.stderr)
            for name in (_image_name(vid), _mask_name(vid), _meta_name(vid)):
                (cache / name).unlink(missing_ok=True)
        todo = sorted(survey.todo)
        entries = dict(survey.entries)
        root = Path(source)
        fps = {vid: (fingerprint(vid) if fingerprint is not None else None) for vid in todo}
        srcs = {vid: (_source_records(root, source_files(vid)) if source_files is not None else None)
                for vid in todo}
        bar = tqdm(total=len(ids), initial=len(ids) - len([v for v in todo if v in set(ids)]), desc="cache",
                   unit="vol", disable=not progress)
        try:
            if workers <= 1 or len(todo) <= 1:
                for vid in todo:
                    entries[vid] = _cache_one(reader, vid, str(cache), cache_hw, margin, source, fps[vid], srcs[vid])
                    bar.update(1)
            else:
                ctx = multiprocessing.get_context()
                with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                    futures = {pool.submit(_cache_one, reader, vid, str(cache), cache_hw, margin, source,
                                           fps[vid], srcs[vid]): vid for vid in todo}
                    try:
                        for fut in concurrent.futures.as_completed(futures):
                            entries[futures[fut]] = fut.result()
                            bar.update(1)
                    except BaseException:
                        for fut in futures:
                            fut.cancel()
                        raise
        except KeyboardInterrupt as err:
            done = len([v for v in ids if v in entries])
            err.kept = (f"{done} of {len(ids)} volumes are finished in {cache} and kept; rerun the same command "
                        f"to build the rest")
            raise
        finally:
            bar.close()
        all_ids = sorted(entries)
        index = {"format": FORMAT_NAME, "version": CACHE_VERSION, "source": source,
                 "volume_ids": all_ids, **settings, **orders, "volumes": {str(v): entries[v] for v in all_ids}}
        text = _dump_index(index)
        index_path = cache / INDEX_NAME
        if not index_path.is_file() or index_path.read_text() != text:
            _atomic_write(index_path, lambda f: f.write(text), mode="w")
    return cache


def build_cache(data_dir: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 2,
                cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                volume_ids: Sequence[int] | None = None,
                stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> Path:
    """Cache a Kaggle-format BraTS2020 folder (HDF5 slices) as normalised, cropped ``.npy`` files.

    Args:
        data_dir: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.
        cache_dir: the output folder (created).
        workers: processes working on volumes in parallel.
        cache_hw: largest in-plane size (e.g. 128 on machines with little memory); None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        volume_ids: a subset of the volumes; None caches all of them.
        stored_order: the modality of each stored ``image`` channel (a config's
            ``kaggle_channel_order``); the cache holds the canonical order and records both.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data, other settings, another stored channel
            order or another version.
        ValueError, FileNotFoundError: the reader's errors for bad input, unchanged.
    """
    from tumorlib.io import kaggle
    from .fingerprints import kaggle_fingerprints, kaggle_source_files

    data = Path(data_dir).expanduser().resolve()
    ids = kaggle.list_volumes(data) if volume_ids is None else list(volume_ids)
    return build_cache_from_reader(
        functools.partial(kaggle.load_volume, data, stored_order=check_order(stored_order)), ids, cache_dir,
        source=str(data), fingerprint=kaggle_fingerprints(data), reader_name="kaggle",
        source_files=kaggle_source_files(data), workers=workers, cache_hw=cache_hw, margin=margin,
        progress=progress, stored_order=check_order(stored_order))


def ensure_cache(config: Config, ws: Workspace | None = None, progress: bool = True) -> Path:
    """The workspace's cache, built first when it is missing or incomplete.

    Args:
        config: a ``tumorlib.core.config.Config`` (``cache_hw``, ``cache_margin``, ``cache_workers``).
        ws: a ``Workspace``; None resolves ``workspace(config)``.
        progress: show tqdm bars.

    Returns:
        The cache folder (``ws.cache_dir``).

    Raises:
        CacheError: the folder holds a cache of other data or incompatible settings.
    """
    from tumorlib.core.config import workspace

    from tumorlib.data.embedded import ensure_data

    ws = ws if ws is not None else workspace(config)
    data = Path(ensure_data(config, progress=progress)).resolve()
    cache = Path(ws.cache_dir)
    if (cache / INDEX_NAME).is_file():
        index = load_cache_index(cache)
        _check_settings(cache, index, _settings(config.cache_hw, config.cache_margin, "kaggle"))
        check_cache_order(cache, index, config.kaggle_channel_order)
        if index.get("source") != str(data):
            raise CacheError(f"cache {cache} was built from {index.get('source')}, not {data}; delete it, "
                             "or set TUMORLIB_CACHE to another folder")
    # an intact finished cache is returned after a stat of its files; anything else is (re)built
    return build_cache(data, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                       margin=config.cache_margin, progress=progress, stored_order=config.kaggle_channel_order)
