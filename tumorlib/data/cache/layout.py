"""The cache folder's layout: file names, index entries and their JSON form, build settings.

Shared by the builder (``build``), which writes these files, and the store (``store``), which reads and
checks them; the folder's contents are described in ``tumorlib.data.cache``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumorlib.core.integrity import file_record

from .preprocess import TUMOR_SAMPLE

__all__ = [
    "build_settings",
    "dump_entry",
    "dump_index",
    "image_name",
    "mask_name",
    "meta_name",
    "output_records",
    "read_entry",
    "source_records",
]


def image_name(volume_id: int) -> str:
    """File name of a volume's cached image, ``v{id}_img.npy``."""
    return f"v{volume_id}_img.npy"


def mask_name(volume_id: int) -> str:
    """File name of a volume's cached mask, ``v{id}_mask.npy``."""
    return f"v{volume_id}_mask.npy"


def meta_name(volume_id: int) -> str:
    """File name of a volume's index entry, ``v{id}_meta.json`` (written last: the volume is finished)."""
    return f"v{volume_id}_meta.json"


def output_records(cache: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Size and checksum of written cache files (no time: a copied cache stays valid)."""
    records = {}
    for name in names:
        record = file_record(cache / name, checksum=True)
        record.pop("mtime_ns")
        records[name] = record
    return records


def source_records(root: Path, files: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Size and modification time of a volume's source files, by name relative to ``root``."""
    records = {}
    for f in files:
        path = root / f  # an absolute ``f`` stays as it is
        records[path.relative_to(root).as_posix()] = file_record(path)
    return records


def dump_entry(entry: dict[str, Any]) -> str:
    """One JSON line; keys sorted so the bytes depend only on the content."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def dump_index(index: dict[str, Any]) -> str:
    """Readable JSON: header keys one per line, each volume entry on one line."""
    lines = ["{"]
    header = {k: v for k, v in index.items() if k != "volumes"}
    for key in sorted(header):
        lines.append(f"  {json.dumps(key)}: {json.dumps(header[key], sort_keys=True)},")
    vols = index["volumes"]
    lines.append('  "volumes": {')
    keys = sorted(vols, key=int)
    for i, key in enumerate(keys):
        lines.append(f"    {json.dumps(key)}: {dump_entry(vols[key])}{',' if i < len(keys) - 1 else ''}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_entry(cache: Path, volume_id: int) -> dict[str, Any] | None:
    """The finished volume's entry, or None when its files are not all there."""
    meta = cache / meta_name(volume_id)
    if not meta.is_file():
        return None
    if not (cache / image_name(volume_id)).is_file() or not (cache / mask_name(volume_id)).is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None


def build_settings(cache_hw: int | None, margin: int, reader_name: str) -> dict[str, Any]:
    """The index keys a cache is built with; a cache built with others is refused (``store.check_settings``)."""
    return {"cache_hw": cache_hw, "margin": int(margin), "reader": reader_name, "dtype": "float16",
            "tumor_sample": TUMOR_SAMPLE}
