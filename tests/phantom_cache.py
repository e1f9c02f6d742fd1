"""A small cache of phantoms of mixed shapes, shared by the dataset and device-sampler tests."""

from __future__ import annotations

from pathlib import Path

from tumorlib.data.cache import build_cache_from_reader
from tumorlib.data.synthetic import make_phantom

PATCH = (16, 32, 32)
SHAPES = {1: (24, 60, 60), 2: (22, 56, 60), 3: (28, 60, 56), 4: (8, 12, 10)}  # volume 4 < patch


def _reader(volume_id: int):
    return make_phantom(SHAPES[volume_id], seed=3, volume_id=volume_id)


def build_phantom_cache(folder: Path) -> Path:
    """Cache the four phantoms of ``SHAPES`` (seed 3) into ``folder/cache``; returns the cache folder."""
    return build_cache_from_reader(_reader, list(SHAPES), folder / "cache", source="phantoms",
                                   workers=1, progress=False)
