"""NIfTI-specific parts of the cache: a case's fingerprint and the cache build from a folder of cases.

The cases are read by ``tumorlib.io.nifti.load_nifti_volume``; the cache records each case's fingerprint
(``nifti_fingerprint``) and the size and time of each of its files, so a case changed since it was
cached is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from tumorlib.io.nifti import NIFTI_EXTENSIONS, find_nifti_file, list_nifti_cases, load_nifti_volume

from .build import build_cache_from_reader

__all__ = ["build_nifti_cache", "nifti_fingerprint"]


def nifti_fingerprint(root: str | os.PathLike, volume_id: int) -> str:
    """A cheap content fingerprint of one case: file names, sizes and the FLAIR file's bytes.

    Args:
        root: the folder above the case folders.
        volume_id: the case's number.

    Returns:
        A hex digest.
    """
    case = list_nifti_cases(root)[int(volume_id)]
    h = hashlib.sha1()
    for f in sorted(case.iterdir()):
        if f.is_file() and f.name.endswith(NIFTI_EXTENSIONS):
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    flair = find_nifti_file(case, "flair")
    if flair is not None:
        h.update(flair.read_bytes())
    return h.hexdigest()


def build_nifti_cache(root: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 2,
                      cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                      volume_ids: Sequence[int] | None = None) -> Path:
    """Cache a folder of labelled BraTS NIfTI cases exactly like the Kaggle data.

    Args:
        root: the folder above the case folders.
        cache_dir: the output folder (created).
        workers: processes working on volumes in parallel.
        cache_hw: largest in-plane size; None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        volume_ids: a subset of the cases; None caches all of them.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data or settings.
        FileNotFoundError, KeyError, ValueError: bad cases (see ``load_nifti_volume``).
    """
    data = Path(root).expanduser().resolve()
    cases = list_nifti_cases(data)
    ids = list(cases) if volume_ids is None else [int(v) for v in volume_ids]
    def files(vid: int) -> list[Path]:  # the case's files: their sizes and times go into the index
        return sorted(f for f in cases[vid].iterdir() if f.is_file() and f.name.endswith(NIFTI_EXTENSIONS))

    return build_cache_from_reader(
        functools.partial(load_nifti_volume, data), ids, cache_dir, source=str(data),
        fingerprint=functools.partial(nifti_fingerprint, data), reader_name="nifti", source_files=files,
        workers=workers, cache_hw=cache_hw, margin=margin, progress=progress)
