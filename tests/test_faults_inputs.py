"""Fault injection, what the commands read: bad Kaggle HDF5 slices and meta_data.csv, bad NIfTI cases,
corrupt or foreign checkpoints (a pickled command is never run), hand-edited config.json, splits.json and
index.json, and inputs that would give a silently wrong result (another channel order or geometry than the
run's) are refused naming the file or value, or give the right result; no input file is changed.

The helpers are in faults_cli.py, the shared folders (h3) in conftest.py.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from tumorlib.data import list_volumes, load_volume

from faults_cli import (cache_args, clean, copy_tree, nifti_case, refused, rewrite_slice, run_main, slice_folder,
                        synth, train_args, tree_hash)


# ------------------------------------------------------------------ the Kaggle reader: bad data is named


def _slice(folder: Path, vid, s, image=None, mask=None, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    if image is None:  # four distinct channels, background (row 0) exactly 0: a plausible raw slice
        image = np.arange(1.0, 6 * 6 * 4 + 1).reshape(6, 6, 4)
        image[0] = 0
    mask = np.zeros((6, 6, 3), np.uint8) if mask is None else mask
    path = folder / (name or f"volume_{vid}_slice_{s}.h5")
    with h5py.File(path, "w") as f:
        f["image"] = image
        f["mask"] = mask
    return path


@pytest.mark.parametrize("image,mask,message", [
    (None, np.full((6, 6, 3), 0.5), r"mask values must be 0 or 1, found \[0.5\] \(float64\)"),
    (None, np.full((6, 6, 3), 2, np.uint8), r"mask values must be 0 or 1, found \[2\]"),
    (np.full((6, 6, 4), 1e39), None, r"image values up to 1e\+39 overflow float32"),
    (np.full((6, 6, 4), np.nan), None, r"image holds NaN or inf values"),
    (np.bytes_(b"not an image"), None, r"image holds \|S12 values \('S'\), not intensities"),
    (None, "mask as text", r"mask holds \|S12 values \('S'\), not numbers"),
    (None, np.array(["a", "b"], dtype=h5py.string_dtype()), r"mask holds object values \('O'\), not numbers"),
])
def test_reader_bad_slice_values_name_the_file(tmp_path, image, mask, message):
    path = _slice(tmp_path, 1, 0, image=image, mask=mask)
    digest = tree_hash(tmp_path)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        load_volume(tmp_path, 1)
    assert tree_hash(tmp_path) == digest


def test_reader_warns_about_non_integer_ids(tmp_path):
    _slice(tmp_path, 1, 0)
    _slice(tmp_path, 0, 0, name="volume_1a_slice_0.h5")
    _slice(tmp_path, 0, 0, name="volume_2_slice_x.h5")
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) whose volume id or slice index is not an integer"):
        assert list_volumes(tmp_path) == [1]


def test_reader_zero_padded_ids_are_read_consistently(tmp_path):
    for s in range(3):
        _slice(tmp_path, 7, s, name=f"volume_007_slice_{s}.h5")
    assert list_volumes(tmp_path) == [7]
    image, _ = load_volume(tmp_path, 7)  # listed as 7 and readable as 7: no self-contradicting message
    assert image.shape == (4, 3, 6, 6)
    _slice(tmp_path, 7, 1)
    with pytest.raises(ValueError, match=r"volume 7: slice 1 found twice: .*volume_0*7_slice_1.h5 and "):
        load_volume(tmp_path, 7)


def test_reader_missing_trailing_slices(tmp_path):
    from tumorlib.data import make_synthetic

    root = tmp_path / "d"
    data = make_synthetic(root, 3, (8, 24, 24), seed=0)
    for s in (6, 7):
        (data / f"volume_2_slice_{s}.h5").unlink()
    digest = tree_hash(root)
    with pytest.raises(ValueError, match=rf"volume 2: 6 slices in {data} but {data / 'meta_data.csv'} lists 8: "
                                          r"slice\(s\) 6..7 are missing"):
        load_volume(root, 2)
    assert tree_hash(root) == digest
    (data / "meta_data.csv").unlink()  # without the CSV: the other volumes' depth is the reference
    with pytest.warns(UserWarning, match=r"volume 2: 6 slices .* most volumes there have 8: trailing slices"):
        image, _ = load_volume(root, 2)
    assert image.shape[1] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(root, 1)  # a complete volume: no warning


def test_reader_truncated_slice_names_the_file(tmp_path):
    path = _slice(tmp_path, 1, 0)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OSError, match=f"^{path}: unreadable HDF5 file"):
        load_volume(tmp_path, 1)


# ------------------------------------------------------------ bad HDF5 in the Kaggle layout, through the cache command


def _img(h3_data, transform):
    with h5py.File(slice_folder(h3_data) / "volume_2_slice_3.h5", "r") as f:
        return transform(f["image"][()], f["mask"][()])


H5_BAD = {
    "image_3_channels": lambda im, m: {"image": im[..., :3]},
    "image_4d_extra_dim": lambda im, m: {"image": im[..., None]},
    "image_2d": lambda im, m: {"image": im[..., 0]},
    "image_other_in_plane_size": lambda im, m: {"image": im[:-1]},
    "image_transposed_channels_first": lambda im, m: {"image": np.ascontiguousarray(np.moveaxis(im, -1, 0))},
    "mask_4_channels": lambda im, m: {"mask": np.concatenate([m, m[..., :1]], -1)},
    "mask_2d": lambda im, m: {"mask": m[..., 0]},
    "mask_other_in_plane_size": lambda im, m: {"mask": m[:, :-2]},
    "image_complex": lambda im, m: {"image": im.astype(np.complex128)},
    "image_plus_inf": lambda im, m: {"image": np.where(np.arange(im.size).reshape(im.shape) == 7, np.inf, im)},
    "image_minus_inf": lambda im, m: {"image": np.where(np.arange(im.size).reshape(im.shape) == 7, -np.inf, im)},
    "image_one_nan": lambda im, m: {"image": np.where(np.arange(im.size).reshape(im.shape) == 7, np.nan, im)},
    "mask_nan": lambda im, m: {"mask": np.where(np.arange(m.size).reshape(m.shape) == 5, np.nan, m.astype(float))},
    "mask_value_3": lambda im, m: {"mask": np.where(np.arange(m.size).reshape(m.shape) == 5, 3, m).astype(np.uint8)},
    "mask_negative": lambda im, m: {"mask": np.where(np.arange(m.size).reshape(m.shape) == 5, -1, m).astype(np.int8)},
    "mask_bool_dtype_is_fine": lambda im, m: {"mask": m.astype(bool)},
    "image_int16_is_fine": lambda im, m: {"image": im.astype(np.int16)},
    "image_float32_is_fine": lambda im, m: {"image": im.astype(np.float32)},
    "no_image_dataset": lambda im, m: {"drop": ("image",)},
    "no_mask_dataset": lambda im, m: {"drop": ("mask",)},
    "empty_image": lambda im, m: {"image": np.zeros((0, 24, 4))},
}


H5_FINE = {"mask_bool_dtype_is_fine", "image_int16_is_fine", "image_float32_is_fine"}


@pytest.mark.parametrize("case", sorted(H5_BAD))
def test_h3_bad_hdf5_slice_is_named_by_cache(h3, tmp_path, case):
    data = copy_tree(h3["data"], tmp_path / "data")
    target = slice_folder(data) / "volume_2_slice_3.h5"
    rewrite_slice(target, **_img(data, H5_BAD[case]))
    digest = tree_hash(data)
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    if case in H5_FINE:
        assert code == 0 and "Traceback" not in err, err
    else:
        refused(code, err, "volume_2_slice_3.h5")
    assert tree_hash(data) == digest


@pytest.mark.parametrize("case", ["empty_file", "random_bytes", "directory", "symlink_loop", "image_is_a_group"])
def test_h3_unreadable_slice_file_is_named(h3, tmp_path, case):
    data = copy_tree(h3["data"], tmp_path / "data")
    target = slice_folder(data) / "volume_2_slice_3.h5"
    target.unlink()
    if case == "empty_file":
        target.write_bytes(b"")
    elif case == "random_bytes":
        target.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "directory":
        target.mkdir()
    elif case == "image_is_a_group":
        with h5py.File(target, "w") as f:
            f.create_group("image")
            f["mask"] = np.zeros((24, 24, 3), np.uint8)
    else:
        target.symlink_to(target)
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    refused(code, err, "volume_2_slice_3.h5")


@pytest.mark.parametrize("missing", [0, 3])
def test_h3_missing_slice_is_named(h3, tmp_path, missing):
    data = copy_tree(h3["data"], tmp_path / "data")
    (slice_folder(data) / f"volume_2_slice_{missing}.h5").unlink()
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    refused(code, err, f"slice {missing}", f"slice_{missing}", f"slice(s) {missing}")


def test_h3_extra_slice_beyond_meta_depth(h3, tmp_path):
    """meta_data.csv lists 8 slices; a 9th appears: refused naming it or meta_data.csv (never silently used)."""
    data = copy_tree(h3["data"], tmp_path / "data")
    shutil.copy(slice_folder(data) / "volume_2_slice_7.h5", slice_folder(data) / "volume_2_slice_8.h5")
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    refused(code, err, "volume_2_slice_8.h5", "meta_data.csv")


def _meta(data: Path) -> Path:
    return slice_folder(data) / "meta_data.csv"


META_LIES = {
    "depth_larger": lambda t: t.replace(",2,7", ",2,7\n" + "x,0,2,8\nx,0,2,9"),
    "unknown_volume_id": lambda t: t + "volume_9_slice_0.h5,0,9,0\n",
    "binary_garbage": lambda t: "\x00\xff\xfe garbage \x00",
    "wrong_columns": lambda t: "a,b,c\n1,2,3\n",
    "depth_not_a_number": lambda t: t.replace(",2,7", ",two,seven"),
    "empty": lambda t: "",
}


@pytest.mark.parametrize("lie", sorted(META_LIES))
def test_h3_lying_meta_data_csv(h3, tmp_path, lie):
    """A meta_data.csv that lies: a refusal naming meta_data.csv, or the volumes that are really there."""
    data = copy_tree(h3["data"], tmp_path / "data")
    meta = _meta(data)
    meta.write_text(META_LIES[lie](meta.read_text()), errors="surrogateescape")
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    if lie == "depth_larger":
        refused(code, err, "meta_data.csv")
    else:
        clean(code, err, "meta_data.csv")
        if code == 0:
            index = json.loads((tmp_path / "cache" / "index.json").read_text())
            assert index["volume_ids"] == [1, 2, 3]


def _cache_names_volume_2_or_keeps_it_finite(data, tmp_path):
    """Cache ``data``: refused naming volume 2, or cached with volume 2 finite everywhere."""
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    clean(code, err, "volume 2", "volume_2")
    if code == 0:
        assert np.isfinite(np.load(tmp_path / "cache" / "v2_img.npy").astype(np.float32)).all()


def test_h3_all_zero_volume_is_named_or_cached_finite(h3, tmp_path):
    data = copy_tree(h3["data"], tmp_path / "data")
    for s in range(8):
        rewrite_slice(slice_folder(data) / f"volume_2_slice_{s}.h5", image=np.zeros((24, 24, 4)),
                      mask=np.zeros((24, 24, 3), np.uint8))
    _cache_names_volume_2_or_keeps_it_finite(data, tmp_path)


def test_h3_constant_channel_is_named_or_cached_finite(h3, tmp_path):
    """One modality constant over the brain: its z-score has std 0; never NaN in the cache."""
    data = copy_tree(h3["data"], tmp_path / "data")
    for s in range(8):
        path = slice_folder(data) / f"volume_2_slice_{s}.h5"
        with h5py.File(path, "r") as f:
            im = f["image"][()]
        im[..., 1] = np.where(im[..., 0] > 0, 5.0, 0.0)
        rewrite_slice(path, image=im)
    _cache_names_volume_2_or_keeps_it_finite(data, tmp_path)


def test_h3_huge_but_float32_values_do_not_overflow_the_float16_cache(h3, tmp_path):
    data = copy_tree(h3["data"], tmp_path / "data")
    path = slice_folder(data) / "volume_2_slice_3.h5"
    with h5py.File(path, "r") as f:
        im = f["image"][()]
    im[10, 10, 0] = 1e30
    rewrite_slice(path, image=im)
    code, err = run_main(*cache_args(data, tmp_path / "cache"))
    clean(code, err, "volume_2_slice_3.h5")
    if code == 0:
        assert np.isfinite(np.load(tmp_path / "cache" / "v2_img.npy").astype(np.float32)).all()


def test_h3_empty_data_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_main(*cache_args(tmp_path / "empty", tmp_path / "cache"))
    refused(code, err, tmp_path / "empty")
    assert not (tmp_path / "cache" / "index.json").exists()


# ------------------------------------------------------------------ NIfTI cases


def test_nifti_truncated_file_one_line(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = nifti_case(tmp_path / "case", shape=(40, 40, 30))  # random data: the header survives the cut
    t2 = case / "case_t2.nii.gz"
    raw = gzip.decompress(t2.read_bytes())
    t2.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    digest = tree_hash(case)
    with pytest.raises(OSError, match=f"^{t2}: truncated or corrupt NIfTI data") as info:
        load_nifti_case(case)
    assert "\n" not in str(info.value)
    assert tree_hash(case) == digest


def test_nifti_voxel_sizes_must_agree(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = nifti_case(tmp_path / "case", zooms={"t2": (1.0, 1.0, 2.0)})
    with pytest.raises(ValueError, match=rf"{case / 'case_t2.nii.gz'}: voxel size \(1.0, 1.0, 2.0\) mm differs "
                                         rf"from {case / 'case_t1.nii.gz'} \(1.0, 1.0, 1.0\) mm"):
        load_nifti_case(case)


def test_nifti_all_zero_modality_refused(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = nifti_case(tmp_path / "case", zero="flair")
    with pytest.raises(ValueError, match=f"{case / 'case_flair.nii.gz'}: every voxel is 0"):
        load_nifti_case(case)


def test_nifti_shape_mismatch_names_both_files(tmp_path):
    from tumorlib.io.nifti import load_nifti_case

    case = nifti_case(tmp_path / "case")
    nifti_case(tmp_path / "other", shape=(6, 7, 4))
    os.replace(tmp_path / "other" / "case_t1ce.nii.gz", case / "case_t1ce.nii.gz")
    with pytest.raises(ValueError, match=rf"case_t1ce.nii.gz: shape \(6, 7, 4\) differs from {case / 'case_t1.nii.gz'}"):
        load_nifti_case(case)


MODS = ("t1", "t1ce", "t2", "flair")


def _nifti_from_kaggle(h3_data, case: Path, vid=1, order=MODS, affine=None, seg=True):
    """A NIfTI case (H, W, D) with the channels of a Kaggle volume; ``order`` names the file each channel goes to."""
    import nibabel as nib

    from tumorlib.data import load_volume

    image, mask = load_volume(h3_data, vid)  # (4, D, H, W) in the canonical order t1, t1ce, t2, flair
    case.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else affine
    for channel, name in zip(image, order):
        nib.save(nib.Nifti1Image(np.transpose(channel, (1, 2, 0)).astype(np.float32), affine),
                 case / f"{case.name}_{name}.nii.gz")
    if seg:
        labels = np.zeros(image.shape[1:], np.uint8)
        for c, lab in enumerate((1, 2, 4)):
            labels[np.asarray(mask[c]) > 0] = lab
        nib.save(nib.Nifti1Image(np.transpose(labels, (1, 2, 0)), affine), case / f"{case.name}_seg.nii.gz")
    return case


def _nib_rewrite(path: Path, fn):
    import nibabel as nib

    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj), img.affine)
    path.unlink()
    nib.save(nib.Nifti1Image(data, affine), path)


def _nan_at(d):
    d = d.astype(np.float32)
    d[1, 1, 1] = np.nan
    return d


NIFTI_BAD = {
    "t1ce_4d": ("t1ce", lambda d, a: (np.stack([d, d], -1), a)),
    "t2_2d": ("t2", lambda d, a: (d[..., 0], a)),
    "flair_other_shape": ("flair", lambda d, a: (d[:-1], a)),
    "t1_nan": ("t1", lambda d, a: (_nan_at(d), a)),
    "t2_inf": ("t2", lambda d, a: (np.where(d > d.max() - 1, np.inf, d).astype(np.float32), a)),
    "flair_all_zero": ("flair", lambda d, a: (np.zeros_like(d), a)),
    "seg_label_3": ("seg", lambda d, a: (np.where(d == 2, 3, d).astype(np.uint8), a)),
    "seg_label_5": ("seg", lambda d, a: (np.where(d == 2, 5, d).astype(np.uint8), a)),
    "seg_other_shape": ("seg", lambda d, a: (d[:, :-1], a)),
    "seg_fractional": ("seg", lambda d, a: (np.where(d == 2, 0.5, d).astype(np.float32), a)),
    "t1ce_lps_affine": ("t1ce", lambda d, a: (d, np.diag([-1.0, -1.0, 1.0, 1.0]))),
    "t2_shifted_origin": ("t2", lambda d, a: (d, np.array([[1, 0, 0, 50], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))),
}


NIFTI_XFAIL: dict = {}


@pytest.mark.parametrize("case", [pytest.param(c, marks=NIFTI_XFAIL.get(c, ())) for c in sorted(NIFTI_BAD)])
def test_h3_bad_nifti_case_is_named_by_cache(h3, tmp_path, case):
    root = tmp_path / "nifti"
    folder = _nifti_from_kaggle(h3["data"], root / "BraTS20_Training_001")
    mod, fn = NIFTI_BAD[case]
    target = folder / f"{folder.name}_{mod}.nii.gz"
    _nib_rewrite(target, fn)
    digest = tree_hash(root)
    code, err = run_main("cache", "--preset", "ci", "--nifti", root, "--out", tmp_path / "cache", "--workers", "1",
                         "--quiet")
    refused(code, err, target.name)
    assert tree_hash(root) == digest


def test_h3_nifti_ras_and_lps_of_the_same_anatomy_agree_or_are_refused(h3, tmp_path):
    """One modality stored flipped in x and y with an LPS affine is the same anatomy: reoriented, or refused."""
    from tumorlib.io.nifti import load_nifti_case

    ras = _nifti_from_kaggle(h3["data"], tmp_path / "ras" / "case", seg=False)
    lps = copy_tree(ras.parent, tmp_path / "lps") / "case"
    h, w = 24, 24
    flip = np.array([[-1, 0, 0, h - 1], [0, -1, 0, w - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    _nib_rewrite(lps / "case_t2.nii.gz", lambda d, a: (np.ascontiguousarray(d[::-1, ::-1]), flip))
    want = load_nifti_case(ras)
    try:
        got = load_nifti_case(lps)
    except (ValueError, OSError) as exc:
        assert "case_t2.nii.gz" in str(exc) and "\n" not in str(exc)
        return
    want_img = want[0] if isinstance(want, tuple) else want
    got_img = got[0] if isinstance(got, tuple) else got
    np.testing.assert_allclose(np.asarray(got_img), np.asarray(want_img))


@pytest.mark.parametrize("case", ["missing_flair", "two_t1_files", "not_a_folder", "does_not_exist",
                                  "gz_of_garbage", "int16_is_fine"])
def test_h3_nifti_case_folder_problems_in_predict(h3, tmp_path, case):
    import nibabel as nib

    folder = _nifti_from_kaggle(h3["data"], tmp_path / "case", seg=False)
    name = "case_flair.nii.gz"
    if case == "missing_flair":
        (folder / "case_flair.nii.gz").unlink()
        name = "flair"
    elif case == "two_t1_files":
        shutil.copy(folder / "case_t1.nii.gz", folder / "other_t1.nii.gz")
        name = "_t1"
    elif case == "not_a_folder":
        folder = folder / "case_t1.nii.gz"
        name = str(folder)
    elif case == "does_not_exist":
        folder = tmp_path / "nowhere"
        name = str(folder)
    elif case == "gz_of_garbage":
        (folder / "case_flair.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    else:
        _nib_rewrite(folder / "case_t2.nii.gz", lambda d, a: ((d * 10).astype(np.int16), a))
    out = tmp_path / "seg.nii.gz"
    code, err = run_main("predict", "--run", h3["run"], "--nifti", folder, "--out", out, "--quiet")
    if case == "int16_is_fine":
        assert code == 0, err
        seg = np.asarray(nib.load(out).dataobj)
        assert seg.shape == (24, 24, 8) and set(np.unique(seg)) <= {0, 1, 2, 4}
    else:
        refused(code, err, name)
        assert not out.exists()


def _big_case(tmp_path, order):
    """A NIfTI case from one 32x64x64 synthetic volume (about 30,000 brain voxels), files named by ``order``."""
    data = synth(tmp_path / "big", volumes=1, shape=("32", "64", "64"))
    return _nifti_from_kaggle(data, tmp_path / "-".join(order) / "case", order=order, seg=False)


def test_h3_nifti_swapped_modalities_are_noticed(h3, tmp_path):
    """t1 and flair files swapped: predict warns (tumorlib.data.modalities.check_case_order, no labels needed).

    The contrasts settle it only for a case of realistic size: the check is documented to judge cases of at
    least MIN_CASE_VOXELS brain voxels (at 8x24x24 its verdicts were mostly wrong), so this case is 32x64x64.
    """
    swapped = ("flair", "t1ce", "t2", "t1")
    folder = _big_case(tmp_path, swapped)
    code, err = run_main("predict", "--run", h3["run"], "--nifti", folder, "--out", tmp_path / "seg.nii.gz", "--quiet")
    assert "Traceback" not in err
    assert code != 0 or any(w in err.lower() for w in ("modalit", "swap", "order", "contrast")), err


def test_h3_nifti_modality_check_gives_no_false_alarm(h3, tmp_path):
    """The same case with the right names: no warning; a case too small to judge: no claim either way."""
    folder = _big_case(tmp_path, MODS)
    code, err = run_main("predict", "--run", h3["run"], "--nifti", folder, "--out", tmp_path / "seg.nii.gz", "--quiet")
    assert code == 0 and "warning" not in err, err
    from tumorlib.data.modalities import MIN_CASE_VOXELS, check_case_order
    from tumorlib.io.nifti import load_nifti_case

    small = _nifti_from_kaggle(h3["data"], tmp_path / "small" / "case", order=("flair", "t1ce", "t2", "t1"),
                               seg=False)
    image = load_nifti_case(small)[0]
    assert image.any(axis=0).sum() < MIN_CASE_VOXELS and check_case_order(image) is None


# ------------------------------------------------------------------ non-finite training patches


def test_nan_input_is_blamed_not_the_learning_rate(tmp_path):
    """A NaN in the patches: the hint names the input (a finite input that diverges blames --lr above)."""
    import torch

    from tumorlib.core.config import get_config
    from tumorlib.training.loop import fit

    class NaNPatches(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def set_epoch(self, epoch):
            pass

        def __getitem__(self, item):
            image = torch.zeros(4, 16, 32, 32)
            image[0, 0, 0, 0] = float("nan")
            return image, torch.zeros(3, 16, 32, 32, dtype=torch.uint8)

    cfg = get_config("ci", epochs=1, samples_per_epoch=2, val_samples=2, num_workers=0)
    with pytest.raises(FloatingPointError, match=r"no epoch finished, so no checkpoint was written; the input "
                                                 r"patches hold NaN or inf values"):
        fit(cfg, NaNPatches(), NaNPatches(), tmp_path / "run", progress=False)


# ------------------------------------------------------------------ corrupt and foreign checkpoints


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def h3_other_run(h3):
    """A ci run of other features (2-4-8-16) on the same cache: its checkpoint is of another shape."""
    run = h3["base"] / "other_run"
    code, err = run_main(*train_args(h3["cache"], run, "--features", "2,4,8,16"))
    assert code == 0, err
    return run


def _spoil_checkpoint(path: Path, how: str, tmp_path: Path, other_run: Path):
    import torch

    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(len(raw)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "pickled_shell_command":
        torch.save({"model": _Evil(tmp_path / "PWNED"), "epoch": 1}, path)
    elif how == "plain_pickle_shell_command":
        path.write_bytes(pickle.dumps({"model": _Evil(tmp_path / "PWNED")}))
    elif how == "other_shape":
        shutil.copy(other_run / "checkpoints" / path.name, path)
    elif how == "foreign_dict":
        torch.save({"foo": torch.zeros(3)}, path)
    elif how == "nan_weights":
        ck = torch.load(path, map_location="cpu", weights_only=True)
        state = ck.get("model", ck.get("state_dict", ck)) if isinstance(ck, dict) else ck
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point():
                value.fill_(float("nan"))
                break
        torch.save(ck, path)
    else:
        raise AssertionError(how)


SPOILS = ["truncated", "random_bytes", "empty", "text", "pickled_shell_command", "plain_pickle_shell_command",
          "other_shape", "foreign_dict", "nan_weights"]


CKPT_XFAIL: dict = {}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("how", SPOILS)
def test_h3_spoiled_best_model_is_refused_never_run(h3, h3_other_run, tmp_path, how, command, request):
    if (how, command) in CKPT_XFAIL:
        request.applymarker(CKPT_XFAIL[how, command])
    run = copy_tree(h3["run"], tmp_path / "run")
    ckpt = run / "checkpoints" / "best_model.pth"
    _spoil_checkpoint(ckpt, how, tmp_path, h3_other_run)
    digest = tree_hash(run)
    if command == "evaluate":
        args = ["evaluate", "--run", run, "--data", h3["data"], "--cache", h3["cache"], "--out", tmp_path / "m.csv"]
    else:
        args = ["predict", "--run", run, "--data", h3["data"], "--volume", "1", "--out", tmp_path / "p.nii.gz"]
    code, err = run_main(*args, "--quiet")
    assert not (tmp_path / "PWNED").exists(), "the checkpoint's pickled command was executed"
    refused(code, err, ckpt, "best_model.pth")
    assert tree_hash(run) == digest


@pytest.mark.parametrize("how", ["truncated", "pickled_shell_command", "other_shape"])
def test_h3_spoiled_last_checkpoint_on_resume(h3, h3_other_run, tmp_path, how):
    run = copy_tree(h3["run"], tmp_path / "run")
    ckpt = run / "checkpoints" / "last.pth"
    _spoil_checkpoint(ckpt, how, tmp_path, h3_other_run)
    digest = tree_hash(run)
    code, err = run_main(*train_args(h3["cache"], run, "--resume"))
    assert not (tmp_path / "PWNED").exists(), "the checkpoint's pickled command was executed"
    refused(code, err, ckpt, "last.pth")
    assert tree_hash(run) == digest


# ------------------------------------------------------------------ hand-edited config.json / splits.json


def _edit_json(path: Path, fn):
    text = path.read_text()
    try:
        new = fn(json.loads(text))
    except TypeError:
        new = fn(text)
    path.write_text(new if isinstance(new, str) else json.dumps(new))


def _set(key, value):
    def fn(d):
        d[key] = value
        return d
    return fn


def _drop(key):
    def fn(d):
        d.pop(key)
        return d
    return fn


CONFIG_EDITS = {
    "not_json": lambda d: "{not json",
    "a_list": lambda d: [1, 2, 3],
    "epochs_text": _set("epochs", "two"),
    "features_other_length": _set("features", [4, 8]),
    "features_other_values": _set("features", [8, 16, 32, 64]),
    "preset_unknown": _set("preset", "nope"),
    "threshold_out_of_range": _set("threshold", 5),
    "channel_order_repeated": _set("kaggle_channel_order", ["t1", "t1", "t2", "flair"]),
    "patch_size_missing": _drop("patch_size"),
    "patch_size_text": _set("patch_size", "big"),
    "in_channels_3": _set("in_channels", 3),
}


# a missing patch_size reads the default window, which the checkpoint was not trained on: refused (TRAINED_FIELDS)
CONFIG_FINE = {"preset_unknown"}  # every other field is there: evaluating is right


CONFIG_XFAIL = {}


@pytest.mark.parametrize("edit", sorted(CONFIG_EDITS))
def test_h3_hand_edited_config_json_is_named_by_evaluate(h3, tmp_path, edit, request):
    if edit in CONFIG_XFAIL:
        request.applymarker(CONFIG_XFAIL[edit])
    run = copy_tree(h3["run"], tmp_path / "run")
    _edit_json(run / "config.json", CONFIG_EDITS[edit])
    digest = tree_hash(run)
    code, err = run_main("evaluate", "--run", run, "--data", h3["data"], "--cache", h3["cache"], "--out",
                         tmp_path / "m.csv", "--quiet")
    if edit in CONFIG_FINE:
        assert code == 0 and "Traceback" not in err, err
        return
    refused(code, err, "config.json", "best_model.pth")
    assert tree_hash(run) == digest


SPLIT_EDITS = {
    "not_json": lambda d: "[[[",
    "a_list": lambda d: [1, 2, 3],
    "test_ids_missing_from_data": _set("test", [99]),
    "test_ids_text": _set("test", ["three"]),
    "test_empty": _set("test", []),
    "test_overlaps_train": lambda d: {**d, "test": d["test"] + d["train"]},
    "no_test_key": _drop("test"),
}


SPLIT_XFAIL: dict = {}


@pytest.mark.parametrize("edit", sorted(SPLIT_EDITS))
def test_h3_hand_edited_splits_json_is_named_by_evaluate(h3, tmp_path, edit, request):
    if edit in SPLIT_XFAIL:
        request.applymarker(SPLIT_XFAIL[edit])
    run = copy_tree(h3["run"], tmp_path / "run")
    _edit_json(run / "splits.json", SPLIT_EDITS[edit])
    digest = tree_hash(run)
    code, err = run_main("evaluate", "--run", run, "--data", h3["data"], "--cache", h3["cache"], "--split", "test",
                         "--out", tmp_path / "m.csv", "--quiet")
    refused(code, err, "splits.json", *([run] if edit == "test_empty" else []))
    assert tree_hash(run) == digest


@pytest.mark.parametrize("edit", ["test_overlaps_train", "not_json"])
def test_h3_hand_edited_splits_json_is_named_by_resume(h3, tmp_path, edit):
    run = copy_tree(h3["run"], tmp_path / "run")
    _edit_json(run / "splits.json", SPLIT_EDITS[edit])
    digest = tree_hash(run)
    code, err = run_main(*train_args(h3["cache"], run, "--resume"))
    refused(code, err, "splits.json")
    assert tree_hash(run) == digest


# ------------------------------------------------------------------ hand-edited cache index.json


def _vol(key, value, vid="1"):
    def fn(d):
        d["volumes"][vid][key] = value
        return d
    return fn


INDEX_EDITS = {
    "not_json": (lambda d: "{", False),
    "a_list": (lambda d: [], False),
    "volume_ids_unknown_id": (_set("volume_ids", [1, 2, 3, 99]), False),
    "image_file_escapes": (_vol("image_file", "../../x.npy"), True),
    "mask_file_absolute": (_vol("mask_file", "/etc/passwd"), True),
    "shape_text": (_vol("shape", "abc"), False),
    "volumes_empty": (_set("volumes", {}), False),
    "format_foreign": (_set("format", "someone-elses-cache"), False),
    "version_future": (_set("version", 999), False),
    "files_key_escapes": (lambda d: {**d, "volumes": {**d["volumes"], "1": {**d["volumes"]["1"], "files": {
        "../../x.npy": {"blake2b": "0" * 32, "size": 1}}}}}, False),
}


INDEX_XFAIL: dict = {}


@pytest.mark.parametrize("command", ["cache", "train", "evaluate"])
@pytest.mark.parametrize("edit", sorted(INDEX_EDITS))
def test_h3_hand_edited_index_json(h3, tmp_path, edit, command, request):
    """Refused naming index.json (names escaping the folder must be refused), or rebuilt to the right cache."""
    if (edit, command) in INDEX_XFAIL:
        request.applymarker(INDEX_XFAIL[edit, command])
    cache = copy_tree(h3["cache"], tmp_path / "cache")
    fn, must_refuse = INDEX_EDITS[edit]
    _edit_json(cache / "index.json", fn)
    (tmp_path / "x.npy").write_bytes(b"outside")
    if command == "cache":
        args = cache_args(h3["data"], cache)
    elif command == "train":
        args = ["train", "--preset", "ci", "--data", h3["data"], "--cache", cache, "--out", tmp_path / "r",
                "--epochs", "1", "--quiet"]
    else:
        args = ["evaluate", "--run", h3["run"], "--data", h3["data"], "--cache", cache, "--out", tmp_path / "m.csv",
                "--quiet"]
    code, err = run_main(*args)
    assert (tmp_path / "x.npy").read_bytes() == b"outside"
    if must_refuse:
        refused(code, err, "index.json", cache)
        return
    clean(code, err, "index.json", cache)
    if code == 0:  # rebuilt: the same cache as before the edit
        for ref in sorted(h3["cache"].glob("v*.npy")):
            assert (cache / ref.name).read_bytes() == ref.read_bytes(), ref.name


# --------------------------------------- silent wrongness: another channel order or geometry than the run's, no tumour


@pytest.fixture(scope="module")
def h3_other_order_cache(h3):
    cache = h3["base"] / "cache_t1_first"
    code, err = run_main(*cache_args(h3["data"], cache, "--kaggle_channel_order", "t1,t1ce,t2,flair"))
    assert code == 0, err
    return cache


def test_h3_evaluate_with_a_cache_of_another_channel_order_is_refused(h3, h3_other_order_cache, tmp_path):
    code, err = run_main("evaluate", "--run", h3["run"], "--cache", h3_other_order_cache, "--out", tmp_path / "m.csv",
                         "--quiet")
    refused(code, err, "kaggle_channel_order", "channel order")
    assert not (tmp_path / "m.csv").exists()


def test_h3_resume_with_a_cache_of_another_channel_order_is_refused(h3, h3_other_order_cache, tmp_path):
    run = copy_tree(h3["run"], tmp_path / "run")
    digest = tree_hash(run)
    code, err = run_main(*train_args(h3_other_order_cache, run, "--resume", "--epochs", "2"))
    refused(code, err, "kaggle_channel_order", "channel order")
    assert tree_hash(run) == digest


def test_h3_predict_with_another_channel_order_is_refused(h3, tmp_path):
    code, err = run_main("predict", "--run", h3["run"], "--data", h3["data"], "--volume", 1, "--out",
                         tmp_path / "p.nii.gz", "--kaggle_channel_order", "t1,t1ce,t2,flair", "--quiet")
    refused(code, err, "kaggle_channel_order", "channel order")


def _metrics(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def test_h3_evaluate_with_a_resampled_cache_is_refused_or_equal(h3, tmp_path):
    """A cache built with other geometry (--cache_hw 32) than the run's: refused, or the same scores."""
    cache = tmp_path / "cache32"
    assert run_main(*cache_args(h3["data"], cache, "--cache_hw", "32"))[0] == 0
    ref, got = tmp_path / "ref.csv", tmp_path / "got.csv"
    assert run_main("evaluate", "--run", h3["run"], "--cache", h3["cache"], "--split", "all", "--out", ref,
                    "--quiet")[0] == 0
    code, err = run_main("evaluate", "--run", h3["run"], "--cache", cache, "--split", "all", "--out", got, "--quiet")
    clean(code, err, "cache_hw", cache)
    if code == 0:
        a, b = _metrics(ref), _metrics(got)
        cols = [c for c in a.columns if c.startswith("dice")]
        np.testing.assert_allclose(b[cols].to_numpy(float), a[cols].to_numpy(float), atol=1e-6)


def test_h3_train_on_a_cache_of_another_geometry_than_the_resumed_run(h3, tmp_path):
    run = copy_tree(h3["run"], tmp_path / "run")
    cache = tmp_path / "cache32"
    assert run_main(*cache_args(h3["data"], cache, "--cache_hw", "32"))[0] == 0
    digest = tree_hash(run)
    code, err = run_main(*train_args(cache, run, "--resume"))
    refused(code, err, "cache_hw", cache)
    assert tree_hash(run) == digest


def test_h3_empty_regions_are_scored_not_crashed(h3, tmp_path):
    """No tumour at all in any volume: evaluate still writes one row per volume (Dice of empty vs empty)."""
    data = copy_tree(h3["data"], tmp_path / "data")
    for path in slice_folder(data).glob("volume_*_slice_*.h5"):
        rewrite_slice(path, mask=np.zeros((24, 24, 3), np.uint8))
    cache = tmp_path / "cache"
    assert run_main(*cache_args(data, cache))[0] == 0
    out = tmp_path / "m.csv"
    code, err = run_main("evaluate", "--run", h3["run"], "--data", data, "--cache", cache, "--split", "all",
                         "--out", out, "--quiet")
    assert code == 0 and "Traceback" not in err, err
    assert len(_metrics(out)) == 3
