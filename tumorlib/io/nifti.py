"""Reading NIfTI cases of every BraTS-family layout (and writing a labelled case in the Kaggle slice layout).

Which files a case has, by layout (brats2020, brats2021, brats2023, msd), is ``tumorlib.io.layouts``; the
labels of each, ``tumorlib.core.label_conventions``. Below, the BraTS2020 files as the example.

A BraTS2020 case folder (``BraTS20_Training_001/``) holds one file per modality,
``*_t1.nii.gz``, ``*_t1ce.nii.gz``, ``*_t2.nii.gz``, ``*_flair.nii.gz`` (``.nii`` also accepted), and in
the training set a segmentation ``*_seg.nii.gz`` with labels 0 background, 1 necrosis/non-enhancing
tumour core, 2 edema, 4 enhancing tumour.

Axis order. A BraTS NIfTI array is (H, W, D) = (240, 240, 155): the slice index is the *last* axis, and
the file's affine maps these array indices to scanner millimetres. tumorlib works channel-first with the
slice index first, (C, D, H, W), as the Kaggle HDF5 slices (slice ``s`` of the Kaggle set is
``nifti[:, :, s]``). So::

    tumorlib[d, h, w] == nifti[h, w, d]        # load:  np.transpose(nifti, (2, 0, 1))
    nifti[h, w, d]    == tumorlib[d, h, w]     # save:  np.transpose(volume, (1, 2, 0))

Writing NIfTI (segmentations, whole cases) lives in ``tumorlib.io.nifti_write``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorlib.core.brats import CANONICAL_ORDER
from tumorlib.core.label_conventions import convention_to_channels
from tumorlib.core.plausibility import check_intensity_dtype, check_plausible_image
from tumorlib.io.kaggle_write import write_kaggle_volume
from tumorlib.io.layouts import NiftiCase, case_from_path, list_cases

__all__ = [
    "NIFTI_EXTENSIONS",
    "find_nifti_file",
    "list_nifti_cases",
    "load_nifti_case",
    "load_nifti_volume",
    "nifti_case_to_kaggle",
    "nifti_header",
    "nifti_spacing",
]

#: File-name endings of NIfTI files.
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
# BraTS20_Training_355 ships its segmentation as "W39_1998.09.19_Segm.nii": accept *seg / *segm
_SEG_RE = re.compile(r"(^|[_\-.])segm?\.nii(\.gz)?$", re.IGNORECASE)


def _to_tumorlib(array: np.ndarray) -> np.ndarray:
    """(H, W, D) NIfTI array -> (D, H, W)."""
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))


def find_nifti_file(case_dir: str | os.PathLike, modality: str) -> Path | None:
    """The file of one modality (or ``"seg"``) in a case folder.

    Args:
        case_dir: the case folder.
        modality: ``t1``, ``t1ce``, ``t2``, ``flair`` or ``seg``.

    Returns:
        The path of ``*_<modality>.nii.gz`` (or ``.nii``; for ``seg`` also ``*Segm.nii``), or None.

    Raises:
        ValueError: more than one file matches (names them).
    """
    case = Path(case_dir)
    if modality == "seg":
        hits = sorted(p for p in case.iterdir() if p.is_file() and _SEG_RE.search(p.name))
    else:
        hits = sorted(p for ext in NIFTI_EXTENSIONS for p in case.glob(f"*_{modality}{ext}"))
    if len(hits) > 1:
        raise ValueError(f"{case}: {len(hits)} files for {modality}: {', '.join(p.name for p in hits)}")
    return hits[0] if hits else None


def _read(path: Path, channels: int = 1) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(data as stored, affine, NIfTI shape) of one 3-D file (``channels`` > 1: a 4-D file of that many
    volumes); errors name the file."""
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for broken files
        raise OSError(f"{path}: unreadable NIfTI file ({err})") from err
    shape = tuple(int(s) for s in img.shape)
    if channels > 1:
        if len(shape) != 4 or shape[3] != channels:
            raise ValueError(f"{path}: expected a 4-D image (H, W, D, {channels}), got shape {tuple(img.shape)}")
        return img, np.asarray(img.affine, dtype=np.float64), shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume (H, W, D), got shape {tuple(img.shape)}")
    return img, np.asarray(img.affine, dtype=np.float64), shape


def _voxels(path: Path, img: object, read: object) -> np.ndarray:
    """``read(img)`` with a truncated or corrupt file (EOFError, zlib errors) reported as one line."""
    try:
        return np.asarray(read(img))
    except Exception as err:  # EOFError, zlib.error, OSError, nibabel errors: all mean a broken file
        raise OSError(f"{path}: truncated or corrupt NIfTI data ({type(err).__name__}: {err})") from err


def _check_same_grid(path: Path, img: object, first: tuple[Path, object]) -> None:
    """Refuse a modality whose voxel size differs from the first modality's (names both files)."""
    zooms = tuple(round(float(z), 4) for z in img.header.get_zooms()[:3])
    ref = tuple(round(float(z), 4) for z in first[1].header.get_zooms()[:3])
    if zooms != ref:
        raise ValueError(f"{path}: voxel size {zooms} mm differs from {first[0]} {ref} mm; resample the "
                         f"modalities to one grid first")


def _same_space(affine: np.ndarray, ref: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether two affines put every corner of a grid of ``shape`` within a tenth of a voxel of each other."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    gap = np.abs((np.asarray(affine) @ corners)[:3] - (np.asarray(ref) @ corners)[:3]).max()
    return bool(gap <= 0.1 * float(np.linalg.norm(np.asarray(ref)[:3, :3], axis=0).min()))


def _onto_grid(path: Path, data: np.ndarray, affine: np.ndarray, ref: tuple[Path, np.ndarray, tuple[int, ...]],
               ) -> np.ndarray:
    """``data`` (stored with ``affine``) on the reference file's voxel grid: as it is when the affines agree,
    flipped/transposed when only the storage orientation differs (e.g. LPS against RAS), else refused.

    Raises:
        ValueError: the file does not cover the same voxels in space as the reference (names both files).
    """
    ref_path, ref_affine, ref_shape = ref
    if data.shape == ref_shape and _same_space(affine, ref_affine, ref_shape):
        return data
    transform = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.io_orientation(ref_affine))
    turned = nib.orientations.apply_orientation(data, transform)
    turned_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    if turned.shape == ref_shape and _same_space(turned_affine, ref_affine, ref_shape):
        return np.ascontiguousarray(turned)
    raise ValueError(f"{path}: its affine places the voxels elsewhere than {ref_path} does (the modalities are "
                     "not co-registered); register them onto one grid first")


def _read_images(case: NiftiCase) -> tuple[np.ndarray, np.ndarray, tuple[Path, tuple[int, ...]]]:
    """The (4, D, H, W) float32 image of a case in canonical order, the affine of its grid and (first file,
    its (H, W, D) shape): four 3-D files, or one 4-D file (msd) whose channels are in ``stored_order``."""
    if case.stored_order is not None:  # msd: one (H, W, D, 4) file
        path = case.images[0]
        img, affine, _shape = _read(path, channels=4)
        check_intensity_dtype(img.get_data_dtype(), str(path))
        data = _voxels(path, img, lambda im: im.get_fdata(dtype=np.float32))
        image = np.stack([_to_tumorlib(data[..., case.stored_order.index(k)]) for k in CANONICAL_ORDER])
        return image, affine, (path, tuple(int(s) for s in data.shape[:3]))
    image = affine = first = first_img = None
    for c, path in enumerate(case.images):
        img, aff, shape = _read(path)
        if first is None:
            first, first_img, affine = (path, shape), img, aff
            image = np.empty((4, shape[2], shape[0], shape[1]), np.float32)
        elif sorted(shape) != sorted(first[1]):
            raise ValueError(f"{path}: shape {shape} differs from {first[0]} {first[1]}")
        elif shape == first[1]:
            _check_same_grid(path, img, (first[0], first_img))
        check_intensity_dtype(img.get_data_dtype(), str(path))  # as stored: get_fdata would drop the imaginary part
        data = _voxels(path, img, lambda im: im.get_fdata(dtype=np.float32)).reshape(shape)
        data = _onto_grid(path, data, aff, (first[0], affine, first[1]))
        image[c] = _to_tumorlib(data)
    return image, affine, first


def _read_mask(case: NiftiCase, affine: np.ndarray, first: tuple[Path, tuple[int, ...]]) -> np.ndarray:
    """(3, D, H, W) uint8 class channels of a case's segmentation, read in the layout's label convention."""
    seg_path = case.seg
    img, seg_aff, shape = _read(seg_path)
    if sorted(shape) != sorted(first[1]):
        raise ValueError(f"{seg_path}: shape {shape} differs from {first[0]} {first[1]}")
    raw = _voxels(seg_path, img, lambda im: np.asarray(im.dataobj)).reshape(shape)
    raw = _onto_grid(seg_path, raw, seg_aff, (first[0], affine, first[1]))
    labels = np.rint(raw).astype(np.int64) if np.issubdtype(raw.dtype, np.floating) else raw
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(labels, raw):
        raise ValueError(f"{seg_path}: segmentation holds non-integer values")
    return convention_to_channels(_to_tumorlib(labels), case.convention, where=f"{seg_path} ({case.layout})")


def load_nifti_case(case_dir: str | os.PathLike | NiftiCase, layout: str | None = None,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read one NIfTI case of any layout (``tumorlib.io.layouts``) into tumorlib's layout.

    Args:
        case_dir: a case folder (brats2020/2021 ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` files and an
            optional ``*_seg``; brats2023 ``*-t1n``, ``*-t1c``, ``*-t2w``, ``*-t2f``, ``*-seg``), an msd image
            file (``imagesTr/BRATS_001.nii.gz``, 4-D), or a ``NiftiCase``.
        layout: the case's layout; None: from its file names.

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, from NIfTI arrays (H, W, D).
        mask: (3, D, H, W) uint8 channels ncr, ed, et (from the layout's label convention,
            ``tumorlib.core.label_conventions``: the 2024 resection cavity is in none), or None when the
            case has no segmentation.
        affine: (4, 4) float64 affine of the T1 file (the 4-D file for msd), the grid every array is on.

    Every file is put on the T1 file's voxel grid: as stored when its affine agrees (within a tenth of a
    voxel at the grid's corners), flipped/transposed when it covers the same voxels in another storage
    orientation (e.g. LPS against RAS), else refused (not co-registered).

    Raises:
        FileNotFoundError: no such folder, or a modality missing (names the folder and the pattern).
        ValueError: files of no or two layouts, files of different shapes or voxel sizes (names both), an
            affine placing the voxels elsewhere than the T1 file's (not co-registered; names both), a file that
            is not 3-D (4-D with 4 channels for msd), or segmentation labels outside the layout's convention
            (each names the file).
        ImplausibleImageError: (a ValueError) an image that cannot be a scan
            (``tumorlib.core.plausibility``): a modality stored as complex or other non-intensity values,
            NaN/inf, an all-zero or constant modality, two identical modalities (names the case and file).
        OSError: an unreadable, truncated or corrupt file (names it).
    """
    case = case_from_path(case_dir, layout)
    image, affine, first = _read_images(case)
    channels = [str(p) for p in case.images] if len(case.images) == 4 else \
        [f"{case.images[0]} ({k})" for k in CANONICAL_ORDER]
    check_plausible_image(image, case.name, channels=channels)
    mask = _read_mask(case, affine, first) if case.seg is not None else None
    return image, mask, affine


def nifti_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size of tumorlib's (D, H, W) axes from a NIfTI affine of the (H, W, D) array.

    Args:
        affine: (4, 4) NIfTI affine.

    Returns:
        (spacing_D, spacing_H, spacing_W) in mm (lengths of the affine's columns 2, 0, 1).
    """
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(norms[2]), float(norms[0]), float(norms[1])


def nifti_header(case_dir: str | os.PathLike | NiftiCase, layout: str | None = None) -> nib.Nifti1Header:
    """The header of a case's FLAIR file (the T1 file's where the FLAIR is stored in another orientation:
    the grid ``load_nifti_case`` returns its arrays on; an msd case's 4-D file).

    Raises:
        FileNotFoundError: a folder of no known layout, or a modality missing.
        OSError: an unreadable file (names it).
    """
    case = case_from_path(case_dir, layout)
    if case.stored_order is not None:
        return _read(case.images[0], channels=4)[0].header.copy()
    img, affine, shape = _read(case.images[3])
    t1_img, t1_affine, t1_shape = _read(case.images[0])
    if t1_shape != shape or not _same_space(affine, t1_affine, shape):  # FLAIR turned onto the T1 grid
        return t1_img.header.copy()
    return img.header.copy()


def nifti_case_to_kaggle(case_dir: str | os.PathLike, data_dir: str | os.PathLike, volume_id: int) -> list[Path]:
    """Write a labelled NIfTI case in the Kaggle per-slice HDF5 layout (channels in the pack's order).

    Slice ``s`` of the output is ``nifti[:, :, s]``, rows are the first NIfTI axis, as in the pack.

    Args:
        case_dir: the case folder.
        data_dir: the folder receiving ``volume_{id}_slice_{s}.h5``.
        volume_id: the id in the file names.

    Returns:
        The slice files in slice order.

    Raises:
        FileNotFoundError: the case has no segmentation, or a modality is missing.
        ValueError: see ``load_nifti_case``.
    """
    image, mask, _affine = load_nifti_case(case_dir)
    if mask is None:
        raise FileNotFoundError(f"{case_dir}: no segmentation (*_seg.nii.gz) to write as the Kaggle mask")
    return write_kaggle_volume(data_dir, volume_id, image, mask)


def list_nifti_cases(root: str | os.PathLike, layout: str | None = None) -> dict[int, NiftiCase]:
    """The cases below ``root`` keyed by volume id (``tumorlib.io.layouts.list_cases``).

    ``BraTS20_Training_007`` is volume 7, as in the Kaggle set's ``name_mapping.csv``; ``BraTS-GLI-00012-001``
    is 12001; msd ``BRATS_001`` is 1.

    Args:
        root: a folder above the case folders (e.g. ``MICCAI_BraTS2020_TrainingData``), or an msd task folder.
        layout: one of ``tumorlib.io.layouts.LAYOUTS``; None: detected from the file names.

    Returns:
        ``{volume_id: NiftiCase}`` sorted by id (``case.name`` is the folder's name).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no case folder.
        ValueError: mixed layouts, a case folder name that does not end in a number, or two folders with one id.
    """
    return list_cases(root, layout)


def load_nifti_volume(root: str | os.PathLike, volume_id: int, layout: str | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One labelled case by volume id: the reader that ``tumorlib.data.cache.nifti.build_nifti_cache`` hands to the cache.

    Args:
        root: the folder above the case folders.
        volume_id: the case's volume id (``list_nifti_cases``).
        layout: see ``list_nifti_cases``.

    Returns:
        image: (4, D, H, W) float32; mask: (3, D, H, W) uint8 (see ``load_nifti_case``).

    Raises:
        KeyError: no case with that id below ``root``.
        FileNotFoundError: the case has no segmentation (training needs one), or a modality missing.
        ValueError: see ``load_nifti_case``.
    """
    cases = list_nifti_cases(root, layout)
    if int(volume_id) not in cases:
        raise KeyError(f"volume {volume_id}: no case with id {volume_id} below {root} "
                       f"({len(cases)} cases, ids {min(cases)}..{max(cases)})")
    case = cases[int(volume_id)]
    image, mask, _affine = load_nifti_case(case)
    if mask is None:
        raise FileNotFoundError(f"{case}: no segmentation; the cache needs labelled cases")
    return image, mask
