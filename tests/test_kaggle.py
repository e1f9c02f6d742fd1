"""The Kaggle HDF5 reader: round trips, other writers' folders, and every bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from tumorlib.core.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER
from tumorlib.data import (
    KAGGLE_SUBDIR,
    download_brats2020,
    list_volumes,
    load_metadata,
    load_volume,
    make_phantom,
    write_kaggle_volume,
)


def _write_slices(folder, vid, n_slices, hw=(20, 24), rng=None, skip=(), image_dtype=np.float64):
    """Write a volume the way other code might: raw h5py, one file per slice.

    The image is positive inside a box and exactly 0 around it; the mask channels are disjoint.
    """
    rng = rng or np.random.default_rng(vid)
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.uniform(1, 100, size=(n_slices, *hw, 4)).astype(image_dtype)
    image[:, :3] = image[:, -3:] = image[:, :, :3] = image[:, :, -3:] = 0
    cls = rng.integers(0, 30, size=(n_slices, *hw))
    mask = np.stack([cls == k for k in (1, 2, 3)], axis=-1).astype(np.uint8)
    for s in range(n_slices):
        if s in skip:
            continue
        with h5py.File(folder / f"volume_{vid}_slice_{s}.h5", "w") as f:
            f["image"] = image[s]
            f["mask"] = mask[s]
    return image, mask


def test_synthetic_round_trip(tiny_data):
    assert list_volumes(tiny_data) == [1, 2, 3, 4]
    for vid in (1, 4):
        image, mask = load_volume(tiny_data, vid)
        ref_image, ref_mask = make_phantom((24, 48, 48), seed=0, volume_id=vid)
        assert image.dtype == np.float32 and mask.dtype == np.uint8
        assert image.shape == (4, 24, 48, 48) and mask.shape == (3, 24, 48, 48)
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(mask, ref_mask)


def test_kaggle_layout_and_csvs(tiny_data):
    data_dir = tiny_data / KAGGLE_SUBDIR
    assert (data_dir / "volume_3_slice_23.h5").is_file()
    with h5py.File(data_dir / "volume_3_slice_5.h5") as f:
        assert f["image"].shape == (48, 48, 4) and f["image"].dtype == np.float64
        assert f["mask"].shape == (48, 48, 3) and f["mask"].dtype == np.uint8
    meta = pd.read_csv(data_dir / "meta_data.csv")
    assert list(meta.columns) == ["slice_path", "target", "volume", "slice"]
    assert len(meta) == 4 * 24
    names = pd.read_csv(data_dir / "name_mapping.csv")
    assert "BraTS_2020_subject_ID" in names.columns and "Grade" in names.columns
    surv = pd.read_csv(data_dir / "survival_info.csv")
    assert list(surv.columns) == ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]
    # target marks slices with any tumour voxel
    _, mask = load_volume(tiny_data, 2)
    rows = meta[meta.volume == 2].sort_values("slice")
    np.testing.assert_array_equal(rows.target.to_numpy(), mask.any(axis=(0, 2, 3)).astype(int))


def test_load_metadata(tiny_data):
    meta = load_metadata(tiny_data)
    assert len(meta) == 96 and {"Grade", "BraTS_2020_subject_ID"} <= set(meta.columns)
    assert meta.loc[meta.volume == 3, "BraTS_2020_subject_ID"].iloc[0] == "BraTS20_Training_003"


def test_synthetic_is_deterministic_and_plausible():
    a_img, a_mask = make_phantom((32, 64, 64), seed=3, volume_id=5)
    b_img, b_mask = make_phantom((32, 64, 64), seed=3, volume_id=5)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = make_phantom((32, 64, 64), seed=4, volume_id=5)
    assert not np.array_equal(a_img, c_img)
    brain = (a_img > 0).any(0)
    assert (a_img[:, ~brain] == 0).all()  # skull-stripped: background exactly 0
    assert a_mask.sum(0).max() <= 1  # disjoint classes
    assert not a_mask[:, ~brain].any()  # tumour only inside the brain
    fractions = []
    for vid in range(1, 9):
        img, mask = make_phantom((32, 64, 64), seed=0, volume_id=vid)
        fractions.append(mask.reshape(3, -1).sum(1) / (img > 0).any(0).sum())
    mean = np.mean(fractions, axis=0)
    assert 0.005 < mean[0] < 0.10 and 0.02 < mean[1] < 0.35 and 0.003 < mean[2] < 0.08
    # contrasts: enhancing bright on T1ce, edema bright on FLAIR, compared with white matter
    img, mask = make_phantom((48, 96, 96), seed=0, volume_id=1)
    assert img[1][mask[2] == 1].mean() > 1.3 * img[1][brain_wm(img, mask)].mean()
    assert img[3][mask[1] == 1].mean() > 1.2 * img[3][brain_wm(img, mask)].mean()


def brain_wm(img, mask):
    """Healthy brain voxels (a stand-in for white matter: everything but tumour)."""
    return (img > 0).any(0) & ~mask.any(0)


def test_other_writer_noncontiguous_ids_few_slices(tmp_path):
    root = tmp_path / "download" / "nested"
    expected = {}
    for vid, n in ((7, 5), (42, 3), (113, 9)):
        expected[vid] = _write_slices(root / "data", vid, n)
    assert list_volumes(tmp_path / "download") == [7, 42, 113]
    for vid, (image, mask) in expected.items():
        got_image, got_mask = load_volume(tmp_path / "download", vid)
        # stored FLAIR, T1, T1ce, T2 -> canonical T1, T1ce, T2, FLAIR
        stored = np.moveaxis(image, -1, 0).astype(np.float32)
        np.testing.assert_array_equal(got_image, stored[[1, 2, 3, 0]])
        np.testing.assert_array_equal(got_mask, np.moveaxis(mask, -1, 0))
        assert got_image.shape == (4, image.shape[0], 20, 24)
        # another stored order, given explicitly
        same, _ = load_volume(tmp_path / "download", vid, stored_order=("t1", "t1ce", "t2", "flair"))
        np.testing.assert_array_equal(same, stored)


def test_synth_stores_pack_order_and_reads_back_canonical(tmp_path):
    image, mask = make_phantom((10, 24, 24), seed=1, volume_id=3)
    write_kaggle_volume(tmp_path, 3, image, mask)
    with h5py.File(tmp_path / "volume_3_slice_5.h5") as f:
        stored = f["image"][()]
    for c, name in enumerate(KAGGLE_STORED_ORDER):  # the file holds FLAIR, T1, T1ce, T2
        np.testing.assert_array_equal(stored[..., c], image[CANONICAL_ORDER.index(name), 5])
    got, got_mask = load_volume(tmp_path, 3)
    np.testing.assert_array_equal(got, image)
    np.testing.assert_array_equal(got_mask, mask)
    write_kaggle_volume(tmp_path / "other", 3, image, mask, stored_order=("t2", "t1", "flair", "t1ce"))
    np.testing.assert_array_equal(load_volume(tmp_path / "other", 3, ("t2", "t1", "flair", "t1ce"))[0], image)
    with pytest.raises(ValueError, match="t1 given more than once"):
        load_volume(tmp_path, 3, stored_order=("t1", "t1", "t2", "flair"))
    with pytest.raises(ValueError, match="unknown modality 'pd'"):
        load_volume(tmp_path, 3, stored_order=("pd", "t1", "t2", "flair"))


def test_config_channel_order_field():
    from tumorlib.core.config import get_config, parse_field

    cfg = get_config("ci")
    assert cfg.kaggle_channel_order == KAGGLE_STORED_ORDER
    assert parse_field("kaggle_channel_order", "T1,T1ce,T2,FLAIR") == ("T1", "T1ce", "T2", "FLAIR")
    assert cfg.replace(kaggle_channel_order=["T1", "T1ce", "T2", "FLAIR"]).kaggle_channel_order == CANONICAL_ORDER
    with pytest.raises(ValueError, match="flair missing"):
        cfg.replace(kaggle_channel_order=("t1", "t1ce", "t2"))


def test_warns_on_overlapping_masks(tmp_path):
    image, mask = _write_slices(tmp_path, 4, 3)
    with h5py.File(tmp_path / "volume_4_slice_1.h5", "a") as f:
        m = f["mask"][()]
        m[5, 5] = m[5, 6] = (1, 1, 0)
        m[6, 6] = (1, 1, 1)
        del f["mask"]
        f["mask"] = m
    with pytest.warns(UserWarning, match="volume 4: 3 voxels lie in more than one mask channel"):
        load_volume(tmp_path, 4)


def test_warns_on_normalised_image(tmp_path):
    rng = np.random.default_rng(0)
    for s in range(3):
        with h5py.File(tmp_path / f"volume_6_slice_{s}.h5", "w") as f:
            f["image"] = rng.normal(size=(12, 12, 4))  # z-scored: negative values, no zero background
            f["mask"] = np.zeros((12, 12, 3), np.uint8)
    with pytest.warns(UserWarning, match="volume 6: image looks already normalised"):
        load_volume(tmp_path, 6)
    for s in range(3):  # positive everywhere but no background: normalised to [0, 1] with an offset
        with h5py.File(tmp_path / f"volume_8_slice_{s}.h5", "w") as f:
            f["image"] = rng.uniform(0.1, 1.0, size=(12, 12, 4))
            f["mask"] = np.zeros((12, 12, 3), np.uint8)
    with pytest.warns(UserWarning, match=r"volume 8: .*0\.00% of voxels are exactly 0"):
        load_volume(tmp_path, 8)


def test_raw_volume_reads_without_warnings(tiny_data, tmp_path):
    import warnings

    _write_slices(tmp_path, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(tiny_data, 1)
        load_volume(tmp_path, 2)


def test_error_depth_differs_from_metadata(tmp_path):
    _write_slices(tmp_path, 9, 4)
    _write_slices(tmp_path, 10, 3)
    rows = [(f"/content/data/volume_{v}_slice_{s}.h5", 0, v, s) for v, n in ((9, 5), (10, 3)) for s in range(n)]
    pd.DataFrame(rows, columns=["slice_path", "target", "volume", "slice"]).to_csv(
        tmp_path / "meta_data.csv", index=False)
    assert load_volume(tmp_path, 10)[0].shape[1] == 3
    with pytest.raises(ValueError, match="volume 9: 4 slices in .* but .*meta_data.csv lists 5"):
        load_volume(tmp_path, 9)


def test_error_missing_slice(tmp_path):
    _write_slices(tmp_path, 3, 6, skip={2})
    with pytest.raises(ValueError, match=r"volume 3: slice\(s\) 2 missing"):
        load_volume(tmp_path, 3)


def test_error_unknown_volume_and_empty_folder(tmp_path):
    _write_slices(tmp_path / "a", 3, 2)
    with pytest.raises(KeyError, match="volume 9 not found"):
        load_volume(tmp_path / "a", 9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no volume_"):
        list_volumes(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_volumes(tmp_path / "nowhere")


def test_error_shape_mismatch(tmp_path):
    _write_slices(tmp_path, 1, 3)
    with h5py.File(tmp_path / "volume_1_slice_2.h5", "w") as f:
        f["image"] = np.zeros((20, 20, 4))
        f["mask"] = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="volume_1_slice_2.h5: slice is"):
        load_volume(tmp_path, 1)


@pytest.mark.parametrize(
    ("image", "mask", "pattern"),
    [
        (np.zeros((8, 8, 4)), None, "no 'mask' dataset"),
        (np.zeros((8, 8, 3)), np.zeros((8, 8, 3), np.uint8), r"image must be \(H, W, 4\)"),
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 2), np.uint8), r"mask must be \(H, W, 3\)"),
        (np.full((8, 8, 4), np.nan), np.zeros((8, 8, 3), np.uint8), "NaN or inf"),
        (np.full((8, 8, 4), np.inf), np.zeros((8, 8, 3), np.uint8), "NaN or inf"),
        (np.zeros((8, 8, 4)), np.full((8, 8, 3), 2, np.uint8), "mask values must be 0 or 1"),
    ],
)
def test_error_bad_slice_content(tmp_path, image, mask, pattern):
    with h5py.File(tmp_path / "volume_5_slice_0.h5", "w") as f:
        f["image"] = image
        if mask is not None:
            f["mask"] = mask
    with pytest.raises((KeyError, ValueError), match=pattern) as info:
        load_volume(tmp_path, 5)
    assert "volume_5_slice_0.h5" in str(info.value)


def test_error_unreadable_file(tmp_path):
    (tmp_path / "volume_2_slice_0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(OSError, match="volume_2_slice_0.h5: unreadable"):
        load_volume(tmp_path, 2)


def test_error_missing_image_key(tmp_path):
    with h5py.File(tmp_path / "volume_2_slice_0.h5", "w") as f:
        f["mask"] = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(KeyError, match="no 'image' dataset"):
        load_volume(tmp_path, 2)


def test_load_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta_data.csv"):
        load_metadata(tmp_path)
    (tmp_path / "meta_data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="meta_data.csv: needs columns"):
        load_metadata(tmp_path)


def test_download_uses_kagglehub(monkeypatch, tiny_data):
    kagglehub = pytest.importorskip("kagglehub")
    calls = []

    def fake_download(handle, *args, **kwargs):
        calls.append(handle)
        return str(tiny_data)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    assert download_brats2020() == tiny_data
    assert calls == ["awsaf49/brats2020-training-data"]


def test_download_rejects_wrong_layout(monkeypatch, tmp_path):
    kagglehub = pytest.importorskip("kagglehub")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no volume_"):
        download_brats2020()


# ------------------------------------------------------------------ whole volumes that cannot be scans


def _rewrite_image(folder, vid, n_slices, edit):
    """Replace every slice's image of a volume by ``edit(image (H, W, 4), s)`` (as stored: FLAIR, T1, T1ce, T2)."""
    for s in range(n_slices):
        path = folder / f"volume_{vid}_slice_{s}.h5"
        with h5py.File(path, "a") as f:
            image = edit(f["image"][()], s)
            del f["image"]
            f["image"] = image


@pytest.mark.parametrize("edit,message", [
    (lambda im, s: np.zeros_like(im), r"T1: every voxel is 0 \(an empty or blank modality\)"),
    (lambda im, s: np.full_like(im, 12.5), r"T1: every voxel is 12.5 \(a constant channel"),
    (lambda im, s: np.concatenate([np.zeros_like(im[..., :1]), im[..., 1:]], -1), r"FLAIR: every voxel is 0"),
    (lambda im, s: im[..., [0, 1, 1, 3]], r"T1 and T1ce are identical in every voxel"),
])
def test_implausible_volume_is_refused_naming_volume_and_folder(tmp_path, edit, message):
    _write_slices(tmp_path, 5, 4)
    _rewrite_image(tmp_path, 5, 4, edit)
    with pytest.raises(ValueError, match=rf"^volume 5 \({tmp_path}\)(, |: ){message}") as info:
        load_volume(tmp_path, 5)
    assert "\n" not in str(info.value)


def test_boolean_slices_are_refused_naming_the_file(tmp_path):
    _write_slices(tmp_path, 5, 3)
    _rewrite_image(tmp_path, 5, 3, lambda im, s: im > 50 if s == 1 else im)
    path = tmp_path / "volume_5_slice_1.h5"
    with pytest.raises(ValueError, match=rf"^{path}: image holds bool values .*not intensities"):
        load_volume(tmp_path, 5)


def test_empty_top_and_bottom_slices_are_normal(tmp_path):
    _write_slices(tmp_path, 5, 5)
    _rewrite_image(tmp_path, 5, 5, lambda im, s: np.zeros_like(im) if s in (0, 4) else im)
    image, _ = load_volume(tmp_path, 5)
    assert not image[:, 0].any() and not image[:, 4].any() and image[:, 2].any()
