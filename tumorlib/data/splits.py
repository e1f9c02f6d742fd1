"""Deterministic train/validation/test splits of volume ids (one volume per patient in BraTS2020).

``split_volumes`` is the rule; ``split_ids`` applies a config's fractions and seed to a list of ids and
``run_splits`` to the volumes of a cache (what training, evaluation and the benchmarks split by);
``load_splits`` reads a run's ``splits.json`` and checks it like any input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tumorlib.core.config import Config

__all__ = ["SPLITS", "SPLIT_NAMES", "fold_split", "load_splits", "run_split", "run_splits", "split_ids",
           "split_volumes"]

#: The keys of ``splits.json``.
SPLIT_NAMES = ("train", "val", "test")
#: The split names a run's volumes are asked by (``run_split``): the three, or ``all``.
SPLITS = (*SPLIT_NAMES, "all")


def split_volumes(
    ids: Iterable[int], val: float = 0.15, test: float = 0.15, seed: int = 42
) -> tuple[list[int], list[int], list[int]]:
    """Split volume ids into disjoint train, validation and test sets.

    The split depends only on the set of ids and ``seed``, not on their order. Each BraTS2020
    volume is one patient, so splitting by volume is splitting by patient. Sizes are
    ``round(val * n)`` and ``round(test * n)``, but at least one volume each when the fraction is
    positive, and the training set always keeps at least one volume.

    Args:
        ids: volume ids, unique.
        val: fraction of volumes for validation, in [0, 1).
        test: fraction of volumes for testing, in [0, 1); ``val + test < 1``.
        seed: seed of the permutation.

    Returns:
        ``(train, val, test)``: three sorted lists of ids.

    Raises:
        ValueError: duplicate ids, fractions out of range, or too few volumes for the split.
    """
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"split_volumes: duplicate volume ids {dup}")
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"split_volumes: need 0 <= val, test and val + test < 1, got val={val}, test={test}")
    n = len(ids)
    n_val = max(1, round(val * n)) if val > 0 else 0
    n_test = max(1, round(test * n)) if test > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"split_volumes: {n} volume(s) cannot give {n_val} validation, {n_test} test "
                         "and at least one training volume")
    order = np.random.default_rng(seed).permutation(n)
    ordered = sorted(ids)
    shuffled = [ordered[k] for k in order]
    test_ids = sorted(shuffled[:n_test])
    val_ids = sorted(shuffled[n_test:n_test + n_val])
    train_ids = sorted(shuffled[n_test + n_val:])
    return train_ids, val_ids, test_ids


def split_ids(config: Config, volume_ids: Sequence[int]) -> dict[str, list[int]]:
    """The config's train / val / test split of ``volume_ids`` (``val_fraction``, ``test_fraction``,
    ``split_seed``): ``{"train": [...], "val": [...], "test": [...]}``. With ``folds`` set (>= 2), the
    test set is the same and the other volumes are split by ``fold_split`` (val = fold ``fold``)."""
    try:
        train, val, test = split_volumes(sorted(int(v) for v in volume_ids), config.val_fraction,
                                         config.test_fraction, config.split_seed)
    except ValueError as err:  # name the config fields, not the function's arguments
        raise ValueError(f"val_fraction {config.val_fraction}, test_fraction {config.test_fraction}: "
                         f"{str(err).removeprefix('split_volumes: ')}") from None
    folds = getattr(config, "folds", None)
    if folds:
        train, val = fold_split(train + val, folds, config.fold, config.split_seed)
    return {"train": train, "val": val, "test": test}


def fold_split(ids: Iterable[int], folds: int, fold: int, seed: int = 42) -> tuple[list[int], list[int]]:
    """Fold ``fold`` of a ``folds``-fold split: validation = that fold, training = the other folds.

    The ids are permuted by ``seed`` (independently of their order) and cut into ``folds`` parts whose
    sizes differ by at most one (``numpy.array_split``); the folds are disjoint and cover the ids.

    Args:
        ids: the non-test volume ids, unique.
        folds: number of folds, >= 2.
        fold: the validation fold, 0 <= fold < folds.
        seed: seed of the permutation.

    Returns:
        ``(train, val)``: two sorted lists of ids.

    Raises:
        ValueError: a bad ``folds``/``fold``, or fewer ids than folds.
    """
    ordered = sorted(int(i) for i in ids)
    if int(folds) < 2 or not 0 <= int(fold) < int(folds):
        raise ValueError(f"fold_split: need folds >= 2 and 0 <= fold < folds, got fold={fold}, folds={folds}")
    if len(ordered) < folds:
        raise ValueError(f"fold_split: {len(ordered)} non-test volume(s) cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(ordered))
    parts = np.array_split(np.array([ordered[k] for k in order]), int(folds))
    val = sorted(int(v) for v in parts[int(fold)])
    train = sorted(int(v) for i, part in enumerate(parts) if i != int(fold) for v in part)
    return train, val


def run_splits(config: Config, cache_dir: str | os.PathLike) -> dict[str, list[int]]:
    """The config's train / val / test split of the cached volumes.

    Args:
        config: ``val_fraction``, ``test_fraction``, ``split_seed``.
        cache_dir: a finished cache.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (volume ids).
    """
    from tumorlib.data.cache import cached_volume_ids

    return split_ids(config, cached_volume_ids(cache_dir))


def load_splits(path: str | os.PathLike, volume_ids: Iterable[int] | None = None) -> dict[str, list[int]]:
    """Read a run's ``splits.json``, checked like any input (it may have been edited by hand).

    Args:
        path: the ``splits.json`` file.
        volume_ids: the volumes that exist (a cache's); None: not checked.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, sorted ids.

    Raises:
        ValueError: not JSON, not an object with ``train``, ``val`` and ``test`` lists of integer ids,
            an id in two splits, or ids missing from ``volume_ids`` (each names the file).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err}); restore it, or start a new run") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object with {', '.join(SPLIT_NAMES)} lists of volume ids, "
                         f"got a JSON {type(raw).__name__}")
    missing = [k for k in SPLIT_NAMES if k not in raw]
    if missing:
        raise ValueError(f"{path}: no {', '.join(repr(k) for k in missing)} split; it must hold "
                         f"{', '.join(SPLIT_NAMES)} lists of volume ids")
    splits: dict[str, list[int]] = {}
    for name in SPLIT_NAMES:
        ids = raw[name]
        if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
            raise ValueError(f"{path}: the {name} split must be a list of integer volume ids, got {ids!r}"[:300])
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: the {name} split lists a volume twice")
        splits[name] = sorted(ids)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(splits[a]) & set(splits[b]))
        if both:
            raise ValueError(f"{path}: volumes {both} are in both the {a} and the {b} split; the splits must "
                             "be disjoint")
    if volume_ids is not None:
        known = {int(v) for v in volume_ids}
        for name in SPLIT_NAMES:
            absent = sorted(set(splits[name]) - known)
            if absent:
                raise ValueError(f"{path}: {name} volumes {absent} are not in the cache; was the run trained "
                                 "on other data?")
    return splits


def run_split(run_dir: str | os.PathLike, config: Config, volume_ids: Sequence[int], split: str) -> list[int]:
    """The volume ids of one split of a run.

    Uses ``RUN/splits.json`` when present, else recomputes ``split_ids`` with the config's
    fractions and seed (what training does).

    Args:
        run_dir: the run folder.
        config: the run's config.
        volume_ids: the volumes in the cache.
        split: ``train``, ``val``, ``test`` or ``all``.

    Returns:
        Sorted ids.

    Raises:
        ValueError: an unknown split name, or split volumes missing from the cache.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    ids = sorted(int(v) for v in volume_ids)
    if split == "all":
        return ids
    path = Path(run_dir) / "splits.json"
    if path.is_file():
        chosen = load_splits(path)[split]
        missing = sorted(set(chosen) - set(ids))
        if missing:
            raise ValueError(f"{path}: {split} volumes {missing} are not in the cache; was the run trained "
                             "on other data?")
        return chosen
    return split_ids(config, ids)[split]
