"""Kaggle-specific parts of the cache: cheap content fingerprints of a volume's HDF5 slices.

A cache records each volume's fingerprint, and the size and time of each of its slice files
(``kaggle_source_files``), so data changed since it was cached is noticed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["KaggleScan", "fingerprint_of", "kaggle_fingerprint", "kaggle_fingerprints", "kaggle_source_files"]


def kaggle_fingerprint(slice_files: Sequence[str | os.PathLike]) -> str:
    """A cheap content fingerprint of one Kaggle volume: slice names and sizes, bytes of the middle slice.

    Args:
        slice_files: the volume's ``volume_{id}_slice_{s}.h5`` files in slice order.

    Returns:
        A hex digest; regenerating identical data gives the same digest.
    """
    files = [Path(f) for f in slice_files]
    return fingerprint_of([(str(f), f.stat().st_size) for f in files])


def fingerprint_of(files: Sequence[tuple[str, int]]) -> str:
    """``kaggle_fingerprint`` from ``(path, size)`` pairs already known (e.g. from ``scan_slices``).

    Args:
        files: the volume's slice files in slice order, each with its size in bytes.

    Returns:
        The same hex digest as ``kaggle_fingerprint`` of those files.
    """
    h = hashlib.sha1()
    for path, size in files:
        h.update(f"{os.path.basename(path)}:{size};".encode())
    if files:  # 64 KiB from the middle of the middle slice: image data, which any other volume changes
        middle, size = files[len(files) // 2]
        with open(middle, "rb") as fh:
            fh.seek(max(0, size // 2 - 32768))
            h.update(fh.read(65536))
    return h.hexdigest()


def _lazy_slices(data: str | os.PathLike) -> Callable[[int], dict[int, Path]]:
    """``slices(volume_id) -> {slice: path}`` over one scan of ``data``, made on the first call."""
    from tumorlib.io import kaggle

    found: dict[int, dict[int, Path]] = {}

    def slices(volume_id: int) -> dict[int, Path]:
        if not found:
            found.update(kaggle.find_slices(data))
        return found.get(int(volume_id), {})

    return slices


def kaggle_fingerprints(data: str | os.PathLike) -> Callable[[int], str]:
    """``fingerprint(volume_id)`` over one scan of a Kaggle-format folder (made on the first call).

    Args:
        data: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.

    Returns:
        ``fingerprint(volume_id) -> str`` (``kaggle_fingerprint`` of its slices; unknown ids give the
        digest of no files).
    """
    slices = _lazy_slices(data)

    def fingerprint(volume_id: int) -> str:
        found = slices(volume_id)
        return kaggle_fingerprint([found[s] for s in sorted(found)])

    return fingerprint


def kaggle_source_files(data: str | os.PathLike) -> Callable[[int], list[Path]]:
    """``source_files(volume_id)``: the volume's slice files in slice order, over one scan of ``data``
    (made on the first call).

    Args:
        data: a folder holding (anywhere below it) ``volume_{id}_slice_{s}.h5``.

    Returns:
        ``source_files(volume_id) -> [Path, ...]`` (empty for unknown ids).
    """
    slices = _lazy_slices(data)

    def source_files(volume_id: int) -> list[Path]:
        found = slices(volume_id)
        return [Path(found[s]) for s in sorted(found)]

    return source_files


class KaggleScan:
    """One scan of a Kaggle folder (made on first use) answering every question of the reuse check.

    The volumes, each volume's fingerprint and the size and time of each slice file all come from one
    ``scan_slices`` walk with one ``stat`` per file; only the middle slice of each volume is opened.
    """

    def __init__(self, data: str | os.PathLike) -> None:
        self.root = Path(data)
        self._found: dict[int, dict[int, tuple[str, int | None, int | None]]] | None = None
        self._stats: dict[str, tuple[int | None, int | None]] = {}

    def _slices(self) -> dict[int, dict[int, tuple[str, int | None, int | None]]]:
        if self._found is None:
            from tumorlib.io.kaggle_scan import scan_slices

            self._found = scan_slices(self.root, stat=True)
            prefix = len(os.fspath(self.root).rstrip(os.sep)) + 1
            self._stats = {p[prefix:].replace(os.sep, "/"): (size, mtime)
                           for slices in self._found.values() for p, size, mtime in slices.values()}
        return self._found

    def ids(self) -> list[int]:
        """The volume ids found, sorted."""
        return sorted(self._slices())

    def fingerprint(self, volume_id: int) -> str:
        """``kaggle_fingerprint`` of the volume's slices (sizes from the scan)."""
        found = self._slices().get(int(volume_id), {})
        rows = [found[s] for s in sorted(found)]
        if any(size is None for _, size, _ in rows):  # the scan could not stat a file: ask it again
            return kaggle_fingerprint([p for p, _, _ in rows])
        return fingerprint_of([(p, size) for p, size, _ in rows])

    def source_files(self, volume_id: int) -> list[Path]:
        """The volume's slice files in slice order (empty for unknown ids)."""
        found = self._slices().get(int(volume_id), {})
        return [Path(found[s][0]) for s in sorted(found)]

    def stat(self, name: str) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of a slice file by its name relative to the folder; None when the scan did
        not see it (or could not stat it): the caller then stats the file itself."""
        if self._found is None:
            self._slices()
        got = self._stats.get(name)
        return None if got is None or got[0] is None else got  # type: ignore[return-value]
