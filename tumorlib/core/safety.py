"""Keeping data safe: the errors, writer locks and atomic writes (folder moves: ``tumorlib.core.folders``).

Small mechanisms the commands share, each usable on its own:

- ``folder_lock(folder, what)``: one writer per folder (run folder, cache folder); readers take none.
  An OS lock (``flock``/``msvcrt.locking``) on ``folder/.tumorlib.lock``, so it vanishes with its
  process however that process ends (exception, SIGTERM, SIGKILL): a lock can never be stale.
- ``atomic_open``/``atomic_write``: write a temporary file in the same folder, ``fsync``, then
  ``os.replace``; a failure (disk full, Ctrl-C) leaves the old file as it was.

File records for verifying what a cache trusts live in ``tumorlib.core.integrity``.

Every error is one line naming the folder or file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tumorlib.core.integrity import file_record, record_problem

__all__ = [
    "LOCK_NAME",
    "OUTPUT_RECORD",
    "READ_ONLY_ERRNOS",
    "DiskFullError",
    "FolderBusyError",
    "OutputIsInputError",
    "UnsafePathError",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "ever_recorded",
    "fsync_dir",
    "folder_lock",
    "folder_record_problem",
    "is_disk_full",
    "record_folder",
    "record_written",
    "written_by",
]

#: Name of the lock file a writer holds inside its folder (left in place, empty, when released).
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)  # a folder no writer may use
LOCK_NAME = ".tumorlib.lock"


class DiskFullError(OSError):
    """No space left while writing a file; ``str()`` is ``disk full while writing <file>``."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"disk full while writing {path}", str(path))

    def __str__(self) -> str:
        return self.strerror


class FolderBusyError(RuntimeError):
    """Another process holds the writer lock of a folder."""


class OutputIsInputError(ValueError):
    """An output path names one of the inputs."""


class UnsafePathError(ValueError):
    """A file name (from an index) that leads outside its folder."""


def is_disk_full(err: BaseException) -> bool:
    """True for an ``OSError`` with errno ENOSPC (or EDQUOT), also when wrapped as a cause."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


# ---------------------------------------------------------------- writer lock


def _os_lock(fd: int, lock: bool) -> bool:
    """Take (non-blocking) or release an exclusive OS lock on ``fd``; False when another holds it."""
    if sys.platform == "win32":  # pragma: no cover - Windows only; a byte past the PID text stays readable
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK if lock else msvcrt.LK_UNLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if lock else fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "writer") -> Iterator[Path]:
    """Hold the exclusive writer lock of ``folder`` for the ``with`` block.

    The folder is created when missing. The lock is the OS's, on ``folder/.tumorlib.lock``, so it is
    released on any exit: normal, exception, SIGTERM or SIGKILL (a crashed holder never leaves a stale
    lock; the PID in the file is only for the message). Readers need no lock. Not re-entrant: a second
    ``folder_lock`` on the same folder fails even in the same process.

    Args:
        folder: the folder to lock (a run folder, a cache folder).
        what: what the holder does, for messages (``"training run"``, ``"cache build"``).

    Yields:
        The folder as a ``Path``.

    Raises:
        FolderBusyError: another writer holds the lock (names the folder and its PID).
        PermissionError: the folder cannot be written (read-only), so no writer may use it.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno in READ_ONLY_ERRNOS:
            raise PermissionError(f"cannot lock {folder} for a {what}: the folder is read-only "
                                  f"({err.strerror})") from err
        raise
    try:
        if not _os_lock(fd, True):
            holder = ""
            for _ in range(50):  # the holder writes its PID just after taking the lock: give it a moment
                os.lseek(fd, 0, os.SEEK_SET)
                holder = os.read(fd, 64).decode(errors="replace").strip()
                if holder.isdigit():
                    break
                time.sleep(0.01)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise FolderBusyError(f"{folder} is in use by another {what} ({who}); wait for it to finish or "
                                  f"stop it, or choose another folder")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield folder
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            _os_lock(fd, False)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- atomic files


def fsync_dir(folder: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, writer: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` when the block succeeds.

    For writers that take a file name (``nib.save``, ``np.save``, ``h5py.File``). The file is
    ``fsync``-ed, then renamed over ``path`` in one step; on any exception it is removed and ``path``
    is left as it was.

    Args:
        path: the file to write (its folder must exist).
        writer: the command writing an output (``"evaluate"``): once in place the file is recorded as
            its (``record_written``), so a later run may replace it; None: no record.

    Yields:
        The temporary path (``.tmp-<pid>-<n>.<name>`` in the same folder).

    Raises:
        DiskFullError: no space left (names ``path``); the old file is intact.
        PermissionError: the folder is read-only (names ``path``).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{time.monotonic_ns() % 10**9}.{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(err):
            raise DiskFullError(path) from err
        if isinstance(err, OSError) and err.errno in READ_ONLY_ERRNOS:
            raise PermissionError(f"cannot write {path}: its folder is read-only ({err.strerror})") from err
        raise
    fsync_dir(path.parent)
    if writer is not None:
        record_written(path, writer)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", writer: str | None = None, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    A reader (or a crash) sees either the old file or the complete new one (see ``atomic_path``).

    Args:
        path: the file to write (its folder must exist).
        mode: ``"wb"`` or ``"w"`` (text); ``**kwargs`` go to ``open`` (``encoding``, ``newline``).
        writer: record the file as this command's output (see ``atomic_path``).

    Yields:
        The open temporary file.

    Raises:
        DiskFullError: no space left (names ``path``); the old file is intact.
        PermissionError: the folder is read-only (names ``path``).
        ValueError: a mode that is not a write mode.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, writer) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write(path: str | os.PathLike, data: bytes | str, writer: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``); str is written as UTF-8; ``writer``
    records it as that command's output (see ``atomic_path``).

    Returns:
        The path written.

    Raises:
        DiskFullError: no space left; the old file is intact.
    """
    with atomic_open(path, "w" if isinstance(data, str) else "wb", writer=writer) as f:
        f.write(data)
    return Path(path)


# ---------------------------------------------------------------- the record of what tumorlib wrote
# Here, beside the atomic writers that keep it (``writer=``), so the guard in ``tumorlib.core.outputs``
# reads it without an import circle.

#: The record tumorlib keeps, in each folder it writes outputs to, of the files it wrote there.
OUTPUT_RECORD = ".tumorlib-outputs.json"
_RECORD_MARK = "tumorlib.core.outputs"


def _load_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / OUTPUT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("written_by") == _RECORD_MARK else {}


def _save_record(folder: Path, record: dict[str, Any]) -> None:
    record["written_by"] = _RECORD_MARK
    atomic_write(folder / OUTPUT_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")


def record_written(path: str | os.PathLike, writer: str) -> None:
    """Record that tumorlib's ``writer`` (a subcommand name) has just written ``path``.

    The record (``OUTPUT_RECORD`` in the file's folder) keeps the writer, size and time, so a later file
    at that path is recognised as tumorlib's only while it is unchanged. A record that cannot be written
    (read-only folder) or that loses a concurrent update only makes a later replacement refused: the safe side.

    Args:
        path: an existing file tumorlib wrote.
        writer: who wrote it (``"evaluate"``, ``"predict"``, ...).
    """
    path = Path(path).absolute()
    with contextlib.suppress(OSError):
        record = _load_record(path.parent)
        files = {n: e for n, e in record.get("files", {}).items() if (path.parent / n).exists()}
        files[path.name] = {"writer": writer, **file_record(path)}
        record["files"] = files
        _save_record(path.parent, record)


def written_by(path: str | os.PathLike) -> str | None:
    """The tumorlib writer that wrote ``path`` (by the record beside it), or None: no record, or the file
    changed since (size or time) or is not a plain file."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return None
    entry = _record_entry(path)
    if entry is None or record_problem(path, entry) is not None:
        return None
    return entry.get("writer")


def ever_recorded(path: str | os.PathLike) -> bool:
    """Whether the record beside ``path`` names it at all (as written then, whatever it holds now)."""
    return _record_entry(Path(path)) is not None


def _record_entry(path: Path) -> dict[str, Any] | None:
    """The entry of ``path`` in the record of its folder, or None."""
    entry = _load_record(path.absolute().parent).get("files", {}).get(path.name)
    return entry if isinstance(entry, dict) else None


def _folder_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_size for p in sorted(folder.rglob("*"))
            if not p.is_dir() and p.name != OUTPUT_RECORD}


def record_folder(folder: str | os.PathLike, writer: str) -> None:
    """Record that ``writer`` wrote the whole ``folder`` (every file below it, by relative path and size).

    Args:
        folder: a folder tumorlib has just filled.
        writer: who wrote it (``"synth"``).
    """
    folder = Path(folder)
    record = _load_record(folder)
    record["folder"] = {"writer": writer, "files": _folder_files(folder)}
    _save_record(folder, record)


def folder_record_problem(folder: str | os.PathLike, writer: str) -> str | None:
    """Why ``folder`` is not (or no longer) exactly what ``writer`` recorded writing, or None when it is.

    Returns:
        None, or a short reason: no record, another writer, a file added, missing or of another size.
    """
    folder = Path(folder)
    entry = _load_record(folder).get("folder")
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return "tumorlib did not write it (no record of tumorlib's in it)"
    if entry.get("writer") != writer:
        return f"it was written by tumorlib {entry.get('writer')}, not {writer}"
    recorded, present = entry["files"], _folder_files(folder)
    added = sorted(set(present) - set(recorded))
    if added:
        return f"it holds {', '.join(added[:3])}{' ...' if len(added) > 3 else ''}, which tumorlib did not write"
    changed = sorted(n for n in recorded if present.get(n) != recorded[n])
    if changed:
        return f"{', '.join(changed[:3])} changed or went missing since tumorlib wrote it"
    return None
