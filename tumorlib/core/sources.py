"""Where the data comes from: ``TUMORLIB_DATA``, a Kaggle mount, kagglehub's cache, or the embedded set.

Order of precedence, first match wins:

1. ``TUMORLIB_DATA`` (kind ``"env"``): any folder above ``volume_{id}_slice_{s}.h5`` files, or a
   NIfTI folder of a known layout (``tumorlib.io.layouts.data_layout``); the value
   ``embedded`` skips the searches below and picks the embedded set (``make test`` sets it, so a local
   download never changes what the notebook checks compare).
2. A Kaggle notebook's input mount (kind ``"kaggle-mount"``): the first folder, in sorted order, below
   ``/kaggle/input`` that holds ``volume_*_slice_*.h5`` files (for ``awsaf49/brats2020-training-data``:
   ``/kaggle/input/brats2020-training-data/BraTS2020_training_data/content/data``).
3. kagglehub's download cache (kind ``"kagglehub"``): a completed download of a dataset under
   ``$KAGGLEHUB_CACHE`` (default ``~/.cache/kagglehub``), laid out by kagglehub >= 0.3 as
   ``datasets/<owner>/<name>/versions/<n>/`` with the marker ``datasets/<owner>/<name>/<n>.complete``;
   ``awsaf49/brats2020-training-data`` first, then any other dataset, highest version first.
4. The embedded synthetic set (kind ``"embedded"``), generated on first use.

On Kaggle (``/kaggle/working`` exists and is writable) outputs and the cache default to
``/kaggle/working/tumorlib``: the input mount is read-only.

Folder searches never leave their root: symbolic links are not followed, and a slice file that is a
link pointing outside the root does not count.

Environment variables:
    TUMORLIB_KAGGLE_ROOT: **for tests only**: stands in for ``/kaggle`` (the folder holding ``input``
        and ``working``).
    KAGGLEHUB_CACHE: kagglehub's cache folder (read the same way kagglehub reads it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataSource",
    "KAGGLE_ROOT_ENV",
    "display_path",
    "default_home",
    "find_data_source",
    "find_kaggle_mount",
    "find_kagglehub_download",
    "find_previous_run",
    "kaggle_root",
    "kaggle_working_dir",
    "kagglehub_cache_dir",
]

KAGGLE_ROOT_ENV = "TUMORLIB_KAGGLE_ROOT"  # test-only stand-in for /kaggle
BRATS_HANDLE = ("awsaf49", "brats2020-training-data")
_SLICE_RE = re.compile(r"^volume_\d+_slice_\d+\.h5$")
_MAX_DEPTH = 6  # /kaggle/input/<dataset>/BraTS2020_training_data/content/data is depth 4
EMBEDDED = "embedded"  # TUMORLIB_DATA=embedded forces the embedded set (tests, smoke runs on Kaggle)
SYNTHETIC_NOTE = "Dice measured on it says nothing about real BraTS."


@dataclass(frozen=True)
class DataSource:
    """The data a run reads.

    Attributes:
        kind: ``"env"``, ``"kaggle-mount"``, ``"kagglehub"`` or ``"embedded"``.
        path: the data folder (for ``"embedded"``: where the set is, or will be, generated).
        description: one human sentence saying where the data comes from.
    """

    kind: str
    path: Path
    description: str

    @property
    def synthetic(self) -> bool:
        """True for the embedded synthetic set."""
        return self.kind == "embedded"


def kaggle_root() -> Path:
    """``/kaggle``, or ``$TUMORLIB_KAGGLE_ROOT`` (tests only)."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def kaggle_working_dir() -> Path | None:
    """``/kaggle/working`` when it exists and is writable (a Kaggle notebook), else None."""
    working = kaggle_root() / "working"
    if working.is_dir() and os.access(working, os.W_OK | os.X_OK):
        return working
    return None


def default_home() -> Path:
    """Default ``TUMORLIB_HOME``: ``/kaggle/working/tumorlib`` on Kaggle, else ``~/.cache/tumorlib``."""
    working = kaggle_working_dir()
    return working / "tumorlib" if working is not None else Path.home() / ".cache" / "tumorlib"


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def _slice_folders(root: Path, max_depth: int = _MAX_DEPTH) -> list[Path]:
    """Folders below ``root`` (sorted, top-down) that directly hold a slice file, without leaving ``root``.

    A folder holding slices is not searched further; links to folders are never followed, and a slice
    file that is a link resolving outside ``root`` does not count.
    """
    found: list[Path] = []
    base = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs.sort()
        hit = next((n for n in files if _SLICE_RE.match(n)), None)
        if hit is not None and (not os.path.islink(here / hit) or _inside(here / hit, root)):
            found.append(here)
            dirs[:] = []
        elif len(here.parts) - base >= max_depth:
            dirs[:] = []
    return sorted(found)


def find_kaggle_mount() -> Path | None:
    """The first folder under ``<kaggle root>/input`` holding ``volume_*_slice_*.h5`` files, or None."""
    inputs = kaggle_root() / "input"
    if not inputs.is_dir():
        return None
    folders = _slice_folders(inputs)
    brats = [f for f in folders if "brats" in str(f.relative_to(inputs)).lower()]
    return (brats or folders or [None])[0]


def kagglehub_cache_dir() -> Path:
    """kagglehub's cache folder: ``$KAGGLEHUB_CACHE``, else ``~/.cache/kagglehub``."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub").expanduser()


def find_kagglehub_download() -> Path | None:
    """A completed kagglehub download holding slice files, or None.

    Looks at ``datasets/<owner>/<name>/versions/<n>/`` under ``kagglehub_cache_dir()``, keeping only
    versions with kagglehub's completion marker ``datasets/<owner>/<name>/<n>.complete``: BraTS2020's
    handle first, then other datasets in sorted order; within a dataset the highest version first.

    Returns:
        The folder that directly holds the slice files (below the version folder).
    """
    datasets = kagglehub_cache_dir() / "datasets"
    if not datasets.is_dir():
        return None
    handles = sorted((p for p in datasets.glob("*/*") if p.is_dir() and not p.is_symlink()),
                     key=lambda p: ((p.parent.name, p.name) != BRATS_HANDLE, p.parent.name, p.name))
    for handle in handles:
        versions = handle / "versions"
        if not versions.is_dir() or versions.is_symlink():
            continue
        numbered = [v for v in versions.iterdir() if v.name.isdigit() and v.is_dir() and not v.is_symlink()]
        for version in sorted(numbered, key=lambda v: -int(v.name)):
            if not (handle / f"{version.name}.complete").is_file():
                continue
            folders = _slice_folders(version)
            if folders:
                return folders[0]
    return None


def find_data_source(embedded_dir: str | os.PathLike) -> DataSource:
    """Which data to use, by the precedence in the module docstring.

    Args:
        embedded_dir: where the embedded synthetic set lives (or will be generated).

    Returns:
        The source; nothing is created or read beyond listing folders.
    """
    env = os.environ.get("TUMORLIB_DATA")
    if env and env.strip().lower() != EMBEDDED:
        path = Path(env).expanduser()
        return DataSource("env", path, f"TUMORLIB_DATA: {path}")
    mount = find_kaggle_mount() if not env else None
    if mount is not None:
        return DataSource("kaggle-mount", mount, f"the Kaggle input mount {mount} (read-only)")
    download = find_kagglehub_download() if not env else None
    if download is not None:
        return DataSource("kagglehub", download, f"a kagglehub download in {download}")
    path = Path(embedded_dir)
    return DataSource("embedded", path,
                      f"the embedded synthetic set in {path} (brain phantoms in the Kaggle layout); "
                      + SYNTHETIC_NOTE)


def find_previous_run(preset: str) -> Path | None:
    """A run folder of ``preset`` saved by an earlier Kaggle session and attached as input, or None.

    Kaggle wipes ``/kaggle/working`` between sessions; a notebook's saved output can be attached to the
    next session, where it appears read-only as ``/kaggle/input/<name>/tumorlib/outputs/<preset>/run``
    (possibly one folder deeper). Only runs holding ``checkpoints/last.pth`` count; with several, the one
    whose checkpoint is newest wins. Copy it into the workspace's ``run_dir`` before resuming.

    Args:
        preset: the preset name, e.g. ``"gpu16"``.

    Returns:
        The run folder (read-only: never resume in place).
    """
    inputs = kaggle_root() / "input"
    if not inputs.is_dir():
        return None
    found = []
    for pattern in (f"*/tumorlib/outputs/{preset}/run", f"*/*/tumorlib/outputs/{preset}/run"):
        for run in inputs.glob(pattern):
            last = run / "checkpoints" / "last.pth"
            if last.is_file() and _inside(last, inputs):
                found.append((last.stat().st_mtime, str(run), run))
    return max(found)[2] if found else None


_NAMED_FOLDERS = ("TUMORLIB_CACHE", "TUMORLIB_OUT", "TUMORLIB_HOME")


def display_path(path: str | os.PathLike) -> str:
    """``path`` as a notebook shows it: without the parts that only name this machine.

    A path inside ``$TUMORLIB_CACHE``, ``$TUMORLIB_OUT`` or ``$TUMORLIB_HOME`` (when set) is written from
    that variable (``$TUMORLIB_HOME/outputs/ci/run``), one under the user's home from ``~``; any other
    path (``/kaggle/input/...``) as it is.

    Args:
        path: a file or folder.

    Returns:
        The text to print, with ``/`` separators.
    """
    full = Path(os.path.realpath(Path(path).expanduser()))
    named = [(var, os.environ.get(var)) for var in _NAMED_FOLDERS]
    for var, root in [*named, ("~", str(Path.home()))]:
        if not root:
            continue
        try:
            rel = full.relative_to(os.path.realpath(Path(root).expanduser()))
        except ValueError:
            continue
        prefix = var if var == "~" else f"${var}"
        return prefix if rel == Path(".") else f"{prefix}/{rel.as_posix()}"
    return full.as_posix()
