"""Folders a command replaces or refuses: previous results kept, inputs never overwritten.

- ``move_aside``/``discard_previous``: a finished result is moved into ``previous-<time>/`` (or the
  call refuses without ``overwrite``), and deleted only once the new result exists.
- ``check_empty_folder``: an output folder must be new or empty.
- ``replace_folder``: build a whole folder beside the target, then swap it in at once.
- ``check_free_space``: refuse before writing when the disk cannot hold the output.
- ``check_not_input``: an output path that is (or links to) an input file is refused.
- ``inside``: a file name read from an index stays inside its folder.

Every error is one line naming the folder or file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tumorlib.core.safety import (
    READ_ONLY_ERRNOS,
    DiskFullError,
    OutputIsInputError,
    UnsafePathError,
    fsync_dir,
    is_disk_full,
)

__all__ = [
    "check_empty_folder",
    "check_free_space",
    "check_not_input",
    "discard_previous",
    "inside",
    "move_aside",
    "replace_folder",
    "require_folder",
]


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
    fsync_dir(folder)
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
        if err.errno in READ_ONLY_ERRNOS:
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
    fsync_dir(target.parent)
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


def require_folder(path: str | os.PathLike, what: str, missing_hint: str = "") -> Path:
    """``path`` when it is a folder; otherwise one line saying it is missing or is a file.

    Args:
        path: the folder given.
        what: what it should be, for the message (``"data folder"``, ``"run folder"``).
        missing_hint: added to the message when it does not exist (how to make one).

    Raises:
        FileNotFoundError: nothing there.
        NotADirectoryError: a file where a folder is expected.
    """
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder; give the folder itself")
    raise FileNotFoundError(f"{what} {path} does not exist" + (f"; {missing_hint}" if missing_hint else ""))


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
