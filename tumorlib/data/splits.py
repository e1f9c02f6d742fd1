"""Deterministic train/validation/test split of volume ids (one volume per patient in BraTS2020)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["split_volumes"]


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
