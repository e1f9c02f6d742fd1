"""File records: what to store about a file to notice later that it changed, was truncated or replaced.

A record is ``{"size", "mtime_ns"}`` plus, optionally, a blake2b checksum of the whole file. Checking
size and time costs one ``stat``; the checksum re-reads the file and is meant for explicit deep checks.
Records are JSON-ready, so an index (``index.json`` of a cache) can hold one per file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["VerificationError", "file_record", "record_problem", "verify_record"]

_CHUNK = 1 << 20


class VerificationError(ValueError):
    """A file differs from its recorded size, time or checksum."""


def _blake2b(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike, checksum: bool = False) -> dict[str, Any]:
    """What to record about a file to notice later changes.

    Args:
        path: an existing file.
        checksum: also hash the whole file (blake2b, 128 bits; reads it once).

    Returns:
        ``{"size": int, "mtime_ns": int}`` plus ``"blake2b": hex`` when ``checksum``; JSON-ready.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    st = path.stat()
    record: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if checksum:
        record["blake2b"] = _blake2b(path)
    return record


def record_problem(path: str | os.PathLike, record: dict[str, Any], mtime: bool = True,
                   checksum: bool = False) -> str | None:
    """How ``path`` differs from its ``file_record``, or None when it matches.

    Args:
        path: the file.
        record: from ``file_record``.
        mtime: compare the modification time too (off for files that may be copied without times).
        checksum: re-hash the file when the record holds a checksum (slow on big files).

    Returns:
        A short reason (``"missing"``, ``"size 10 != recorded 20"``, ...) or None.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if st.st_size != record.get("size"):
        return f"size {st.st_size} != recorded {record.get('size')}"
    if mtime and "mtime_ns" in record and st.st_mtime_ns != record["mtime_ns"]:
        return "modified since recorded"
    if checksum and "blake2b" in record and _blake2b(path) != record["blake2b"]:
        return "checksum differs from recorded"
    return None


def verify_record(path: str | os.PathLike, record: dict[str, Any], mtime: bool = True,
                  checksum: bool = False) -> None:
    """Raise when ``path`` no longer matches its ``file_record`` (see ``record_problem``).

    Raises:
        VerificationError: names the file and what differs.
    """
    problem = record_problem(path, record, mtime=mtime, checksum=checksum)
    if problem is not None:
        raise VerificationError(f"{path}: {problem}")

