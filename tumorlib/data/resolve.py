"""One place that finds a config's data, cache and splits (train, evaluate, bench, perf, notebooks).

``resolve_cache`` gives the ``.npy`` cache a run reads, building it first where needed, with one
checking policy: every cache it returns has a readable index of this format version
(``load_cache_index``) and was read with the config's ``kaggle_channel_order`` (``check_cache_order``); a
workspace cache is also checked against the workspace's data (and built from it, generated first when it
is the embedded set). ``make_datasets`` builds the training and validation patch datasets over the
config's split (``tumorlib.data.splits.run_splits``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch.utils.data import Dataset

from tumorlib.core.config import Config, Workspace, workspace
from tumorlib.io.layouts import data_layout

__all__ = ["make_datasets", "resolve_cache"]


def resolve_cache(config: Config, data_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The ``.npy`` cache for ``config``, built first where needed.

    Args:
        config: the run's config (``cache_hw``, ``cache_margin``, ``cache_workers``, ``synth_*``).
        data_dir: a Kaggle-format folder; None: the workspace's data (``TUMORLIB_DATA``: a Kaggle folder or
            NIfTI cases of a known layout; or the embedded synthetic set, generated on first use).
        cache_dir: the cache folder; None: the workspace's (``TUMORLIB_CACHE`` or ``OUT/cache``). A folder
            that already holds a finished cache is used as it is when ``data_dir`` is None.
        progress: tqdm bars while building.

    Returns:
        The cache folder (absolute).

    Raises:
        CacheError: the folder holds a cache of other data or settings, another channel order, an
            unreadable index, or (used as it is) a damaged volume.
    """
    from tumorlib.data.cache import INDEX_NAME, build_cache, check_cache_order, load_cache_index, verify_cache

    ws = workspace(config)
    if data_dir is None:
        if cache_dir is None:
            return _workspace_cache(config, ws, progress)
        cache = Path(cache_dir).expanduser().resolve()
        if (cache / INDEX_NAME).is_file():
            verify_cache(cache)  # used as it is: its files and sources are checked, nothing is written
            check_cache_order(cache, load_cache_index(cache), config.kaggle_channel_order)
            return cache
        return _workspace_cache(config, dataclasses.replace(ws, cache_dir=cache), progress)
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else ws.cache_dir
    return Path(build_cache(data_dir, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                            margin=config.cache_margin, progress=progress, stored_order=config.kaggle_channel_order))


def _workspace_cache(config: Config, ws: Workspace, progress: bool) -> Path:
    """``ws.cache_dir`` built from the workspace's data (the embedded set is generated first; a NIfTI folder
    of any known layout is cached exactly as ``cache --nifti ROOT`` does); a cache there of other settings,
    another channel order or other data is refused (CacheError)."""
    from tumorlib.data.cache import INDEX_NAME, CacheError, build_cache, check_cache_order, load_cache_index
    from tumorlib.data.cache.layout import build_settings
    from tumorlib.data.cache.nifti import build_nifti_cache
    from tumorlib.data.cache.store import check_settings
    from tumorlib.data.embedded import ensure_data

    data = Path(ensure_data(config, progress=progress)).resolve()
    layout = "kaggle" if ws.synthetic else data_layout(data)
    cache = Path(ws.cache_dir)
    if (cache / INDEX_NAME).is_file():
        index = load_cache_index(cache)
        reader = "kaggle" if layout == "kaggle" else "nifti"
        check_settings(cache, index, build_settings(config.cache_hw, config.cache_margin, reader))
        check_cache_order(cache, index, config.kaggle_channel_order)
        if index.get("source") != str(data):
            raise CacheError(f"cache {cache} was built from {index.get('source')}, not {data}; delete it, "
                             "or set TUMORLIB_CACHE to another folder")
    # an intact finished cache is returned after a stat of its files; anything else is (re)built
    if layout != "kaggle":
        return Path(build_nifti_cache(data, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                                      margin=config.cache_margin, progress=progress, layout=layout))
    return Path(build_cache(data, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                            margin=config.cache_margin, progress=progress, stored_order=config.kaggle_channel_order))


def _check_cache_matches(config: Config, cache_dir: str | os.PathLike) -> None:
    """Refuse to train ``config`` on a cache of other geometry or channels (the run's config would lie).

    Raises:
        ValueError: the cache's ``cache_hw`` or margin differs from ``config.cache_hw`` /
            ``config.cache_margin``, or its channel count from ``config.in_channels`` (names the field and
            the cache).
    """
    from tumorlib.data.cache import load_cache_index

    index = load_cache_index(cache_dir)
    for field, key in (("cache_hw", "cache_hw"), ("cache_margin", "margin")):
        have, want = index.get(key), getattr(config, field)
        if key in index and have != want:
            raise ValueError(f"the cache {cache_dir} was built with {field} {have!r}, this run has {field} "
                             f"{want!r}: train with --{field} {have if have is not None else 'none'}, or build a "
                             f"cache with --{field} {want if want is not None else 'none'}")
    channels = len(index.get("channel_order") or ()) or None
    if channels is not None and channels != config.in_channels:
        raise ValueError(f"--in_channels {config.in_channels}: the cache {cache_dir} holds {channels} image "
                         f"channels; use --in_channels {channels}")


def make_datasets(config: Config, cache_dir: str | os.PathLike) -> tuple[Dataset, Dataset, dict[str, list[int]]]:
    """Training and validation patch datasets over the config's split of the cached volumes.

    Training draws ``samples_per_epoch`` patches an epoch (None: one per training volume) with the
    config's flips, intensity augmentation and ``tumor_sampling``; validation is a fixed set of
    ``val_samples`` patches (None: two per validation volume), without augmentation.

    Args:
        config: the run's config.
        cache_dir: a finished cache folder.

    Returns:
        ``(train_dataset, val_dataset, splits)`` with ``splits = {"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: the split leaves no validation volume.
    """
    from tumorlib.data.dataset import BraTS3DDataset
    from tumorlib.data.splits import run_splits

    _check_cache_matches(config, cache_dir)
    splits = run_splits(config, cache_dir)
    train_ids, val_ids = splits["train"], splits["val"]
    if not val_ids:
        n = sum(len(v) for v in splits.values())
        raise ValueError(f"no validation volumes: val_fraction={config.val_fraction} of {n} volumes")
    common = dict(patch_size=config.patch_size, tumor_prob=config.tumor_prob, ram_cache_bytes=config.ram_cache_bytes)
    train_ds = BraTS3DDataset(cache_dir, train_ids, augment=config.augment, intensity_aug=config.intensity_aug,
                              tumor_sampling=config.tumor_sampling, seed=config.seed,
                              samples_per_epoch=config.samples_per_epoch or len(train_ids), **common)
    val_ds = BraTS3DDataset(cache_dir, val_ids, augment=False, tumor_sampling=config.tumor_sampling,
                            seed=config.seed + 10_007,
                            samples_per_epoch=config.val_samples or 2 * len(val_ids), **common)
    return train_ds, val_ds, splits
