"""Finding the Kaggle BraTS2020 slice files (``volume_{id}_slice_{s}.h5``) below any folder.

``find_slices`` maps volumes to their slice paths; ``scan_slices`` does the same walk returning path
strings and, on request, each file's size and time from its directory entry (the cache's reuse check
runs it over the ~57k files of the full pack without building a ``Path`` or calling ``stat`` twice).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from tumorlib.core.folders import require_folder

__all__ = ["SLICE_RE", "find_slices", "scan_slices"]

#: A slice file's name: volume id and slice index.
SLICE_RE = re.compile(r"^volume_(\d+)_slice_(\d+)\.h5$")
_LOOSE_RE = re.compile(r"^volume_.*_slice_.*\.h5$", re.IGNORECASE)


def scan_slices(root: str | os.PathLike, stat: bool = False) -> dict[int, dict[int, tuple[str, int | None, int | None]]]:
    """Every ``volume_{id}_slice_{s}.h5`` below ``root``, as path strings, with their size and time.

    One ``os.scandir`` walk (symlinked folders are not followed, as ``os.walk``); with ``stat`` each
    file's size and modification time come from its directory entry (one ``stat`` each, no ``Path``).

    Args:
        root: any folder above the slice files.
        stat: also read each file's size and ``st_mtime_ns`` (None where the stat fails).

    Returns:
        ``{volume_id: {slice_index: (path, size, mtime_ns)}}`` (size and time None without ``stat``).

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` does not exist, or is a file.
        ValueError: the same slice found twice in different folders.
    """
    require_folder(root, "data folder")
    found: dict[int, dict[int, tuple[str, int | None, int | None]]] = {}
    skipped: list[Path] = []
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # as os.walk: an unreadable folder is skipped
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.is_symlink():
                    stack.append(entry.path)
                continue
            match = SLICE_RE.match(entry.name)
            if not match:
                if _LOOSE_RE.match(entry.name):
                    skipped.append(Path(entry.path))
                continue
            vid, s = int(match.group(1)), int(match.group(2))
            slices = found.setdefault(vid, {})
            if s in slices:
                raise ValueError(f"volume {vid}: slice {s} found twice: {slices[s][0]} and {entry.path}")
            size = mtime = None
            if stat:
                try:
                    st = entry.stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    pass
            slices[s] = (entry.path, size, mtime)
    _warn_skipped(skipped)
    return found


def find_slices(root: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """Every ``volume_{id}_slice_{s}.h5`` below ``root``.

    Args:
        root: any folder above the slice files.

    Returns:
        ``{volume_id: {slice_index: path}}``.

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` does not exist, or is a file.
        ValueError: the same slice found twice in different folders.
    """
    root = Path(root)
    require_folder(root, "data folder")
    return {vid: {s: Path(t[0]) for s, t in slices.items()} for vid, slices in scan_slices(root).items()}


def _warn_skipped(skipped: list[Path]) -> None:
    """Warn about slice-like files whose volume or slice number is not an integer (they are not read)."""
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) whose volume id or slice index is not an integer "
                      f"(volume_<int>_slice_<int>.h5): {shown}", UserWarning, stacklevel=3)
