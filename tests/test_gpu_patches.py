"""Tests for tumorlib.data.gpu_patches: the device-resident sampler cuts BraTS3DDataset's patches exactly.

Run on the CPU device (the code path is the same on CUDA: one flat tensor, slices, flips, casts).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorlib.core.config import get_config
from tumorlib.data.cache import load_cache_index
from tumorlib.data.dataset import BraTS3DDataset, make_loader
from tumorlib.data.gpu_patches import DevicePatchSampler, fits_on_device, resident_nbytes
from phantom_cache import PATCH, SHAPES, build_phantom_cache

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return build_phantom_cache(tmp_path_factory.mktemp("gp"))


def _pair(cache, **kw):
    args = dict(patch_size=PATCH, seed=5, samples_per_epoch=24)
    args.update(kw)
    dtype = args.pop("dtype", "float16")
    return (BraTS3DDataset(cache, list(SHAPES), dtype=dtype, **args),
            DevicePatchSampler(cache, list(SHAPES), device="cpu", dtype=dtype, **args))


def test_resident_nbytes_by_hand(cache):
    index = load_cache_index(cache)
    voxels = sum(int(np.prod(index["volumes"][str(v)]["shape"])) for v in SHAPES)
    assert resident_nbytes(cache) == voxels * 9  # 4 float16 channels + 1 byte of mask bits
    assert resident_nbytes(cache, [1], dtype="float32") == int(np.prod(index["volumes"]["1"]["shape"])) * 17
    sampler = DevicePatchSampler(cache, list(SHAPES), patch_size=PATCH)
    assert sampler.nbytes == resident_nbytes(cache)
    with pytest.raises(KeyError, match="99"):
        resident_nbytes(cache, [99])


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_patches_identical_to_dataset(cache, augment, dtype):
    # augment: flips, intensity scale/shift and class-first tumour sampling
    extra = dict(intensity_aug=True, tumor_sampling="class") if augment else {}
    ds, sampler = _pair(cache, augment=augment, dtype=dtype, **extra)
    for epoch in range(3):
        for i in range(len(ds)):
            image, mask = ds[(epoch, i)]
            d_image, d_mask = sampler[(epoch, i)]
            assert d_image.dtype == image.dtype and d_mask.dtype == torch.uint8
            assert torch.equal(d_image, image), (epoch, i)
            assert torch.equal(d_mask, mask), (epoch, i)
    # the epoch set on the sampler is used for a bare index, as by the dataset
    ds.set_epoch(2)
    sampler.set_epoch(2)
    assert torch.equal(sampler[3][0], ds[3][0])


def test_small_volume_is_zero_padded_and_centred(cache):
    ds, sampler = _pair(cache, tumor_prob=1.0, samples_per_epoch=40)
    seen = 0
    for i in range(len(ds)):
        plan = sampler.plan(i, 0)
        if plan.volume_id != 4:
            continue
        seen += 1
        image, mask = sampler[(0, i)]
        # (8, 12, 10) centred in (16, 32, 32): starts -(16-8)//2 = -4, -10, -11
        assert plan.start == (-4, -10, -11)
        inside = (slice(None), slice(4, 12), slice(10, 22), slice(11, 21))
        outside = torch.ones(PATCH, dtype=torch.bool)
        outside[inside[1:]] = False
        assert (image[:, outside] == 0).all() and (mask[:, outside] == 0).all()
        assert torch.equal(image, ds[(0, i)][0])
    assert seen > 0


def test_tumour_centred_rule(cache):
    index = load_cache_index(cache)
    _, always = _pair(cache, tumor_prob=1.0, samples_per_epoch=30)
    _, never = _pair(cache, tumor_prob=0.0, samples_per_epoch=30)
    for i in range(30):
        plan = always.plan(i, 1)
        has_tumour = len(index["volumes"][str(plan.volume_id)].get("tumor_coords", [])) > 0
        assert plan.tumour_centred == has_tumour
        if has_tumour:  # centred on a tumour voxel (clamped into the volume): the patch holds tumour
            assert always[(1, i)][1].sum() > 0
        assert not never.plan(i, 1).tumour_centred
    # clamping: every start keeps the patch inside a volume at least as large as the patch
    for i in range(30):
        plan = always.plan(i, 1)
        for start, p, size in zip(plan.start, PATCH, SHAPES[plan.volume_id]):
            if size > p:
                assert 0 <= start <= size - p


@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_matches_make_loader(cache, world_size):
    cfg = get_config("ci", seed=5, num_workers=0)
    ds, sampler = _pair(cache, augment=True, samples_per_epoch=11)
    for rank in range(world_size):
        loader = make_loader(ds, cfg, shuffle=True, batch_size=3, rank=rank, world_size=world_size, num_workers=0,
                             pin_memory=False)
        device_loader = sampler.loader(3, shuffle=True, rank=rank, world_size=world_size)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            a, b = list(loader), list(device_loader)
            assert len(a) == len(b) == len(loader) == len(device_loader)
            for (ia, ma), (ib, mb) in zip(a, b):
                assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert len(sampler.loader(3, drop_last=True)) == 11 // 3
    assert all(img.shape[0] == 3 for img, _ in sampler.loader(3, drop_last=True))
    with pytest.raises(ValueError, match="batch_size"):
        sampler.loader(0)


def test_fits_on_device_and_errors(cache):
    assert fits_on_device(1024, "cpu")
    assert not fits_on_device(2**62, "cpu")
    if not torch.cuda.is_available():
        assert not fits_on_device(1024, "cuda")
    with pytest.raises(ValueError, match="fraction"):
        fits_on_device(1, "cpu", fraction=0.0)
    with pytest.raises(KeyError, match="99"):
        DevicePatchSampler(cache, [1, 99], patch_size=PATCH)
    with pytest.raises(ValueError, match="dtype"):
        DevicePatchSampler(cache, [1], patch_size=PATCH, dtype="int8")
