"""Keeping data safe: writer locks, atomic writes, previous results kept, inputs never overwritten.

Small mechanisms the commands share, each usable on its own:

- ``folder_lock(folder, what)``: one writer per folder (run folder, cache folder); readers take none.
  An OS lock (``flock``/``msvcrt.locking``) on ``folder/.tumorlib.lock``, so it vanishes with its
  process however that process ends (exception, SIGTERM, SIGKILL): a lock can never be stale.
- ``atomic_open``/``atomic_write``: write a temporary file in the same folder, ``fsync``, then
  ``os.replace``; a failure (disk full, Ctrl-C) leaves the old file as it was.
- ``move_aside``/``discard_previous``: a finished result is moved into ``previous-<time>/`` (or the
  call refuses without ``overwrite``), and deleted only once the new result exists.
- ``replace_folder``: build a whole folder beside the target, then swap it in at once.
- ``check_not_input``: an output path that is (or links to) an input file is refused.
- ``inside``: a file name read from an index stays inside its folder.

File records for verifying what a cache trusts live in ``tumorlib.core.integrity``.

Every error is one line naming the folder or file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LOCK_NAME",
    "DiskFullError",
    "FolderBusyError",
    "OutputIsInputError",
    "UnsafePathError",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "check_empty_folder",
    "check_free_space",
    "check_not_input",
    "discard_previous",
    "folder_lock",
    "inside",
    "is_disk_full",
    "move_aside",
    "replace_folder",
]

#: Name of the lock file a writer holds inside its folder (left in place, empty, when released).
_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)  # a folder no writer may use
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
        if err.errno in _READ_ONLY_ERRNOS:
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


def _fsync_dir(folder: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` when the block succeeds.

    For writers that take a file name (``nib.save``, ``np.save``, ``h5py.File``). The file is
    ``fsync``-ed, then renamed over ``path`` in one step; on any exception it is removed and ``path``
    is left as it was.

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
        if isinstance(err, OSError) and err.errno in _READ_ONLY_ERRNOS:
            raise PermissionError(f"cannot write {path}: its folder is read-only ({err.strerror})") from err
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    A reader (or a crash) sees either the old file or the complete new one (see ``atomic_path``).

    Args:
        path: the file to write (its folder must exist).
        mode: ``"wb"`` or ``"w"`` (text); ``**kwargs`` go to ``open`` (``encoding``, ``newline``).

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
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``); str is written as UTF-8.

    Returns:
        The path written.

    Raises:
        DiskFullError: no space left; the old file is intact.
    """
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


# ---------------------------------------------------------------- previous results


def move_aside(folder: str | os.PathLike, names: Iterable[str], overwrite: bool = False,
               what: str = "run") -> Path | None:
    """Move a finished result's files out of the way before a new one is written.

    Args:
        folder: the result folder (e.g. a run folder).
        names: the files/folders (relative to ``folder``) that make up a finished result.
        overwrite: False refuses when any of them exists; True moves those present into
            ``folder/previous-<YYYYmmdd-HHMMSS>/`` (same file system: each move is one rename).
        what: the kind of result, for the message.

    Returns:
        The ``previous-*`` folder, or None when nothing was there.

    Raises:
        FileExistsError: a finished result exists and ``overwrite`` is False (names the folder and files).
    """
    folder = Path(folder)
    present = [n for n in names if (folder / n).exists()]
    if not present:
        return None
    if not overwrite:
        raise FileExistsError(f"{folder} already holds a finished {what} ({', '.join(present)}); "
                              f"continue it with --resume, replace it with --overwrite (the old files are "
                              f"kept in {folder.name}/previous-<time>/ until the new {what} has a result), "
                              f"or choose another folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prev = folder / f"previous-{stamp}"
    k = 1
    while prev.exists():
        prev = folder / f"previous-{stamp}-{k}"
        k += 1
    prev.mkdir()
    for name in present:
        target = prev / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / name, target)
    _fsync_dir(folder)
    return prev


def discard_previous(prev: str | os.PathLike | None) -> None:
    """Delete a ``previous-*`` folder from ``move_aside`` once the new result exists (None: nothing)."""
    if prev is not None:
        shutil.rmtree(prev, ignore_errors=True)


def check_empty_folder(folder: str | os.PathLike, what: str = "output") -> None:
    """Refuse to write into a folder that already holds files.

    Raises:
        FileExistsError: ``folder`` exists and is not empty (names it and one entry).
        NotADirectoryError: ``folder`` is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} folder {folder} is a file")
    if folder.is_dir():
        first = next(iter(sorted(folder.iterdir())), None)
        if first is not None:
            raise FileExistsError(f"{what} folder {folder} is not empty (holds {first.name}); choose an empty "
                                  f"folder, or pass --overwrite to replace it whole")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def replace_folder(target: str | os.PathLike, build: Callable[[Path], Any], overwrite: bool = False,
                   what: str = "output") -> Path:
    """Build a folder beside ``target`` and swap it in whole; the old folder survives any failure.

    ``build(tmp)`` fills an empty sibling ``.<name>.partial-<pid>``. Only when it returns is the result
    swapped with ``target`` in one step (Linux: an atomic exchange; elsewhere two renames) and the old
    content deleted. Partial folders left by killed processes are removed on the next call.

    Args:
        target: the folder to create or replace.
        build: fills the folder it is given.
        overwrite: False refuses a non-empty ``target``.
        what: the kind of folder, for messages.

    Returns:
        ``target``.

    Raises:
        FileExistsError: ``target`` is not empty and ``overwrite`` is False.
        Whatever ``build`` raises (``target`` unchanged).
    """
    target = Path(target).absolute()
    if not overwrite:
        check_empty_folder(target, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as err:
        if err.errno in _READ_ONLY_ERRNOS:
            raise PermissionError(f"cannot write {target}: its folder {target.parent} is read-only "
                                  f"({err.strerror})") from err
        raise
    try:
        build(tmp)
        if not target.exists():
            os.rename(tmp, target)
        elif not _exchange(tmp, target):
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            os.rename(old, tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            name = getattr(err, "filename", None)
            raise DiskFullError(f"{target} ({Path(name).name if name else 'a file'} in the partial copy "
                                f"{tmp.name}, now removed; {target.name} was left as it was)") from err
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # now holds the old content
    _fsync_dir(target.parent)
    return target


def check_free_space(folder: str | os.PathLike, need_bytes: int, what: str = "the output") -> None:
    """Refuse to start writing ``need_bytes`` where less is free (checked before anything is written).

    Some writers (HDF5 among them) can crash instead of raising when the disk fills mid-file, so a
    command that knows its output size checks first.

    Args:
        folder: where the output goes (the nearest existing parent is measured).
        need_bytes: an estimate of what will be written.
        what: the output, for the message.

    Raises:
        OSError: less than ``need_bytes`` free (names the folder and both sizes).
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise OSError(f"not enough disk space for {what} in {folder}: needs about "
                      f"{need_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free on {probe}")


# ---------------------------------------------------------------- inputs and index names


def check_not_input(out_path: str | os.PathLike, input_paths: Iterable[str | os.PathLike],
                    option: str = "--out") -> Path:
    """Refuse an output path that is one of the inputs (same path after symlinks, or same file).

    Args:
        out_path: where a command will write.
        input_paths: the files it reads.
        option: the option that named ``out_path``, for the message.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        OutputIsInputError: ``out_path`` resolves to an input, or is a hard link to one.
    """
    out = Path(out_path)
    resolved = out.resolve()
    for inp in input_paths:
        inp = Path(inp)
        same = resolved == inp.resolve()
        if not same and out.exists() and inp.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp)
        if same:
            raise OutputIsInputError(f"{option} {out} is an input file ({inp}); writing it would destroy "
                                     f"the input: choose another output path")
    return out


def inside(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name`` for a file name read from an index, confined to ``folder``.

    Args:
        folder: the folder the index describes.
        name: a relative file name from the index.

    Returns:
        The path inside ``folder`` (symlinks resolved).

    Raises:
        UnsafePathError: an empty or absolute name, a ``..`` part, or a symlink leading out of ``folder``.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{folder}: index file name {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or rel.drive or ".." in rel.parts or name.startswith(("/", "\\")):
        raise UnsafePathError(f"{folder}: index file name {name!r} points outside the folder")
    base = folder.resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise UnsafePathError(f"{folder}: index file name {name!r} leads outside the folder (to {full})")
    return full
