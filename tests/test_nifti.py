"""BraTS NIfTI cases: axis order, labels, errors naming the file, round trips, caching."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorlib.data.cache import load_cache_index, load_cached_volume
from tumorlib.core.brats import channels_to_labels
from tumorlib.core.regions import Decoder
from tumorlib.data import load_volume, make_phantom
from tumorlib.data.cache.nifti import build_nifti_cache
from tumorlib.io.nifti import (
    list_nifti_cases,
    load_nifti_case,
    load_nifti_volume,
    nifti_case_to_kaggle,
    nifti_header,
    nifti_spacing,
)
from tumorlib.io.nifti_write import (
    BRATS2020_AFFINE,
    brats2020_header,
    save_kaggle_segmentation,
    save_nifti_case,
    save_segmentation_nifti,
)


# the one decoder (tumorlib.core.regions.Decoder), under the names these tests read best with
def decode_probabilities(prob, threshold=0.5):
    return Decoder("classes", threshold).labels(prob)


H, W, D = 6, 5, 4  # a NIfTI array is (H, W, D): slice index last
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.2, 0, 126], [0, 0, 2.5, -72], [0, 0, 0, 1]])


def _coded(offset: float) -> np.ndarray:
    """NIfTI array whose value encodes its own index: 1000 h + 100 w + d + offset."""
    h, w, d = np.meshgrid(np.arange(H), np.arange(W), np.arange(D), indexing="ij")
    return (1000 * h + 100 * w + d + offset).astype(np.float32)


def _write_case(folder: Path, name: str = "BraTS20_Training_003", seg: np.ndarray | None = None,
                skip: str | None = None, shapes: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """Write a case with nibabel directly (independent of the code under test)."""
    case = folder / name
    case.mkdir(parents=True)
    for k, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        if modality == skip:
            continue
        data = _coded(0.25 * k)
        if shapes and modality in shapes:
            data = np.zeros(shapes[modality], np.float32)
        nib.save(nib.Nifti1Image(data, AFFINE), str(case / f"{name}_{modality}.nii.gz"))
    if seg is not None:
        nib.save(nib.Nifti1Image(seg, AFFINE), str(case / f"{name}_seg.nii.gz"))
    return case


def _seg() -> np.ndarray:
    seg = np.zeros((H, W, D), np.uint8)
    seg[1, 2, 3] = 1
    seg[4, 0, 1] = 2
    seg[5, 4, 0] = 4
    return seg


def test_axis_order_and_labels(tmp_path):
    case = _write_case(tmp_path, seg=_seg())
    image, mask, affine = load_nifti_case(case)
    assert image.shape == (4, D, H, W) and image.dtype == np.float32
    assert mask.shape == (3, D, H, W) and mask.dtype == np.uint8
    # tumorlib[c, d, h, w] == nifti_c[h, w, d]
    assert image[0, 3, 2, 1] == 1000 * 2 + 100 * 1 + 3
    assert image[3, 1, 5, 4] == 1000 * 5 + 100 * 4 + 1 + 0.75  # channel order T1, T1ce, T2, FLAIR
    np.testing.assert_array_equal(image[2], np.transpose(_coded(0.5), (2, 0, 1)))
    # label 1 -> necrosis, 2 -> edema, 4 -> enhancing, at the transposed positions
    assert mask[0, 3, 1, 2] == 1 and mask[1, 1, 4, 0] == 1 and mask[2, 0, 5, 4] == 1
    assert mask.sum() == 3
    np.testing.assert_allclose(affine, AFFINE, rtol=1e-6)  # NIfTI stores float32
    assert nifti_spacing(affine) == pytest.approx((2.5, 1.0, 1.2))


def test_case_without_segmentation_and_float_labels(tmp_path):
    image, mask, _ = load_nifti_case(_write_case(tmp_path / "a"))
    assert mask is None and image.shape == (4, D, H, W)
    # segmentations stored as float (common in BraTS files) and the misnamed case 355 file
    case = _write_case(tmp_path / "b", name="BraTS20_Training_355")
    nib.save(nib.Nifti1Image(_seg().astype(np.float32), AFFINE), str(case / "W39_1998.09.19_Segm.nii"))
    _, mask, _ = load_nifti_case(case)
    assert mask.sum() == 3 and mask[2, 0, 5, 4] == 1


def test_unknown_label_is_an_error_naming_the_file(tmp_path):
    seg = _seg()
    seg[0, 0, 0] = 3
    case = _write_case(tmp_path, seg=seg)
    with pytest.raises(ValueError, match=r"_seg\.nii\.gz \(brats2020\): labels \[3\].*3 is enhancing tumour in BraTS 2023\+"):
        load_nifti_case(case)


def test_missing_modality_and_shape_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no t1ce file \(\*_t1ce\.nii\.gz\)"):
        load_nifti_case(_write_case(tmp_path / "a", skip="t1ce"))
    with pytest.raises(ValueError, match=r"_t2\.nii\.gz: shape \(6, 5, 3\) differs from .*_t1\.nii\.gz"):
        load_nifti_case(_write_case(tmp_path / "b", shapes={"t2": (H, W, 3)}))
    seg_small = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match=r"_seg\.nii\.gz: shape"):
        load_nifti_case(_write_case(tmp_path / "c", seg=seg_small))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_nifti_case(tmp_path / "nothing")


def test_save_segmentation_layout_and_affine(tmp_path):
    labels = np.zeros((D, H, W), np.uint8)  # tumorlib layout
    labels[3, 1, 2] = 4
    labels[0, 5, 4] = 1
    out = save_segmentation_nifti(labels, tmp_path / "sub" / "seg.nii.gz", AFFINE)
    img = nib.load(str(out))
    data = np.asarray(img.dataobj)
    assert data.shape == (H, W, D) and data.dtype == np.uint8
    assert data[1, 2, 3] == 4 and data[5, 4, 0] == 1 and data.sum() == 5
    np.testing.assert_allclose(img.affine, AFFINE)
    ident = nib.load(str(save_segmentation_nifti(labels, tmp_path / "id.nii.gz")))
    np.testing.assert_allclose(ident.affine, np.eye(4))
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        save_segmentation_nifti(np.full((2, 2, 2), 3), tmp_path / "bad.nii.gz")


def test_round_trip_through_a_case(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, D, H, W)).astype(np.float32)
    labels = rng.choice([0, 1, 2, 4], size=(D, H, W))
    mask = np.stack([labels == v for v in (1, 2, 4)]).astype(np.uint8)
    case = save_nifti_case(tmp_path / "BraTS20_Training_010", image, mask, AFFINE)
    image2, mask2, affine2 = load_nifti_case(case)
    np.testing.assert_array_equal(image2, image)
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_allclose(affine2, AFFINE)


def test_list_cases_and_cache(tmp_path):
    from tumorlib.data import load_volume, make_synthetic

    # two synthetic volumes written as NIfTI cases, cached, and compared with the Kaggle cache path
    kaggle = make_synthetic(tmp_path / "kaggle", 2, (12, 24, 20), seed=1, progress=False)
    root = tmp_path / "nifti"
    for vid in (1, 2):
        image, mask = load_volume(kaggle, vid)
        save_nifti_case(root / f"BraTS20_Training_{vid:03d}", image, mask)
    _write_case(root, name="BraTS20_Validation_007")  # unlabelled
    cases = list_nifti_cases(root)
    assert list(cases) == [1, 2, 7] and cases[2].name == "BraTS20_Training_002"
    with pytest.raises(FileNotFoundError, match="no segmentation"):
        load_nifti_volume(root, 7)
    with pytest.raises(KeyError, match="volume 9"):
        load_nifti_volume(root, 9)
    cache = build_nifti_cache(root, tmp_path / "cache", workers=1, volume_ids=[1, 2], progress=False)
    index = load_cache_index(cache)
    assert index["reader"] == "nifti" and index["volume_ids"] == [1, 2]
    img_c, mask_c = load_cached_volume(cache, 2)
    image, mask = load_volume(kaggle, 2)
    entry = index["volumes"]["2"]
    assert entry["source_shape"] == list(image.shape[1:])
    assert mask_c.sum() == mask.sum() and img_c.shape[0] == 4


def test_cli_cache_nifti(tmp_path, capsys):
    from tumorlib.app.cli import main

    rng = np.random.default_rng(2)
    image = np.zeros((4, D, H, W), np.float32)
    image[:, 1:3, 1:5, 1:4] = rng.normal(size=(4, 2, 4, 3)) + 5
    mask = np.zeros((3, D, H, W), np.uint8)
    mask[1, 2, 2, 2] = 1
    save_nifti_case(tmp_path / "nifti" / "BraTS20_Training_012", image, mask, AFFINE)
    out = tmp_path / "cache"
    assert main(["cache", "--nifti", str(tmp_path / "nifti"), "--out", str(out), "--preset", "ci",
                 "--workers", "1", "--quiet"]) == 0
    assert "cached 1 volumes" in capsys.readouterr().out
    assert load_cache_index(out)["volume_ids"] == [12]
    assert main(["cache", "--nifti", str(tmp_path / "nothing"), "--out", str(out), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_brats2020_header_on_kaggle_segmentation(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(4, 6, 5))  # (D, H, W) = Kaggle layout
    img = nib.load(str(save_kaggle_segmentation(labels, tmp_path / "seg.nii.gz")))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), BRATS2020_AFFINE)
    np.testing.assert_allclose(img.header.get_sform(), BRATS2020_AFFINE)
    assert img.header.get_xyzt_units()[0] == "mm" and img.get_data_dtype() == np.uint8
    data = np.asarray(img.dataobj)
    assert data.shape == (6, 5, 4)
    for s in range(4):  # slice s of the Kaggle layout is the third NIfTI axis; rows are the first
        np.testing.assert_array_equal(data[:, :, s], labels[s])


def test_nifti_and_kaggle_paths_give_the_same_file(tmp_path):
    image, mask = make_phantom((10, 24, 20), seed=0, volume_id=2)
    case = save_nifti_case(tmp_path / "BraTS20_Training_002", image, mask, header=brats2020_header())
    official = nib.load(str(case / "BraTS20_Training_002_seg.nii.gz"))
    # NIfTI path: read the case, decode (probabilities from the truth), write with the case's own header
    img_a, mask_a, affine_a = load_nifti_case(case)
    prob_a = 0.05 + 0.9 * mask_a.astype(np.float32)
    out_a = save_segmentation_nifti(decode_probabilities(prob_a), tmp_path / "a.nii.gz", affine_a,
                                    header=nifti_header(case))
    # Kaggle path: the same case as per-slice HDF5 files (pack channel order), read back, BraTS header
    nifti_case_to_kaggle(case, tmp_path / "kaggle", 2)
    img_b, mask_b = load_volume(tmp_path / "kaggle", 2)
    np.testing.assert_array_equal(img_b, img_a)  # both readers give the canonical order
    prob_b = 0.05 + 0.9 * mask_b.astype(np.float32)
    out_b = save_kaggle_segmentation(decode_probabilities(prob_b), tmp_path / "b.nii.gz")
    a, b = nib.load(str(out_a)), nib.load(str(out_b))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(official.dataobj))
    np.testing.assert_array_equal(np.asarray(a.dataobj), channels_to_labels(mask).transpose(1, 2, 0))
    for img in (a, b, official):
        np.testing.assert_allclose(img.affine, BRATS2020_AFFINE)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.header.get_qform(), BRATS2020_AFFINE)


def test_nifti_input_keeps_its_own_header(tmp_path):
    case = _write_case(tmp_path, seg=_seg())
    flair = case / "BraTS20_Training_003_flair.nii.gz"
    img = nib.load(str(flair))
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=4)
    nib.save(img, str(flair))
    _image, mask, affine = load_nifti_case(case)
    out = nib.load(str(save_segmentation_nifti(channels_to_labels(mask), tmp_path / "p.nii.gz", affine,
                                               header=nifti_header(case))))
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 4
    np.testing.assert_allclose(out.header.get_sform(), AFFINE)
    np.testing.assert_allclose(out.header.get_qform(), AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), _seg())
    with pytest.raises(FileNotFoundError, match="no case of a known layout"):
        nifti_header(tmp_path)


# ------------------------------------------------------------------ cases that cannot be scans


@pytest.mark.parametrize("edit,message", [
    (lambda data, m: np.full_like(data, 4.0) if m == "t2" else data, r"t2.nii.gz: every voxel is 4 \(a constant"),
    (lambda data, m: np.where(data > 2000, np.nan, data) if m == "t1ce" else data, r"t1ce.nii.gz: holds NaN or inf"),
    (lambda data, m: _coded(0.0) if m == "flair" else data, r"t1.nii.gz and .*flair.nii.gz are identical"),
    (lambda data, m: (data + 1j).astype(np.complex64) if m == "t1" else data,
     r"t1.nii.gz: image holds complex64 values .*not intensities"),
])
def test_implausible_case_is_refused_naming_the_file(tmp_path, edit, message):
    case = tmp_path / "BraTS20_Training_003"
    case.mkdir()
    for k, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        data = edit(_coded(0.25 * k), modality)
        nib.save(nib.Nifti1Image(data, AFFINE), str(case / f"{case.name}_{modality}.nii.gz"))
    with pytest.raises(ValueError, match=message) as info:
        load_nifti_case(case)
    assert str(case) in str(info.value) and "\n" not in str(info.value)
