"""Writing BraTS NIfTI files: segmentations and whole cases, with the case's (or BraTS2020's) geometry.

Arrays are tumorlib's (D, H, W), written as NIfTI (H, W, D) arrays (``np.transpose(volume, (1, 2, 0))``;
see ``tumorlib.io.nifti`` for the axis order).

No resampling or reorientation is done: the affine read from a case is returned unchanged and written
back unchanged, so a saved segmentation overlays its input in any NIfTI viewer; ``nifti_header`` gives
the case's header, whose qform and sform (with their codes) ``save_segmentation_nifti`` copies.

Kaggle HDF5 input carries no geometry, but it is the official BraTS2020 grid (slice ``s`` is
``nifti[:, :, s]``, rows are the first NIfTI axis): ``save_kaggle_segmentation`` writes a label volume
from that layout with the header every BraTS2020 case carries (``BRATS2020_AFFINE`` as qform and sform,
both with code 1, scanner anatomical, as ITK writes them), so it overlays the official
``*_seg.nii.gz`` in ITK-SNAP or 3D Slicer and passes the BraTS tools' header check.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorlib.core.brats import CANONICAL_ORDER, channels_to_labels
from tumorlib.core.label_conventions import check_values

__all__ = [
    "BRATS2020_AFFINE",
    "BRATS2020_SHAPE",
    "BRATS2020_XFORM_CODE",
    "PROBABILITY_SCALE",
    "brats2020_header",
    "save_kaggle_segmentation",
    "save_map_nifti",
    "save_nifti_case",
    "save_probabilities_nifti",
    "save_segmentation_nifti",
]

#: qform and sform of every official BraTS2020 case (1 mm voxels, (H, W, D) array axes).
BRATS2020_AFFINE = np.array([[-1.0, 0.0, 0.0, 0.0],
                             [0.0, -1.0, 0.0, 239.0],
                             [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])
#: NIfTI array shape (H, W, D) of the BraTS2020 grid.
BRATS2020_SHAPE = (240, 240, 155)
#: Stored value of probability 1 in ``save_probabilities_nifti`` (uint16; scl_slope = 1 / this).
PROBABILITY_SCALE = 65535
#: qform_code and sform_code of the BraTS2020 files: 1, scanner anatomical coordinates.
BRATS2020_XFORM_CODE = 1


def _to_nifti(array: np.ndarray) -> np.ndarray:
    """(D, H, W) -> (H, W, D) NIfTI array."""
    return np.ascontiguousarray(np.transpose(array, (1, 2, 0)))


def _copy_geometry(img: nib.Nifti1Image, header: nib.Nifti1Header | None) -> nib.Nifti1Image:
    """Give ``img`` the qform and sform of ``header`` with their codes (None: leave it as it is)."""
    if header is not None:
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        img.set_qform(qform, code=int(qcode))
        img.set_sform(sform, code=int(scode))
    return img


def _save_volume(volume: np.ndarray, dtype: type, path: str | os.PathLike, affine: np.ndarray,
                 header: nib.Nifti1Header | None) -> Path:
    """Write a (D, H, W) volume as ``dtype`` in NIfTI (H, W, D) order, units mm, ``header``'s geometry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(_to_nifti(volume.astype(dtype)), affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    nib.save(_copy_geometry(img, header), str(path))
    return path


def save_segmentation_nifti(labels: np.ndarray, path: str | os.PathLike,
                            affine: np.ndarray | None = None, header: nib.Nifti1Header | None = None,
                            convention: str = "brats2020") -> Path:
    """Write a BraTS label volume as NIfTI.

    Args:
        labels: (D, H, W) integer labels of ``convention`` (default {0, 1, 2, 4}; tumorlib layout).
        convention: ``brats2020``, ``brats2023`` or ``msd`` (``tumorlib.core.label_conventions``).
        path: output file, usually ``*.nii.gz`` (parent folders are created).
        affine: (4, 4) affine of the input case; None: the header's best affine, else a 1 mm identity.
        header: the input case's header (``nifti_header``); its qform and sform are copied with their
            codes. None: ``affine`` becomes the sform (code 2, nibabel's default), qform unset.

    Returns:
        The path written; the file holds a uint8 (H, W, D) array.

    Raises:
        ValueError: ``labels`` is not 3-D or holds values outside the convention, or a bad affine.
    """
    if affine is None and header is not None:
        affine = header.get_best_affine()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (D, H, W), got shape {labels.shape}")
    check_values(np.unique(labels).tolist(), convention, where=str(path))
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    return _save_volume(labels, np.uint8, path, affine, header)


def save_probabilities_nifti(prob: np.ndarray, path: str | os.PathLike,
                             header: nib.Nifti1Header | None = None, description: str | None = None) -> Path:
    """Write per-voxel class probabilities as a 16-bit 4-D NIfTI on the grid of the labels.

    NIfTI-1 has no float16 data type (nibabel refuses one), so the 16 bits per value are stored as
    uint16 with ``scl_slope`` = 1/65535: every reader that applies the header's scaling (nibabel's
    ``get_fdata``, ITK, FSL, 3D Slicer) gets probabilities in [0, 1] to within 7.7e-6, half a float16's
    size per value of float32 and finer than float16 near 1.

    Args:
        prob: (3, D, H, W) probabilities in [0, 1], in the network's output order (tumorlib layout).
        path: output file, usually ``*.nii.gz`` (parent folders are created).
        header: the header the labels were written with (its qform and sform are copied with their
            codes); None: a 1 mm identity sform.
        description: the header's ``descrip`` (what the 3 volumes are; at most 80 characters), or None.

    Returns:
        The path written: (H, W, D, 3), the spatial axes as in the label file and the classes along
        the 4th axis, units mm.

    Raises:
        ValueError: ``prob`` is not (3, D, H, W).
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 4 or prob.shape[0] != 3:
        raise ValueError(f"probabilities must be (3, D, H, W), got shape {prob.shape}")
    scaled = np.round(np.clip(np.transpose(prob, (2, 3, 1, 0)), 0.0, 1.0) * PROBABILITY_SCALE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(scaled.astype(np.uint16)),
                          header.get_best_affine() if header is not None else np.eye(4))
    img.header.set_slope_inter(1.0 / PROBABILITY_SCALE, 0.0)
    img.header.set_xyzt_units("mm")
    if description is not None:
        if len(description.encode()) > 80:
            raise ValueError(f"a NIfTI description holds 80 bytes, got {description!r}")
        img.header["descrip"] = description.encode()
    nib.save(_copy_geometry(img, header), str(path))
    return path


def brats2020_header() -> nib.Nifti1Header:
    """A NIfTI header with the BraTS2020 geometry: ``BRATS2020_AFFINE`` as qform and sform, codes 1, mm."""
    header = nib.Nifti1Header()
    header.set_qform(BRATS2020_AFFINE, code=BRATS2020_XFORM_CODE)
    header.set_sform(BRATS2020_AFFINE, code=BRATS2020_XFORM_CODE)
    header.set_xyzt_units("mm")
    return header


def save_kaggle_segmentation(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write labels predicted from Kaggle HDF5 input on the BraTS2020 grid with the BraTS2020 header.

    The Kaggle volume (D, H, W) = (slices, rows, columns) is the official (H, W, D) NIfTI array with
    the slice index moved first, so the file overlays the case's official ``*_seg.nii.gz``.

    Args:
        labels: (D, H, W) integer labels in {0, 1, 2, 4}, at the full input size (155, 240, 240) for
            the real pack (other sizes are written on the same 1 mm grid).
        path: output file, usually ``*.nii.gz``.

    Returns:
        The path written: uint8 (H, W, D), qform = sform = ``BRATS2020_AFFINE``, codes 1.

    Raises:
        ValueError: see ``save_segmentation_nifti``.
    """
    return save_segmentation_nifti(labels, path, header=brats2020_header())


def save_map_nifti(volume: np.ndarray, path: str | os.PathLike,
                   header: nib.Nifti1Header | None = None) -> Path:
    """Write a float map (probability, entropy, variance) as a float32 NIfTI with a label file's geometry.

    Args:
        volume: (D, H, W) values (tumorlib layout), written as float32 (H, W, D).
        path: output file, usually ``*.nii.gz`` (parent folders are created).
        header: qform and sform (with codes) to copy, e.g. ``nifti_header(case)`` or
            ``brats2020_header()``; None: 1 mm identity as the sform.

    Returns:
        The path written.

    Raises:
        ValueError: ``volume`` is not 3-D.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"a map must be (D, H, W), got shape {volume.shape} for {path}")
    affine = header.get_best_affine() if header is not None else np.eye(4)
    return _save_volume(volume, np.float32, path, affine, header)


def save_nifti_case(case_dir: str | os.PathLike, image: np.ndarray, mask: np.ndarray | None = None,
                    affine: np.ndarray | None = None, name: str | None = None,
                    header: nib.Nifti1Header | None = None) -> Path:
    """Write a volume as a BraTS-style NIfTI case folder (the inverse of ``load_nifti_case``).

    Args:
        case_dir: the folder to create; its name is the file prefix unless ``name`` is given.
        image: (4, D, H, W) intensities, channels T1, T1ce, T2, FLAIR (written as float32).
        mask: (3, D, H, W) binary class channels, written as ``*_seg.nii.gz`` labels 1/2/4 (where
            channels overlap, ``tumorlib.core.brats.CLASS_PRECEDENCE`` decides), or None.
        affine: (4, 4) affine; None: 1 mm identity.
        name: file prefix, e.g. ``BraTS20_Training_001``.
        header: qform and sform (with codes) for every file, e.g. ``brats2020_header()``; the affine
            then defaults to the header's.

    Returns:
        The case folder.

    Raises:
        ValueError: shapes that are not (4, D, H, W) and (3, D, H, W) with equal sides.
    """
    case = Path(case_dir)
    if image.ndim != 4 or image.shape[0] != 4:
        raise ValueError(f"image must be (4, D, H, W), got shape {image.shape}")
    if mask is not None and (mask.ndim != 4 or mask.shape != (3,) + image.shape[1:]):
        raise ValueError(f"mask must be (3, D, H, W) matching image {image.shape}, got {mask.shape}")
    prefix = name or case.name
    if affine is None and header is not None:
        affine = header.get_best_affine()
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    case.mkdir(parents=True, exist_ok=True)
    for c, modality in enumerate(CANONICAL_ORDER):
        img = nib.Nifti1Image(_to_nifti(np.asarray(image[c], np.float32)), affine)
        nib.save(_copy_geometry(img, header), str(case / f"{prefix}_{modality}.nii.gz"))
    if mask is not None:
        labels = channels_to_labels(mask)
        save_segmentation_nifti(labels, case / f"{prefix}_seg.nii.gz", affine, header=header)
    return case
