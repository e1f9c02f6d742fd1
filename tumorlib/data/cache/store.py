"""The on-disk cache read back: the index, its checks, and the cached volumes (names: ``layout``).

A cache folder holds, per volume, ``v{id}_img.npy`` (4, D', H', W') float16, ``v{id}_mask.npy``
(3, D', H', W') uint8 and ``v{id}_meta.json`` (its index entry, written last: it marks the volume as
finished), and ``index.json``, written at the end of a build, with every entry plus the build settings
(``reader`` names the reader that built it, see ``readers.open_source``).

Each entry records what the cache trusts (``tumorlib.core.integrity`` file records): ``files``, the size and
checksum of its two ``.npy`` files, and ``sources``, the size and modification time of every source file
(relative to the data folder). ``volume_problem`` re-checks them with ``stat`` calls only; file names
read from an index are confined to the cache folder (``folders.inside``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tumorlib.core.brats import MODALITIES
from tumorlib.core.folders import inside, require_folder
from tumorlib.core.integrity import record_problem
from tumorlib.core.plausibility import check_plausible_image
from tumorlib.core.safety import UnsafePathError

from .preprocess import CACHE_VERSION

__all__ = [
    "FORMAT_NAME",
    "INDEX_NAME",
    "CacheError",
    "SourceStat",
    "cache_summary",
    "cached_volume_ids",
    "check_settings",
    "load_cache_index",
    "load_cached_volume",
    "verify_cache",
    "volume_problem",
]

INDEX_NAME = "index.json"
#: ``source_stat(name) -> (size, mtime_ns)`` of a source file by its recorded name, or None (unknown).
SourceStat = Callable[[str], "tuple[int, int] | None"]
FORMAT_NAME = "tumorlib-cache"


class CacheError(ValueError):
    """A cache folder that is missing, incomplete, made from other data or by another version."""


_ARRAY_NAME = re.compile(r"v(\d+)_(?:img|mask)\.npy")  # ``layout.image_name`` / ``layout.mask_name``


def _volume_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 62, key)


def _check_file_owners(path: Path, volumes: dict[str, Any]) -> None:
    """Refuse an index whose entries point two volumes at one file (or one volume's image and mask at one
    file), or a volume at the arrays of another volume (``v{other}_img.npy``).

    Names are compared after ``os.path.normpath`` (``./v1_img.npy`` is ``v1_img.npy``).

    Raises:
        CacheError: names the index, both volumes and the file.
    """
    owners: dict[str, str] = {}
    keys = sorted((k for k in volumes if isinstance(volumes[k], dict)), key=_volume_order)
    for key in keys:
        names = [volumes[key].get(k) for k in ("image_file", "mask_file")]
        names = [os.path.normpath(n) for n in names if isinstance(n, str)]
        if len(names) == 2 and names[0] == names[1]:
            raise CacheError(f"{path}: volume {key} points at {names[0]} twice (as image and as mask); delete "
                             "the cache and build it again")
        for name in names:
            if name in owners:
                raise CacheError(f"{path}: volumes {owners[name]} and {key} both point at {name}; delete the "
                                 "cache and build it again")
            owners[name] = key
    for name, key in owners.items():
        match = _ARRAY_NAME.fullmatch(name)
        if match and _volume_order(match.group(1))[0] != _volume_order(key)[0]:
            raise CacheError(f"{path}: volume {key} points at {name}, the file of volume {int(match.group(1))}; "
                             "delete the cache and build it again")


def _npy_size_problem(path: Path) -> str | None:
    """For a cache file without a record: is its size the one its ``.npy`` header promises?"""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as err:
        return f"not a readable .npy file ({err})"
    size = path.stat().st_size
    return None if size == expected else f"size {size} != {expected} from its header (truncated)"


def volume_problem(cache: str | os.PathLike, entry: dict[str, Any], source: str | os.PathLike | None = None,
                   source_stat: SourceStat | None = None) -> tuple[str, str, str] | None:
    """What is wrong with a finished volume of a cache, checked with ``stat`` calls only.

    Args:
        cache: the cache folder.
        entry: the volume's index entry (``image_file``, ``mask_file``, ``files``, ``sources``).
        source: the data folder its ``sources`` are relative to; None skips the source check.
        source_stat: ``source_stat(name) -> (size, mtime_ns)`` of a source file by its recorded name, from
            one scan of the folder (``fingerprints.KaggleScan.stat``); None where it does not know the
            file, which is then ``stat``ed. None: every source file is ``stat``ed.

    Returns:
        None when the volume can be used, else ``(kind, file, reason)``: kind ``"damaged"`` (a cache
        file missing or of another size than recorded; without records, as an older tumorlib wrote them,
        than its ``.npy`` header promises), ``"changed"`` (a source file modified since it was
        cached) or ``"gone"`` (a source file no longer there).

    Raises:
        UnsafePathError: a file name in the entry that leads outside its folder.
    """
    cache = Path(cache)
    names = [entry.get("image_file"), entry.get("mask_file")]
    paths = [inside(cache, n) for n in names]
    records = entry.get("files")
    if not isinstance(records, dict) or set(records) != set(names):  # cached by an older tumorlib
        for path in paths:
            problem = _npy_size_problem(path)
            if problem is not None:
                return "damaged", str(path), problem
        return None
    for name, path in zip(names, paths):
        problem = record_problem(path, records[name], mtime=False)
        if problem is not None:
            return "damaged", str(path), problem
    if source is not None:
        return _sources_problem(cache, entry.get("sources") or {}, source, source_stat)
    return None


def _sources_problem(cache: Path, records: dict[str, Any], source: str | os.PathLike,
                     source_stat: SourceStat | None) -> tuple[str, str, str] | None:
    """``volume_problem``'s check of the source files (names confined to ``source``)."""
    for name, record in records.items():
        if not isinstance(name, str) or os.path.isabs(name) or (".." in name and ".." in name.split("/")):
            raise UnsafePathError(f"{cache}: index source name {name!r} points outside {source}")
        if source_stat is not None and isinstance(record, dict):
            known = source_stat(name)
            if known is not None and known[0] == record.get("size") and known[1] == record.get("mtime_ns"):
                continue
        path = os.path.join(source, name)
        problem = record_problem(path, record, mtime=True)
        if problem is not None:
            return ("gone" if problem == "missing" else "changed"), path, problem
    return None


def verify_cache(cache_dir: str | os.PathLike, sources: bool = True) -> dict[str, Any]:
    """Check a finished cache before it is used as it is (no data folder given): its index and files.

    Args:
        cache_dir: the cache folder.
        sources: also check the recorded source files when the index's source folder exists.

    Returns:
        The index (``load_cache_index``).

    Raises:
        CacheError: no usable index, or a damaged volume (names the file and how to rebuild).
        UnsafePathError: an index file name that leads outside the cache folder.
    """
    cache = Path(cache_dir)
    index = load_cache_index(cache)
    source = index.get("source")
    check_sources = sources and source is not None and Path(source).is_dir()
    for key in sorted(index["volumes"], key=int):
        problem = volume_problem(cache, index["volumes"][key], source if check_sources else None)
        if problem is not None:
            kind, path, reason = problem
            raise CacheError(f"cache {cache}: volume {key} is {kind if kind != 'gone' else 'no longer in the data'} "
                             f"({path}: {reason}); rebuild it with `tumorlib cache --data {source} --out {cache}`")
    return index


def check_settings(cache: Path, header: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse a cache whose index ``header`` differs from ``settings`` (``layout.build_settings``).

    Raises:
        CacheError: names the first key that differs, both values and the folder.
    """
    for key, value in settings.items():
        if header.get(key) != value:
            raise CacheError(f"cache {cache} was built with {key}={header.get(key)!r}, this build asks for "
                             f"{key}={value!r}; delete the folder or choose another cache folder")


def load_cache_index(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``index.json`` of a cache folder.

    Args:
        cache_dir: the cache folder.

    Returns:
        The index: header keys (``format``, ``version``, ``source``, ``reader``, ``cache_hw``,
        ``margin``, ``volume_ids``, ...) and ``volumes``, a dict from ``str(volume_id)`` to its entry.

    Raises:
        CacheError: no index (an unfinished build), not a tumorlib cache, another format version, volumes
            that are not an object of numbered entries, a volume entry whose shape is not three positive
            integers, or entries pointing two volumes at one file or a volume at another volume's arrays
            (names both volumes).
    """
    cache = Path(cache_dir)
    path = cache / INDEX_NAME
    if cache.exists():
        require_folder(cache, "cache folder")
    if not path.is_file():
        hint = " (an unfinished build: run it again)" if any(cache.glob("v*_meta.json")) else ""
        raise CacheError(f"no cache index at {path}{hint}; build it with `tumorlib cache --data DIR --out {cache}`")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: not valid JSON ({err}); delete the cache and build it again") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise CacheError(f"{path} is not a tumorlib cache index")
    if index.get("version") != CACHE_VERSION:
        raise CacheError(f"{path} has cache format version {index.get('version')}, this tumorlib reads "
                         f"version {CACHE_VERSION}; delete the folder and build the cache again")
    volumes = index.get("volumes")
    if not isinstance(volumes, dict):
        raise CacheError(f"{path}: 'volumes' is {type(volumes).__name__} {volumes!r:.40}, not an object from "
                         "volume id to entry; delete the cache and build it again")
    for key, entry in volumes.items():
        if not (key.isascii() and key.isdigit()):
            raise CacheError(f"{path}: volume id {key!r} is not a number; delete the cache and build it again")
        if not isinstance(entry, dict):
            raise CacheError(f"{path}: volume {key}'s entry is {type(entry).__name__}, not an object; delete the "
                             "cache and build it again")
        shape = entry.get("shape")
        if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
            raise CacheError(f"{path}: volume {key} has shape {shape!r}, not three positive integers; delete "
                             "the cache and build it again")
    _check_file_owners(path, volumes)
    return index


def cached_volume_ids(cache_dir: str | os.PathLike) -> list[int]:
    """The volume ids in a cache's index, sorted.

    Raises:
        CacheError: see ``load_cache_index``.
    """
    return sorted(int(k) for k in load_cache_index(cache_dir)["volumes"])


def _entry(cache: Path, index: dict[str, Any], volume_id: int) -> dict[str, Any]:
    entry = index["volumes"].get(str(int(volume_id)))
    if entry is None:
        raise KeyError(f"volume {volume_id} is not in the cache {cache} "
                       f"(it holds {len(index['volumes'])} volumes)")
    return entry


def load_cached_volume(cache_dir: str | os.PathLike, volume_id: int, mmap: bool = True,
                       index: dict[str, Any] | None = None, check: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One cached volume.

    Args:
        cache_dir: the cache folder.
        volume_id: the volume.
        mmap: memory-map the files (read-only) instead of reading them into memory.
        index: the loaded index, to skip reading it again.
        check: refuse an image that cannot be a scan (``tumorlib.core.plausibility``): for a volume about
            to be segmented whole, which reads every voxel anyway; patch sampling leaves it off (a memory
            map stays unread). Caches built before the check, or edited, may hold such volumes.

    Returns:
        image: (4, D', H', W') float16, z-scored, 0 outside the brain.
        mask: (3, D', H', W') uint8.

    Raises:
        KeyError: a volume not in the cache.
        CacheError: files missing or not matching the index (names the file).
        UnsafePathError: a file name in the index that leads outside the cache folder.
        ImplausibleImageError: with ``check``, an all-zero, constant, non-finite or copied channel (names the
            cache, the volume and the channel).
    """
    cache = Path(cache_dir)
    index = index if index is not None else load_cache_index(cache)
    entry = _entry(cache, index, volume_id)
    mode = "r" if mmap else None
    arrays = []
    for key, channels, dtype in (("image_file", 4, np.float16), ("mask_file", 3, np.uint8)):
        path = inside(cache, entry[key])
        try:
            arr = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheError(f"cannot read {path}: {err}") from err
        expected = (channels,) + tuple(entry["shape"])
        if arr.shape != expected or arr.dtype != dtype:
            raise CacheError(f"{path} holds {arr.dtype} {arr.shape}, the index says {np.dtype(dtype)} "
                             f"{expected}; the cache does not match its index: rebuild it")
        arrays.append(arr)
    if check:
        names = MODALITIES if arrays[0].shape[:1] == (len(MODALITIES),) else None  # custom readers: other counts
        check_plausible_image(arrays[0], f"cache {cache}: volume {volume_id}", channels=names)
    return arrays[0], arrays[1]


def cache_summary(cache_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Any:
    """One row per cached volume: shapes, share of voxels kept by the crop, class voxels, sizes.

    Args:
        cache_dir: the cache folder.
        data_dir: the Kaggle-format source; when given, adds the size of each volume's HDF5 slices.

    Returns:
        A ``pandas.DataFrame`` indexed by volume with columns ``source_shape``, ``cached_shape``,
        ``kept_fraction`` (cached voxels / source voxels), ``brain_voxels``, ``necrosis``, ``edema``,
        ``enhancing`` (voxel counts in the cache), ``npy_mib`` and, with ``data_dir``, ``h5_mib``.

    Raises:
        CacheError: see ``load_cache_index``.
    """
    import pandas as pd

    cache = Path(cache_dir)
    index = load_cache_index(cache)
    slices = None
    if data_dir is not None:
        from tumorlib.io import kaggle

        slices = kaggle.find_slices(data_dir)
    rows = []
    for key in sorted(index["volumes"], key=int):
        e = index["volumes"][key]
        counts = e.get("class_voxels", [None, None, None])
        row = {
            "volume": int(key),
            "source_shape": "x".join(map(str, e["source_shape"])),
            "cached_shape": "x".join(map(str, e["shape"])),
            "kept_fraction": round(float(np.prod(e["shape"]) / np.prod(e["source_shape"])), 3),
            "brain_voxels": e["brain_voxels"],
            "necrosis": counts[0],
            "edema": counts[1],
            "enhancing": counts[2],
            "npy_mib": round(sum((cache / e[k]).stat().st_size for k in ("image_file", "mask_file")) / 2**20, 2),
        }
        if slices is not None:
            files = slices.get(int(key), {}).values()
            row["h5_mib"] = round(sum(f.stat().st_size for f in files) / 2**20, 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("volume")
