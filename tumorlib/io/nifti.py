"""Reading official BraTS NIfTI cases (and writing a labelled case in the Kaggle slice layout).

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

from tumorlib.core.brats import BRATS_LABELS, CANONICAL_ORDER
from tumorlib.core.plausibility import check_intensity_dtype, check_plausible_image
from tumorlib.io.kaggle_write import write_kaggle_volume

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


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(data as stored, affine, NIfTI shape) of one 3-D file; errors name the file."""
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for broken files
        raise OSError(f"{path}: unreadable NIfTI file ({err})") from err
    shape = tuple(int(s) for s in img.shape)
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


def load_nifti_case(case_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read one BraTS NIfTI case into tumorlib's layout.

    Args:
        case_dir: a folder with ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` ``.nii.gz`` files and an
            optional ``*_seg.nii.gz``.

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, from NIfTI arrays (H, W, D).
        mask: (3, D, H, W) uint8 channels necrosis/NET (label 1), edema (2), enhancing (4), or None
            when the case has no segmentation.
        affine: (4, 4) float64 affine of the T1 file, the grid every array is on (H, W, D axes).

    Every file is put on the T1 file's voxel grid: as stored when its affine agrees (within a tenth of a
    voxel at the grid's corners), flipped/transposed when it covers the same voxels in another storage
    orientation (e.g. LPS against RAS), else refused (not co-registered).

    Raises:
        FileNotFoundError: no such folder, or a modality missing (names the folder and the pattern).
        ValueError: files of different shapes or voxel sizes (names both), an affine placing the voxels
            elsewhere than the T1 file's (not co-registered; names both), a file that is not 3-D, or
            segmentation labels other than 0/1/2/4 (each names the file).
        ImplausibleImageError: (a ValueError) an image that cannot be a scan
            (``tumorlib.core.plausibility``): a modality stored as complex or other non-intensity values,
            NaN/inf, an all-zero or constant modality, two identical modalities (names the case and file).
        OSError: an unreadable, truncated or corrupt file (names it).
    """
    case = Path(case_dir)
    if not case.is_dir():
        raise FileNotFoundError(f"NIfTI case folder {case} does not exist")
    paths = []
    for modality in CANONICAL_ORDER:
        path = find_nifti_file(case, modality)
        if path is None:
            raise FileNotFoundError(f"{case}: no {modality} file (*_{modality}.nii.gz) in the case folder")
        paths.append(path)
    image = None
    affine = None
    first: tuple[Path, tuple[int, ...]] | None = None
    first_img = None
    for c, path in enumerate(paths):
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
    check_plausible_image(image, case.name, channels=[str(p) for p in paths])
    mask = None
    seg_path = find_nifti_file(case, "seg")
    if seg_path is not None:
        img, seg_aff, shape = _read(seg_path)
        if sorted(shape) != sorted(first[1]):
            raise ValueError(f"{seg_path}: shape {shape} differs from {first[0]} {first[1]}")
        raw = _voxels(seg_path, img, lambda im: np.asarray(im.dataobj)).reshape(shape)
        raw = _onto_grid(seg_path, raw, seg_aff, (first[0], affine, first[1]))
        labels = np.rint(raw).astype(np.int64) if np.issubdtype(raw.dtype, np.floating) else raw
        if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(labels, raw):
            raise ValueError(f"{seg_path}: segmentation holds non-integer values")
        values = set(np.unique(labels).tolist())
        unknown = sorted(values - {0, *BRATS_LABELS})
        if unknown:
            hint = (" (BraTS 2021+ files use 3 for enhancing tumour: relabel 3 -> 4 first)"
                    if 3 in unknown else "")
            raise ValueError(f"{seg_path}: labels {unknown} are not BraTS2020 labels 0, 1, 2, 4{hint}")
        labels = _to_tumorlib(labels)
        mask = np.stack([labels == v for v in BRATS_LABELS]).astype(np.uint8)
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


def nifti_header(case_dir: str | os.PathLike) -> nib.Nifti1Header:
    """The header of a case's FLAIR file (the T1 file's where the FLAIR is stored in another orientation:
    the grid ``load_nifti_case`` returns its arrays on).

    Raises:
        FileNotFoundError: no FLAIR file in the case folder.
        OSError: an unreadable file (names it).
    """
    path = find_nifti_file(case_dir, "flair")
    if path is None:
        raise FileNotFoundError(f"{case_dir}: no flair file (*_flair.nii.gz) in the case folder")
    img, affine, shape = _read(path)
    t1 = find_nifti_file(case_dir, "t1")
    if t1 is not None:  # a FLAIR stored in another orientation was turned onto the T1 grid: use T1's header
        t1_img, t1_affine, t1_shape = _read(t1)
        if t1_shape != shape or not _same_space(affine, t1_affine, shape):
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


def list_nifti_cases(root: str | os.PathLike) -> dict[int, Path]:
    """The case folders below ``root``, keyed by the number that ends the folder name.

    ``BraTS20_Training_007`` is volume 7, as in the Kaggle set's ``name_mapping.csv``. A case folder is
    any folder holding a ``*_flair.nii.gz`` (or ``.nii``) file.

    Args:
        root: a folder above the case folders (e.g. ``MICCAI_BraTS2020_TrainingData``).

    Returns:
        ``{volume_id: case_dir}`` sorted by id.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no case folder.
        ValueError: a case folder name that does not end in a number, or two folders with one id.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"NIfTI data folder {root} does not exist")
    cases: dict[int, Path] = {}
    for folder, _dirs, files in os.walk(root):
        if not any(f.endswith(tuple(f"_flair{e}" for e in NIFTI_EXTENSIONS)) for f in files):
            continue
        path = Path(folder)
        match = re.search(r"(\d+)$", path.name)
        if match is None:
            raise ValueError(f"{path}: case folder name must end in its number "
                             "(e.g. BraTS20_Training_001)")
        vid = int(match.group(1))
        if vid in cases:
            raise ValueError(f"volume {vid}: two case folders, {cases[vid]} and {path}")
        cases[vid] = path
    if not cases:
        raise FileNotFoundError(f"no NIfTI case folders (with *_flair.nii.gz) below {root}")
    return dict(sorted(cases.items()))


def load_nifti_volume(root: str | os.PathLike, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One labelled case by volume id: the reader that ``tumorlib.data.cache.nifti.build_nifti_cache`` hands to the cache.

    Args:
        root: the folder above the case folders.
        volume_id: the number ending the case folder's name.

    Returns:
        image: (4, D, H, W) float32; mask: (3, D, H, W) uint8 (see ``load_nifti_case``).

    Raises:
        KeyError: no case with that id below ``root``.
        FileNotFoundError: the case has no segmentation (training needs one), or a modality missing.
        ValueError: see ``load_nifti_case``.
    """
    cases = list_nifti_cases(root)
    if int(volume_id) not in cases:
        raise KeyError(f"volume {volume_id}: no case folder ending in {volume_id} below {root} "
                       f"({len(cases)} cases, ids {min(cases)}..{max(cases)})")
    case = cases[int(volume_id)]
    image, mask, _affine = load_nifti_case(case)
    if mask is None:
        raise FileNotFoundError(f"{case}: no segmentation (*_seg.nii.gz); the cache needs labelled cases")
    return image, mask
