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

from tumorlib.io.layouts import LAYOUT_CONVENTIONS, detect_layout
from tumorlib.io.nifti import list_nifti_cases, load_nifti_volume

from .build import build_cache_from_reader

__all__ = ["build_nifti_cache", "nifti_fingerprint"]


def nifti_fingerprint(root: str | os.PathLike, volume_id: int, layout: str | None = None) -> str:
    """A cheap content fingerprint of one case: file names, sizes and the FLAIR file's bytes (an msd case's
    4-D file).

    Args:
        root: the folder above the case folders.
        volume_id: the case's number.
        layout: the folder's layout (``tumorlib.io.layouts``); None: detected.

    Returns:
        A hex digest.
    """
    case = list_nifti_cases(root, layout)[int(volume_id)]
    h = hashlib.sha1()
    for f in sorted(case.files):
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    h.update(case.images[-1].read_bytes())
    return h.hexdigest()


def build_nifti_cache(root: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 2,
                      cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                      volume_ids: Sequence[int] | None = None, layout: str | None = None) -> Path:
    """Cache a folder of labelled NIfTI cases of any layout exactly like the Kaggle data.

    The index records ``layout`` (brats2020, brats2021, brats2023, msd) and ``label_convention`` (the
    labels the segmentations were read in, ``tumorlib.core.label_conventions``).

    Args:
        root: the folder above the case folders.
        cache_dir: the output folder (created).
        workers: processes working on volumes in parallel.
        cache_hw: largest in-plane size; None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        volume_ids: a subset of the cases; None caches all of them.
        layout: the folder's layout; None: detected from the file names (``detect_layout``).

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data or settings.
        FileNotFoundError, KeyError, ValueError: bad cases (see ``load_nifti_volume``).
    """
    data = Path(root).expanduser().resolve()
    layout = detect_layout(data) if layout is None else layout
    cases = list_nifti_cases(data, layout)
    ids = list(cases) if volume_ids is None else [int(v) for v in volume_ids]
    def files(vid: int) -> list[Path]:  # the case's files: their sizes and times go into the index
        return sorted(cases[vid].files)

    return build_cache_from_reader(
        functools.partial(load_nifti_volume, data, layout=layout), ids, cache_dir, source=str(data),
        fingerprint=functools.partial(nifti_fingerprint, data, layout=layout), reader_name="nifti",
        source_files=files, workers=workers, cache_hw=cache_hw, margin=margin, progress=progress,
        source_record={"layout": layout, "label_convention": LAYOUT_CONVENTIONS[layout]})
