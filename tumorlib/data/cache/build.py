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
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorlib.core.brats import KAGGLE_STORED_ORDER, MODALITIES, check_order
from tumorlib.core.device import process_context
from tumorlib.core.folders import require_folder
from tumorlib.core.plausibility import check_plausible_image
from tumorlib.core.safety import atomic_open, atomic_write

from .layout import (build_settings, dump_entry, dump_index, image_name, mask_name, meta_name, output_records,
                     read_entry, source_records)
from .normalise import cast_into, single_thread_torch, slab_ranges, zscore_slabs
from .preprocess import CACHE_VERSION, VolumePlan, resample_and_plan
from .readers import check_cache_order, order_record, volume_order_problem
from .store import FORMAT_NAME, INDEX_NAME, CacheError, SourceStat, check_settings, load_cache_index, volume_problem

__all__ = ["Fingerprint", "Reader", "SourceFiles", "build_cache", "build_cache_from_reader"]

Reader = Callable[[int], tuple[np.ndarray, np.ndarray]]
Fingerprint = Callable[[int], str]
SourceFiles = Callable[[int], Sequence[Path]]


def _compute_one(reader: Reader, volume_id: int, cache_hw: int | None, margin: int, source: str,
                 fingerprint: str | None, sources: dict[str, Any] | None = None,
                 stored_order: list[str] | None = None) -> VolumePlan:
    """Read, check (``check_plausible_image``, whatever the reader) and plan one volume (crop, moments,
    index entry); the z-scoring happens while writing."""
    image, mask = reader(volume_id)
    check_plausible_image(image, f"volume {volume_id} ({source})",
                          channels=MODALITIES if np.shape(image)[:1] == (len(MODALITIES),) else None)
    plan = resample_and_plan(image, mask, cache_hw, margin, volume_id)
    plan.entry = {"volume": int(volume_id), "source": source, "fingerprint": fingerprint, "cache_hw": cache_hw,
                  "margin": int(margin), "image_file": image_name(volume_id), "mask_file": mask_name(volume_id),
                  **({"sources": sources} if sources is not None else {}),
                  **({"stored_order": stored_order} if stored_order is not None else {}), **plan.entry}
    return plan


def _stream_image(f: Any, plan: VolumePlan) -> None:
    """Write the z-scored float16 image as ``.npy`` slab by slab (same bytes as ``np.save`` of
    ``prepare_volume``'s image, without holding the whole float16 volume in memory)."""
    shape = (plan.image.shape[0],) + tuple(plan.entry["shape"])
    np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
    out = None
    with single_thread_torch():
        for _, _, w in zscore_slabs(plan.image, plan.brain, plan.mean, plan.std, background_zero=True):
            if out is None or out.shape[0] < w.shape[0]:
                out = np.empty(w.shape, np.float16)
            o = out[: w.shape[0]]
            cast_into(o, w)
            f.write(memoryview(o).cast("B"))


def _stream_mask(f: Any, plan: VolumePlan) -> None:
    """Write the cropped uint8 mask as ``.npy`` slab by slab (same bytes as ``np.save``)."""
    m = plan.mask
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": m.shape})
    slabs = slab_ranges(m.shape[1:])
    buf = np.empty(((slabs[0].stop - slabs[0].start) if slabs else 0,) + m.shape[2:], np.uint8)
    for k in range(m.shape[0]):
        for sl in slabs:
            b = buf[: sl.stop - sl.start]
            np.copyto(b, m[k, sl], casting="unsafe")
            f.write(memoryview(b).cast("B"))


def _write_one(cache: Path, plan: VolumePlan) -> dict[str, Any]:
    """Write a planned volume: image, mask, then the meta file that marks it finished."""
    volume_id = plan.entry["volume"]
    with atomic_open(cache / image_name(volume_id)) as f:
        _stream_image(f, plan)
    with atomic_open(cache / mask_name(volume_id)) as f:
        _stream_mask(f, plan)
    plan.entry["files"] = output_records(cache, [image_name(volume_id), mask_name(volume_id)])
    atomic_write(cache / meta_name(volume_id), dump_entry(plan.entry) + "\n")
    return plan.entry


def _cache_one(reader: Reader, volume_id: int, cache_dir: str, cache_hw: int | None, margin: int,
               source: str, fingerprint: str | None, sources: dict[str, Any] | None = None,
               stored_order: list[str] | None = None) -> dict[str, Any]:
    """Read, prepare and write one volume; returns its index entry. Runs in a worker process."""
    return _write_one(Path(cache_dir), _compute_one(reader, volume_id, cache_hw, margin, source, fingerprint,
                                                     sources, stored_order))


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
            margin: int, fingerprint: Fingerprint | None = None, source_stat: SourceStat | None = None,
            stored_order: list[str] | None = None) -> _Survey:
    """Check a cache folder against the volumes asked for, reading only the index, meta files and ``stat``s
    (and each asked volume's source fingerprint, when the reader has one: slices added or replaced).

    Raises:
        CacheError: a cache of another folder, other settings, another version, or a volume read with
            another stored channel order than ``stored_order``.
        UnsafePathError: an index file name leading outside the cache folder.
    """
    survey = _Survey()
    indexed: dict[int, dict[str, Any]] = {}
    if (cache / INDEX_NAME).is_file():
        header = load_cache_index(cache)
        check_settings(cache, header, settings)
        if header.get("source") != source:
            raise CacheError(f"cache {cache} was built from {header.get('source')}, not {source}; "
                             "delete it or choose another cache folder")
        indexed = {int(k): e for k, e in header["volumes"].items()}
        survey.indexed = set(indexed)
    asked = set(ids)
    for vid in sorted(asked | set(indexed)):
        entry = indexed.get(vid) or read_entry(cache, vid)
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
        problem = volume_order_problem(cache, vid, entry, stored_order, indexed.get(vid) is entry)
        problem = problem or volume_problem(cache, entry, source, source_stat)
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
                            stored_order: Sequence[str] | None = None,
                            source_stat: SourceStat | None = None, source_record: dict[str, Any] | None = None,
                            ) -> Path:
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
            ``channel_order`` (the cached images' order, always canonical), and so does each volume's
            entry: a volume of an interrupted build read with another order is refused, not mixed in.
        source_stat: ``source_stat(name) -> (size, mtime_ns)`` of a source file from one scan of
            ``source`` (``fingerprints.KaggleScan.stat``), so the reuse check does not ``stat`` each file
            again; None: each is ``stat``ed.
        source_record: more index keys describing the source (NIfTI: ``layout``, ``label_convention``).

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data, other settings, another stored channel
            order or another version; or something needs building and the folder is read-only (names the
            volume and file).
        FolderBusyError: another build holds the folder's lock (names its PID).
        UnsafePathError: an index file name that leads outside the cache folder.
        ImplausibleImageError: a volume the reader returned that cannot be a scan (all zero, constant,
            NaN/inf, identical channels, not intensities; ``tumorlib.core.plausibility``): nothing of it is
            written.
        Exception: whatever the reader raises for bad input, unchanged.
    """
    cache = Path(cache_dir).expanduser().resolve()
    if cache.exists():
        require_folder(cache, "cache folder")
    ids = sorted(int(v) for v in volume_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"build_cache: duplicate volume ids in {ids}")
    settings = build_settings(cache_hw, margin, reader_name)
    orders = order_record(stored_order)
    if stored_order is not None and (cache / INDEX_NAME).is_file():
        check_cache_order(cache, load_cache_index(cache), stored_order)
    order = None if stored_order is None else list(check_order(stored_order))
    job = _Job(reader, cache, source, cache_hw, margin, fingerprint, source_files, source_stat, order)
    if job.survey(ids, settings).clean:
        return cache  # finished and intact: no lock, nothing written (works on a read-only folder)
    with contextlib.ExitStack() as stack:
        _take_lock(stack, job, ids, settings)
        survey = job.survey(ids, settings)  # again, now that we hold the lock
        _clear_folder(cache, survey)
        entries = {**survey.entries, **_build_volumes(job, ids, sorted(survey.todo), workers, progress)}
        _write_index(cache, source, {**settings, **orders, **(source_record or {})}, entries)
    return cache


@dataclass
class _Job:
    """What every volume of one build shares: the reader, the folders, the settings, the source checks."""

    reader: Reader
    cache: Path
    source: str
    cache_hw: int | None
    margin: int
    fingerprint: Fingerprint | None
    source_files: SourceFiles | None
    source_stat: SourceStat | None = None
    stored_order: list[str] | None = None

    def survey(self, ids: Sequence[int], settings: dict[str, Any]) -> _Survey:
        """``_survey`` of the cache folder for ``ids``."""
        return _survey(self.cache, ids, self.source, settings, self.cache_hw, self.margin, self.fingerprint,
                       self.source_stat, self.stored_order)

    def args(self, vid: int) -> tuple[Any, ...]:
        """The arguments of ``_cache_one`` for volume ``vid`` (its fingerprint and source records now)."""
        fp = self.fingerprint(vid) if self.fingerprint is not None else None
        srcs = source_records(Path(self.source), self.source_files(vid)) if self.source_files is not None else None
        return (self.reader, vid, str(self.cache), self.cache_hw, self.margin, self.source, fp, srcs,
                self.stored_order)


def _take_lock(stack: contextlib.ExitStack, job: _Job, ids: Sequence[int], settings: dict[str, Any]) -> None:
    """Hold the folder's writer lock in ``stack``; a read-only folder that needs work is one CacheError."""
    from tumorlib.core.safety import folder_lock

    try:
        stack.enter_context(folder_lock(job.cache, "cache build"))
    except PermissionError as err:
        survey = job.survey(ids, settings)
        first = next(iter({**survey.todo, **survey.dropped}.items()), None)
        what = f"volume {first[0]} needs rebuilding ({first[1]})" if first else "its index needs rewriting"
        raise CacheError(f"cache {job.cache}: {what}, but {err}; make it writable or use another cache "
                         f"folder") from err


def _clear_folder(cache: Path, survey: _Survey) -> None:
    """Remove leftovers of killed builds and the files of dropped volumes; say what is rebuilt or dropped."""
    for tmp in [*cache.glob(".*.tmp*"), *cache.glob(".tmp-*")]:  # leftovers of killed builds
        tmp.unlink()
    for vid, why in survey.todo.items():
        if not why.startswith("not cached"):
            print(f"cache {cache}: rebuilding volume {vid} ({why})", file=sys.stderr)
    for vid, why in survey.dropped.items():
        print(f"cache {cache}: volume {vid} dropped: its source is gone ({why})", file=sys.stderr)
        for name in (image_name(vid), mask_name(vid), meta_name(vid)):
            (cache / name).unlink(missing_ok=True)


def _build_volumes(job: _Job, ids: Sequence[int], todo: Sequence[int], workers: int,
                   progress: bool) -> dict[int, dict[str, Any]]:
    """Cache the ``todo`` volumes (in ``workers`` processes); their entries by id.

    Raises:
        KeyboardInterrupt: with ``kept`` saying how many volumes are finished and kept.
    """
    from tumorlib.core.progress import tqdm

    entries: dict[int, dict[str, Any]] = {}
    args = {vid: job.args(vid) for vid in todo}
    asked = set(ids)
    bar = tqdm(total=len(ids), initial=len(ids) - len([v for v in todo if v in asked]), desc="cache",
               unit="vol", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for vid in todo:
                entries[vid] = _cache_one(*args[vid])
                bar.update(1)
        else:
            ctx = process_context()  # never a fork of a process running OpenVINO's thread pool
            with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                futures = {pool.submit(_cache_one, *args[vid]): vid for vid in todo}
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        entries[futures[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    except KeyboardInterrupt as err:
        done = len([v for v in ids if v in entries or v not in todo])
        err.kept = (f"{done} of {len(ids)} volumes are finished in {job.cache} and kept; rerun the same command "
                    f"to build the rest")
        raise
    finally:
        bar.close()
    return entries


def _write_index(cache: Path, source: str, settings: dict[str, Any], entries: dict[int, dict[str, Any]]) -> None:
    """Write ``index.json`` over every entry (only when its text changes: a reused cache stays untouched)."""
    all_ids = sorted(entries)
    index = {"format": FORMAT_NAME, "version": CACHE_VERSION, "source": source,
             "volume_ids": all_ids, **settings, "volumes": {str(v): entries[v] for v in all_ids}}
    text = dump_index(index)
    index_path = cache / INDEX_NAME
    if not index_path.is_file() or index_path.read_text() != text:
        atomic_write(index_path, text)


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
    from .fingerprints import KaggleScan

    data = Path(data_dir).expanduser().resolve()
    scan = KaggleScan(data)  # one walk with one stat per slice file answers the whole reuse check
    ids = (scan.ids() or kaggle.list_volumes(data)) if volume_ids is None else list(volume_ids)
    return build_cache_from_reader(
        functools.partial(kaggle.load_volume, data, stored_order=check_order(stored_order)), ids, cache_dir,
        source=str(data), fingerprint=scan.fingerprint, reader_name="kaggle", source_files=scan.source_files,
        workers=workers, cache_hw=cache_hw, margin=margin, progress=progress,
        stored_order=check_order(stored_order), source_stat=scan.stat)
