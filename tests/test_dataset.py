"""Tests for tumorlib.data.dataset: patches, determinism, the RAM cache bound, loaders and sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tumorlib.core.config import get_config
from tumorlib.data.cache import load_cache_index, load_cached_volume
from tumorlib.data.dataset import BraTS3DDataset, EpochSampler, default_num_workers, make_loader
from phantom_cache import PATCH, SHAPES, build_phantom_cache

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_phantom_cache(tmp_path_factory.mktemp("ds"))


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_shapes_and_dtypes(cache):
    ds = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH)
    assert len(ds) == 3
    image, mask = ds[0]
    assert image.shape == (4, *PATCH) and image.dtype == torch.float16
    assert mask.shape == (3, *PATCH) and mask.dtype == torch.uint8
    ds32 = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, dtype="float32")
    image32, _ = ds32[0]
    assert image32.dtype == torch.float32 and torch.equal(image32, image.float())


def test_patch_equals_the_cached_region(cache):
    ds = BraTS3DDataset(cache, [1, 3], patch_size=PATCH, samples_per_epoch=20, seed=4)
    index = load_cache_index(cache)
    for i in range(20):
        plan = ds.plan(i)
        image, mask = ds[i]
        vol_img, vol_mask = load_cached_volume(cache, plan.volume_id, index=index)
        sl = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(plan.start, PATCH))
        np.testing.assert_array_equal(image.numpy(), vol_img[sl])
        np.testing.assert_array_equal(mask.numpy(), vol_mask[sl])


def test_deterministic_per_seed_epoch_index(cache):
    a = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, samples_per_epoch=6, seed=1)
    b = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, samples_per_epoch=6, seed=1)
    b[5], b[2]  # another access order, another RAM cache state
    a.set_epoch(3)
    assert all(_same(a[i], b[(3, i)]) for i in range(6))
    assert all(_same(a[(0, i)], b[i]) for i in range(6))
    plans0 = [a.plan(i, epoch=0) for i in range(6)]
    plans1 = [a.plan(i, epoch=1) for i in range(6)]
    assert [p.start for p in plans0] != [p.start for p in plans1]
    c = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, samples_per_epoch=6, seed=2)
    assert [c.plan(i).start for i in range(6)] != [p.start for p in plans0]


def test_each_epoch_visits_volumes_evenly(cache):
    ds = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, samples_per_epoch=7)
    for epoch in range(3):
        counts = Counter(ds.plan(i, epoch).volume_id for i in range(7))
        assert sorted(counts.values()) == [2, 2, 3]
    assert len(ds) == 7


def test_tumour_centred_share(cache):
    ds = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, tumor_prob=0.6, samples_per_epoch=3000)
    plans = [ds.plan(i) for i in range(3000)]
    share = np.mean([p.tumour_centred for p in plans])
    assert abs(share - 0.6) < 0.04  # 4.5 binomial standard deviations
    for i, p in enumerate(plans[:60]):
        if p.tumour_centred:
            assert ds[i][1].any()  # the chosen tumour voxel lies inside the patch
    none = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, tumor_prob=0.0, samples_per_epoch=200)
    assert not any(none.plan(i).tumour_centred for i in range(200))
    every = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, tumor_prob=1.0, samples_per_epoch=30)
    assert all(every[i][1].any() for i in range(30))


def test_tumour_centred_patches_hold_more_tumour(cache):
    centred = BraTS3DDataset(cache, [1, 2, 3], patch_size=(8, 16, 16), tumor_prob=1.0, samples_per_epoch=60)
    uniform = BraTS3DDataset(cache, [1, 2, 3], patch_size=(8, 16, 16), tumor_prob=0.0, samples_per_epoch=60)
    frac_c = np.mean([centred[i][1].any(0).float().mean().item() for i in range(60)])
    frac_u = np.mean([uniform[i][1].any(0).float().mean().item() for i in range(60)])
    assert frac_c > 2 * frac_u


def test_small_volume_is_zero_padded(cache):
    ds = BraTS3DDataset(cache, [4], patch_size=PATCH, samples_per_epoch=3)
    vol_img, vol_mask = load_cached_volume(cache, 4)
    d, h, w = vol_img.shape[1:]
    assert d < PATCH[0] and h < PATCH[1] and w < PATCH[2]
    image, mask = ds[0]
    assert image.shape == (4, *PATCH)
    off = [(p - s) // 2 for p, s in zip(PATCH, (d, h, w))]
    inner = (slice(None), slice(off[0], off[0] + d), slice(off[1], off[1] + h), slice(off[2], off[2] + w))
    np.testing.assert_array_equal(image[inner].numpy(), vol_img)
    np.testing.assert_array_equal(mask[inner].numpy(), vol_mask)
    outside_img, outside_mask = image.clone(), mask.clone()
    outside_img[inner], outside_mask[inner] = 0, 0
    assert not outside_img.any() and not outside_mask.any()  # zeros everywhere else


def test_ram_cache_is_bounded_in_bytes(cache):
    index = load_cache_index(cache)
    sizes = {}
    for v in (1, 2, 3):
        img, msk = load_cached_volume(cache, v, index=index)
        sizes[v] = img.nbytes + msk.nbytes
    bound = sizes[1] + sizes[2] + sizes[3] - 1  # never room for all three
    ds = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, ram_cache_bytes=bound, samples_per_epoch=30)
    for i in range(30):
        ds[i]
        assert 0 < ds.ram_cache_nbytes <= bound
        assert ds.ram_cache_nbytes == sum(sizes[v] for v in ds._ram)
    # least recently used goes first
    assert sizes[2] <= sizes[3]
    ds2 = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, ram_cache_bytes=sizes[1] + sizes[3])
    for v in (1, 2, 1, 3):
        ds2._volume(v)
    assert list(ds2._ram) == [1, 3]
    off = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, ram_cache_bytes=0)
    assert _same(off[0], ds2[0]) and off.ram_cache_nbytes == 0
    assert ds2.__getstate__()["_ram"] == {}  # workers start empty


def test_augmentation(cache):
    plain = BraTS3DDataset(cache, [1, 2], patch_size=PATCH, samples_per_epoch=16, seed=5)
    aug = BraTS3DDataset(cache, [1, 2], patch_size=PATCH, samples_per_epoch=16, seed=5, augment=True,
                         intensity_aug=True)
    flipped = 0
    for i in range(16):
        plan = aug.plan(i)
        (x0, m0), (x1, m1) = plain[i], aug[i]
        assert plain.plan(i).start == plan.start
        dims = [a + 1 for a, f in enumerate(plan.flips) if f]
        flipped += bool(dims)
        ref_m = torch.flip(m0, dims) if dims else m0
        assert torch.equal(m1, ref_m)
        ref_x = torch.flip(x0, dims) if dims else x0
        assert torch.equal(x1 == 0, ref_x == 0)  # background stays exactly 0
        inside = ref_x != 0
        expected = ref_x.float() * torch.from_numpy(plan.scale)[:, None, None, None] \
            + torch.from_numpy(plan.shift)[:, None, None, None]
        torch.testing.assert_close(x1.float()[inside], expected[inside], atol=2e-2, rtol=1e-2)
    assert 0 < flipped < 16


def test_flips_cover_the_tta_axes_and_intensity_is_optional(cache):
    from tumorlib.data.patches import SPATIAL_FLIP_AXES
    from tumorlib.inference.sliding_window import FLIP_AXES

    flips = BraTS3DDataset(cache, [1, 2], patch_size=PATCH, samples_per_epoch=200, seed=3, augment=True)
    plans = [flips.plan(i, e) for e in range(2) for i in range(200)]
    assert all(p.scale is None and p.shift is None for p in plans)  # flips only
    seen = {tuple(a + 2 for a, f in enumerate(p.flips) if f) for p in plans}
    assert seen == set(FLIP_AXES)  # every combination test-time augmentation averages over
    for axis in SPATIAL_FLIP_AXES:  # each axis flipped about half the time
        share = np.mean([p.flips[axis] for p in plans])
        assert 0.4 < share < 0.6, (axis, share)
    again = BraTS3DDataset(cache, [1, 2], patch_size=PATCH, samples_per_epoch=200, seed=3, augment=True)
    assert [again.plan(i, 1) for i in range(200)] == plans[200:]  # a function of (seed, epoch, index)
    assert [again.plan(i, 0).flips for i in range(200)] != [p.flips for p in plans[200:]]


def test_class_first_sampling_balances_the_classes(cache):
    """Class-first sampling centres patches on each class present about equally often; voxel sampling
    follows the classes' voxel counts."""
    ids = [1, 2, 3]
    by = {}
    for rule in ("class", "voxel"):
        ds = BraTS3DDataset(cache, ids, patch_size=PATCH, tumor_prob=1.0, samples_per_epoch=600, seed=1,
                            tumor_sampling=rule)
        hits = np.zeros(3)
        n = 0
        for i in range(len(ds)):
            plan = ds.plan(i)
            if not plan.tumour_centred:
                continue
            _, mask = load_cached_volume(cache, plan.volume_id)
            hits += np.asarray(mask[(slice(None), *plan.centre)]) != 0  # the classes of the chosen voxel
            n += 1
        by[rule] = hits / n
    groups = [len(g) for v in ids for g in BraTS3DDataset(cache, [v], tumor_sampling="class").class_coords(v)]
    assert groups and min(groups) > 0
    voxel_share = by["voxel"] / by["voxel"].sum()
    class_share = by["class"] / by["class"].sum()
    rare = int(np.argmin(voxel_share))
    assert class_share[rare] > voxel_share[rare] + 0.05  # the rarest class is centred on more often
    assert class_share.max() - class_share.min() < voxel_share.max() - voxel_share.min()
    with pytest.raises(ValueError, match="tumor_sampling must be one of class, voxel"):
        BraTS3DDataset(cache, ids, tumor_sampling="uniform")


def test_loader_workers_give_identical_batches(cache):
    cfg = get_config("ci", batch_size=2)
    batches = {}
    for workers in (0, 2):
        ds = BraTS3DDataset(cache, [1, 2, 3], patch_size=PATCH, samples_per_epoch=6, seed=7)
        loader = make_loader(ds, cfg, shuffle=True, num_workers=workers)
        assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
        out = []
        for epoch in (1, 2):  # persistent workers follow set_epoch of the main process
            ds.set_epoch(epoch)
            out.append([b for b in loader])
        batches[workers] = out
    for epoch in range(2):
        assert len(batches[0][epoch]) == 3
        for b0, b2 in zip(batches[0][epoch], batches[2][epoch]):
            assert b0[0].shape == (2, 4, *PATCH) and _same(b0, b2)
    assert not _same(batches[0][0][0], batches[0][1][0])


def test_epoch_sampler_shards_ranks():
    class Fake:
        epoch = 3

        def __len__(self):
            return 11

    shards = [list(EpochSampler(Fake(), shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12 by wrapping around
    flat = [i for s in shards for _, i in s]
    assert set(flat) == set(range(11)) and len(set(flat)) == 11
    assert all(e == 3 for s in shards for e, _ in s)
    dropped = [list(EpochSampler(Fake(), rank=r, world_size=3, drop_last=True)) for r in range(3)]
    assert sum(len(s) for s in dropped) == 9
    assert [i for _, i in EpochSampler(Fake())] == list(range(11))
    with pytest.raises(ValueError, match="rank 3"):
        EpochSampler(Fake(), rank=3, world_size=3)


def test_loader_defaults(cache, monkeypatch):
    ds = BraTS3DDataset(cache, [1], patch_size=PATCH)
    assert make_loader(ds, get_config("ci")).num_workers == 0  # the ci preset says 0
    auto = make_loader(ds, get_config("full"))  # None: chosen per platform
    assert auto.num_workers == default_num_workers() >= 1
    assert auto.batch_size == 2 and auto.persistent_workers
    monkeypatch.setattr("sys.platform", "win32")
    assert default_num_workers() == 0
    assert make_loader(ds, get_config("full")).num_workers == 0  # the Windows default
    assert make_loader(ds, get_config("full"), num_workers=2).num_workers == 2  # asked for: spawn works


def test_errors(cache):
    with pytest.raises(KeyError, match="volume"):
        BraTS3DDataset(cache, [1, 99])
    with pytest.raises(ValueError, match="at least one"):
        BraTS3DDataset(cache, [])
    with pytest.raises(ValueError, match="patch_size"):
        BraTS3DDataset(cache, [1], patch_size=(16, 32))
    with pytest.raises(ValueError, match="tumor_prob"):
        BraTS3DDataset(cache, [1], tumor_prob=1.5)
    with pytest.raises(IndexError):
        BraTS3DDataset(cache, [1])[5]
