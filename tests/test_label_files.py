"""Scoring folders of BraTS label files: matching, columns, and one-line errors naming the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tumorlib.core.brats import labels_to_channels
from tumorlib.evaluation.label_files import (
    LABEL_FILE_COLUMNS,
    case_name,
    match_label_files,
    score_label_files,
)
from tumorlib.evaluation.lesions import LESION_COLUMNS, lesion_scores
from tumorlib.evaluation.metrics import METRIC_COLUMNS, brats_scores
from tumorlib.io.nifti_write import save_segmentation_nifti

SHAPE = (12, 20, 16)  # (D, H, W)


def _labels(shift=0):
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:9, 4 + shift:14 + shift, 3:12] = 2
    lab[4:8, 6 + shift:12 + shift, 5:10] = 4
    lab[5:7, 8 + shift:10 + shift, 6:8] = 1
    return lab


def _write(path, labels, affine=None):
    return save_segmentation_nifti(labels, path, affine=np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine)


def _raw(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture
def dirs(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    return pred, ref


def test_scores_match_the_metric_functions(dirs):
    pred, ref = dirs
    _write(pred / "BraTS20_001.nii.gz", _labels(1))
    _write(ref / "BraTS20_001_seg.nii.gz", _labels())  # the _seg suffix is allowed on references
    _write(pred / "case2.nii.gz", _labels())
    _write(ref / "case2.nii.gz", _labels())
    _write(ref / "unscored.nii.gz", _labels())  # a reference without prediction is not scored
    table = score_label_files(pred, ref)
    assert list(table.columns) == list(LABEL_FILE_COLUMNS)
    assert set(METRIC_COLUMNS) <= set(table.columns) and set(LESION_COLUMNS) <= set(table.columns)
    assert table["case"].tolist() == ["BraTS20_001", "case2"]
    spacing = (2.0, 1.0, 1.0)  # tumorlib's (D, H, W) from the header: the NIfTI's third axis is 2 mm
    want = brats_scores(labels_to_channels(_labels(1)), labels_to_channels(_labels()), spacing)
    want.update(lesion_scores(_labels(1), _labels(), spacing))
    row = table.iloc[0]
    for key, value in want.items():
        assert row[key] == pytest.approx(value), key
    perfect = table.iloc[1]
    assert perfect["dice_wt"] == 1.0 and perfect["lesion_dice_et"] == 1.0 and perfect["lesion_hd95_wt"] == 0.0


def test_case_name():
    assert case_name("a/X.nii.gz") == "X"
    assert case_name("X.nii") == "X"
    assert case_name("X.csv") is None


def test_hidden_files_are_skipped(dirs):
    pred, ref = dirs
    _write(pred / "a.nii.gz", _labels())
    _write(ref / "a.nii.gz", _labels())
    (pred / ".DS_Store").write_text("x")
    assert [c for c, _, _ in match_label_files(pred, ref)] == ["a"]


def _error(pred, ref):
    with pytest.raises(ValueError) as info:
        score_label_files(pred, ref)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_folder(dirs):
    assert "no prediction files" in _error(*dirs)


def test_missing_folder_or_a_file_for_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^prediction folder .*nope does not exist$"):
        score_label_files(tmp_path / "nope", tmp_path)
    (tmp_path / "ref.nii.gz").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"^reference folder .*ref.nii.gz is a file, not a folder"):
        score_label_files(tmp_path, tmp_path / "ref.nii.gz")


def test_non_nifti_file(dirs):
    pred, ref = dirs
    (pred / "notes.txt").write_text("x")
    assert "notes.txt" in _error(pred, ref) and "not a NIfTI" in _error(pred, ref)


def test_prediction_without_reference(dirs):
    pred, ref = dirs
    _write(pred / "lonely.nii.gz", _labels())
    message = _error(pred, ref)
    assert "lonely" in message and "no reference" in message


def test_ambiguous_reference(dirs):
    pred, ref = dirs
    _write(pred / "a.nii.gz", _labels())
    _write(ref / "a.nii.gz", _labels())
    _write(ref / "a_seg.nii.gz", _labels())
    assert "several references" in _error(pred, ref)


def test_shape_mismatch(dirs):
    pred, ref = dirs
    _write(pred / "a.nii.gz", _labels())
    _write(ref / "a.nii.gz", np.zeros((12, 20, 18), np.uint8))
    message = _error(pred, ref)
    assert "a.nii.gz" in message and "shape" in message


def test_labels_outside_brats(dirs):
    pred, ref = dirs
    bad = np.transpose(_labels(), (1, 2, 0)).copy()
    bad[0, 0, 0] = 3
    _raw(pred / "a.nii.gz", bad)
    _write(ref / "a.nii.gz", _labels())
    message = _error(pred, ref)
    assert "a.nii.gz" in message and "[3]" in message


def test_non_integer_labels(dirs):
    pred, ref = dirs
    data = np.transpose(_labels(), (1, 2, 0)).astype(np.float32)
    data[1, 1, 1] = 0.5
    _raw(pred / "a.nii.gz", data)
    _write(ref / "a.nii.gz", _labels())
    assert "non-integer" in _error(pred, ref)


def test_affine_mismatch(dirs):
    pred, ref = dirs
    _write(pred / "a.nii.gz", _labels(), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    _write(ref / "a.nii.gz", _labels())
    message = _error(pred, ref)
    assert "a.nii.gz" in message and "affine" in message


def test_unreadable_file(dirs):
    pred, ref = dirs
    (pred / "a.nii.gz").write_bytes(b"not a nifti file")
    _write(ref / "a.nii.gz", _labels())
    message = _error(pred, ref)
    assert "a.nii.gz" in message and "unreadable" in message


def test_four_d_volume(dirs):
    pred, ref = dirs
    _raw(pred / "a.nii.gz", np.zeros((20, 16, 12, 2), np.uint8))
    _write(ref / "a.nii.gz", _labels())
    assert "3-D" in _error(pred, ref)
