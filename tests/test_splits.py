"""Tests for tumorlib.data.splits."""

from __future__ import annotations

import pytest

from tumorlib.data.splits import split_volumes


def test_sizes_on_paper():
    train, val, test = split_volumes(range(1, 21), val=0.15, test=0.15, seed=42)
    assert (len(train), len(val), len(test)) == (14, 3, 3)  # round(0.15 * 20) = 3


def test_disjoint_cover_sorted():
    ids = [5, 17, 3, 100, 42, 8, 9, 11, 64, 70]
    train, val, test = split_volumes(ids)
    assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
    assert sorted(train + val + test) == sorted(ids)
    assert all(part == sorted(part) for part in (train, val, test))


def test_deterministic_and_order_independent():
    ids = list(range(10, 60, 3))
    assert split_volumes(ids, seed=7) == split_volumes(list(reversed(ids)), seed=7)
    assert split_volumes(ids, seed=7) != split_volumes(ids, seed=8)


def test_small_sets_keep_one_each():
    train, val, test = split_volumes([1, 2, 3])
    assert (len(train), len(val), len(test)) == (1, 1, 1)
    train, val, test = split_volumes([1, 2, 3, 4], val=0.0, test=0.25)
    assert val == [] and len(test) == 1 and len(train) == 3


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        ([1, 2], {}, "cannot give"),
        ([1, 1, 2, 3], {}, "duplicate"),
        ([1, 2, 3, 4], {"val": 0.6, "test": 0.5}, "val \\+ test < 1"),
        ([1, 2, 3, 4], {"val": -0.1}, "val"),
    ],
)
def test_errors(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_volumes(ids, **kwargs)
