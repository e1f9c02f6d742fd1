"""The ``.npy`` pre-cache: each volume normalised once, cropped to the brain and stored as float16.

Reading one 155x240x240 volume from its 155 HDF5 slices takes 0.3-0.5 s on a warm page cache here
(2.3 s in the reference design); the same volume from the cache loads in about 0.015 s, or is
memory-mapped so patches are cut without reading the whole volume. The cache folder holds, per volume::

    v{id}_img.npy    (4, D', H', W') float16, each channel z-scored over brain voxels, background 0
    v{id}_mask.npy   (3, D', H', W') uint8, channels necrosis/NET, edema, enhancing
    v{id}_meta.json  the volume's index entry (written last: it marks the volume as finished)

and ``index.json``, written at the end of a build, with every entry plus the build settings. An entry
records the source folder and shape, the in-plane zoom (``cache_hw``), the crop box, per-channel mean
and std, per-class voxel counts and a sample of tumour-voxel coordinates for tumour-centred sampling.

One module per job: ``normalise`` (brain mask, the volume scan, z-score), ``preprocess`` (resampling,
crop, the index entry), ``layout`` (file names, index JSON, build settings), ``store`` (the index, its
checks, reading back), ``build`` (the streamed, parallel, resumable build), ``readers`` (reopening the
source a cache was built from), ``fingerprints`` (Kaggle fingerprints), ``geometry`` (a cached volume's
affine, for the display) and ``nifti`` (NIfTI fingerprints and the NIfTI build; imported on its own, as
it needs nibabel). The one get-or-build of a run's cache is
``tumorlib.data.resolve.resolve_cache``.
"""

from __future__ import annotations

from .fingerprints import kaggle_fingerprint
from .geometry import cache_affine, cache_spacing
from .build import Fingerprint, Reader, build_cache, build_cache_from_reader
from .normalise import brain_mask, normalize_volume
from .preprocess import CACHE_VERSION, TUMOR_SAMPLE, prepare_volume, source_to_cache, uncrop
from .readers import SourceReader, check_cache_order, open_source, order_record
from .store import (
    FORMAT_NAME,
    INDEX_NAME,
    CacheError,
    cache_summary,
    cached_volume_ids,
    load_cache_index,
    load_cached_volume,
    verify_cache,
    volume_problem,
)

__all__ = [
    "CACHE_VERSION",
    "FORMAT_NAME",
    "INDEX_NAME",
    "TUMOR_SAMPLE",
    "CacheError",
    "Fingerprint",
    "Reader",
    "SourceReader",
    "brain_mask",
    "build_cache",
    "build_cache_from_reader",
    "cache_affine",
    "cache_spacing",
    "check_cache_order",
    "cache_summary",
    "cached_volume_ids",
    "kaggle_fingerprint",
    "load_cache_index",
    "load_cached_volume",
    "normalize_volume",
    "open_source",
    "order_record",
    "prepare_volume",
    "source_to_cache",
    "uncrop",
    "verify_cache",
    "volume_problem",
]
