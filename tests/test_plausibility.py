"""tumorlib.core.plausibility: the one check every image reader calls (hand-made cases; the readers' own
tests beside them check that each reader calls it)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tumorlib.core.plausibility import ImplausibleImageError, check_intensity_dtype, check_plausible_image


def _scan(shape=(4, 5, 6, 7), seed=0) -> np.ndarray:
    """A plausible (C, D, H, W) image: random intensities inside a box, exactly 0 around it."""
    image = np.zeros(shape, np.float32)
    image[:, 1:-1, 1:-1, 1:-1] = np.random.default_rng(seed).uniform(1, 100, (shape[0], *(n - 2 for n in shape[1:])))
    return image


def test_a_plausible_image_passes_and_is_not_copied_or_changed():
    image = _scan()
    before = image.copy()
    assert check_plausible_image(image, "volume 1") is None
    np.testing.assert_array_equal(image, before)


def test_empty_slices_and_a_constant_background_pass():
    image = _scan((4, 6, 8, 8))
    image[:, 0] = image[:, -1] = 0  # empty top and bottom slices: normal in BraTS
    image[2][image[2] == 0] = 7.0  # one channel constant (7, not 0) outside the brain
    check_plausible_image(image, "volume 1")
    check_plausible_image(image.astype(np.int16), "volume 1")  # integer scanner units are intensities
    check_plausible_image(image[:1], "volume 1")  # one channel: nothing to compare with


@pytest.mark.parametrize("edit,message", [
    (lambda im: im.__setitem__(2, 0), r"^volume 7 \(/data\), t2: every voxel is 0 \(an empty or blank modality\)"),
    (lambda im: im.__setitem__(1, 3.5), r"^volume 7 \(/data\), t1ce: every voxel is 3.5 \(a constant channel\)"),
    (lambda im: im.__setitem__((0, 2, 2, 2), np.nan), r"^volume 7 \(/data\), t1: holds NaN or inf values"),
    (lambda im: im.__setitem__((3, 2, 2, 2), -np.inf), r"^volume 7 \(/data\), flair: holds NaN or inf values"),
    (lambda im: im.__setitem__(3, im[1]), r"^volume 7 \(/data\): t1ce and flair are identical in every voxel"),
])
def test_implausible_images_are_refused_naming_the_volume_and_channel(edit, message):
    image = _scan()
    edit(image)
    with pytest.raises(ImplausibleImageError, match=message) as info:
        check_plausible_image(image, "volume 7 (/data)", channels=("t1", "t1ce", "t2", "flair"))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_channels_are_named_by_number_by_default():
    image = _scan()
    image[3] = 0
    with pytest.raises(ImplausibleImageError, match=r"^case, channel 3: every voxel is 0"):
        check_plausible_image(image, "case")


def test_identical_channels_with_equal_min_and_max_but_other_voxels_pass():
    image = _scan()
    image[1] = image[0]
    image[1, 2, 2, 2], image[1, 2, 2, 3] = image[0, 2, 2, 3], image[0, 2, 2, 2]  # two voxels swapped
    check_plausible_image(image, "volume 1")


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, object, "U3", "S3", [("r", "u1"), ("g", "u1")]])
def test_non_intensity_types_are_refused(dtype):
    image = np.zeros((4, 2, 2, 2), dtype=dtype)
    shown = re.escape(str(np.dtype(dtype)))
    with pytest.raises(ImplausibleImageError, match=rf"^volume 2: image holds {shown} values .*not intensities"):
        check_plausible_image(image, "volume 2")
    with pytest.raises(ImplausibleImageError, match=r"^f.nii.gz: image holds .* not intensities"):
        check_intensity_dtype(np.dtype(dtype), "f.nii.gz")


def test_no_voxels_and_wrong_channel_names_are_refused():
    with pytest.raises(ImplausibleImageError, match=r"^volume 3: holds no voxels"):
        check_plausible_image(np.zeros((4, 0, 5, 5), np.float32), "volume 3")
    with pytest.raises(ValueError, match="2 channel names for 4 channels"):
        check_plausible_image(_scan(), "volume 3", channels=("a", "b"))
