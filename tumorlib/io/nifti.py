"""Official BraTS NIfTI cases in and segmentations out.

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

import functools
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorlib.core.brats import BRATS_LABELS, CANONICAL_ORDER, channels_to_labels

__all__ = [
    "BRATS2020_AFFINE",
    "BRATS2020_SHAPE",
    "BRATS2020_XFORM_CODE",
    "NIFTI_LABELS",
    "NIFTI_MODALITIES",
    "brats2020_header",
    "build_nifti_cache",
    "nifti_case_to_kaggle",
    "nifti_header",
    "save_kaggle_segmentation",
    "find_nifti_file",
    "list_nifti_cases",
    "load_nifti_case",
    "load_nifti_volume",
    "nifti_fingerprint",
    "nifti_spacing",
    "save_nifti_case",
    "save_segmentation_nifti",
]

#: File-name suffixes of the four modalities, stacked in the canonical order (T1, T1ce, T2, FLAIR).
NIFTI_MODALITIES = CANONICAL_ORDER
#: BraTS label of each mask channel (necrosis/NET, edema, enhancing).
NIFTI_LABELS = BRATS_LABELS
#: qform and sform of every official BraTS2020 case (1 mm voxels, (H, W, D) array axes).
BRATS2020_AFFINE = np.array([[-1.0, 0.0, 0.0, 0.0],
                             [0.0, -1.0, 0.0, 239.0],
                             [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])
#: NIfTI array shape (H, W, D) of the BraTS2020 grid.
BRATS2020_SHAPE = (240, 240, 155)
#: qform_code and sform_code of the BraTS2020 files: 1, scanner anatomical coordinates.
BRATS2020_XFORM_CODE = 1
_EXTENSIONS = (".nii.gz", ".nii")
# BraTS20_Training_355 ships its segmentation as "W39_1998.09.19_Segm.nii": accept *seg / *segm
_SEG_RE = re.compile(r"(^|[_\-.])segm?\.nii(\.gz)?$", re.IGNORECASE)


def _to_tumorlib(array: np.ndarray) -> np.ndarray:
    """(H, W, D) NIfTI array -> (D, H, W)."""
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))


def _to_nifti(array: np.ndarray) -> np.ndarray:
    """(D, H, W) -> (H, W, D) NIfTI array."""
    return np.ascontiguousarray(np.transpose(array, (1, 2, 0)))


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
        hits = sorted(p for ext in _EXTENSIONS for p in case.glob(f"*_{modality}{ext}"))
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


def load_nifti_case(case_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read one BraTS NIfTI case into tumorlib's layout.

    Args:
        case_dir: a folder with ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` ``.nii.gz`` files and an
            optional ``*_seg.nii.gz``.

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, from NIfTI arrays (H, W, D).
        mask: (3, D, H, W) uint8 channels necrosis/NET (label 1), edema (2), enhancing (4), or None
            when the case has no segmentation.
        affine: (4, 4) float64 affine of the FLAIR file, for the (H, W, D) NIfTI array axes.

    Raises:
        FileNotFoundError: no such folder, or a modality missing (names the folder and the pattern).
        ValueError: files of different shapes or voxel sizes (names both), a file that is not 3-D,
            NaN/inf intensities, an all-zero modality, or segmentation labels other than 0/1/2/4
            (each names the file).
        OSError: an unreadable, truncated or corrupt file (names it).
    """
    case = Path(case_dir)
    if not case.is_dir():
        raise FileNotFoundError(f"NIfTI case folder {case} does not exist")
    paths = []
    for modality in NIFTI_MODALITIES:
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
            first, first_img = (path, shape), img
            image = np.empty((4, shape[2], shape[0], shape[1]), np.float32)
        elif shape != first[1]:
            raise ValueError(f"{path}: shape {shape} differs from {first[0]} {first[1]}")
        else:
            _check_same_grid(path, img, (first[0], first_img))
        data = _voxels(path, img, lambda im: im.get_fdata(dtype=np.float32)).reshape(shape)
        if not np.isfinite(data).all():
            raise ValueError(f"{path}: image holds NaN or inf values")
        if not data.any():
            raise ValueError(f"{path}: every voxel is 0 (an empty or blank modality): nothing to segment")
        image[c] = _to_tumorlib(data)
        if NIFTI_MODALITIES[c] == "flair":
            affine = aff
    mask = None
    seg_path = find_nifti_file(case, "seg")
    if seg_path is not None:
        img, _aff, shape = _read(seg_path)
        if shape != first[1]:
            raise ValueError(f"{seg_path}: shape {shape} differs from {first[0]} {first[1]}")
        raw = _voxels(seg_path, img, lambda im: im.dataobj).reshape(shape)
        labels = np.rint(raw).astype(np.int64) if np.issubdtype(raw.dtype, np.floating) else raw
        if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(labels, raw):
            raise ValueError(f"{seg_path}: segmentation holds non-integer values")
        values = set(np.unique(labels).tolist())
        unknown = sorted(values - {0, *NIFTI_LABELS})
        if unknown:
            hint = (" (BraTS 2021+ files use 3 for enhancing tumour: relabel 3 -> 4 first)"
                    if 3 in unknown else "")
            raise ValueError(f"{seg_path}: labels {unknown} are not BraTS2020 labels 0, 1, 2, 4{hint}")
        labels = _to_tumorlib(labels)
        mask = np.stack([labels == v for v in NIFTI_LABELS]).astype(np.uint8)
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


def save_segmentation_nifti(labels: np.ndarray, path: str | os.PathLike,
                            affine: np.ndarray | None = None, header: nib.Nifti1Header | None = None) -> Path:
    """Write a BraTS label volume as NIfTI.

    Args:
        labels: (D, H, W) integer labels in {0, 1, 2, 4} (tumorlib layout).
        path: output file, usually ``*.nii.gz`` (parent folders are created).
        affine: (4, 4) affine of the input case; None: the header's best affine, else a 1 mm identity.
        header: the input case's header (``nifti_header``); its qform and sform are copied with their
            codes. None: ``affine`` becomes the sform (code 2, nibabel's default), qform unset.

    Returns:
        The path written; the file holds a uint8 (H, W, D) array.

    Raises:
        ValueError: ``labels`` is not 3-D or holds values outside {0, 1, 2, 4}, or a bad affine.
    """
    if affine is None and header is not None:
        affine = header.get_best_affine()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (D, H, W), got shape {labels.shape}")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *NIFTI_LABELS})
    if unknown:
        raise ValueError(f"labels {unknown} are not BraTS labels 0, 1, 2, 4")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(_to_nifti(labels.astype(np.uint8)), affine)
    img.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    if header is not None:
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        img.set_qform(qform, code=int(qcode))
        img.set_sform(sform, code=int(scode))
    nib.save(img, str(path))
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


def nifti_header(case_dir: str | os.PathLike) -> nib.Nifti1Header:
    """The header of a case's FLAIR file (the file whose affine ``load_nifti_case`` returns).

    Raises:
        FileNotFoundError: no FLAIR file in the case folder.
        OSError: an unreadable file (names it).
    """
    path = find_nifti_file(case_dir, "flair")
    if path is None:
        raise FileNotFoundError(f"{case_dir}: no flair file (*_flair.nii.gz) in the case folder")
    img, _affine, _shape = _read(path)
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
    from tumorlib.data.synthetic import write_kaggle_volume

    image, mask, _affine = load_nifti_case(case_dir)
    if mask is None:
        raise FileNotFoundError(f"{case_dir}: no segmentation (*_seg.nii.gz) to write as the Kaggle mask")
    return write_kaggle_volume(data_dir, volume_id, image, mask)


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
    for c, modality in enumerate(NIFTI_MODALITIES):
        img = nib.Nifti1Image(_to_nifti(np.asarray(image[c], np.float32)), affine)
        if header is not None:
            img.set_qform(*header.get_qform(coded=True))
            img.set_sform(*header.get_sform(coded=True))
        nib.save(img, str(case / f"{prefix}_{modality}.nii.gz"))
    if mask is not None:
        labels = channels_to_labels(mask)
        save_segmentation_nifti(labels, case / f"{prefix}_seg.nii.gz", affine, header=header)
    return case


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
        if not any(f.endswith(tuple(f"_flair{e}" for e in _EXTENSIONS)) for f in files):
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
    """One labelled case by volume id: the reader that ``build_nifti_cache`` hands to the cache.

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


def nifti_fingerprint(root: str | os.PathLike, volume_id: int) -> str:
    """A cheap content fingerprint of one case: file names, sizes and the FLAIR file's bytes.

    Args:
        root: the folder above the case folders.
        volume_id: the case's number.

    Returns:
        A hex digest.
    """
    case = list_nifti_cases(root)[int(volume_id)]
    h = hashlib.sha1()
    for f in sorted(case.iterdir()):
        if f.is_file() and f.name.endswith(_EXTENSIONS):
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    flair = find_nifti_file(case, "flair")
    if flair is not None:
        h.update(flair.read_bytes())
    return h.hexdigest()


def build_nifti_cache(root: str | os.PathLike, cache_dir: str | os.PathLike, workers: int = 2,
                      cache_hw: int | None = None, margin: int = 4, progress: bool = True,
                      volume_ids: Sequence[int] | None = None) -> Path:
    """Cache a folder of labelled BraTS NIfTI cases exactly like the Kaggle data.

    Args:
        root: the folder above the case folders.
        cache_dir: the output folder (created).
        workers: processes working on volumes in parallel.
        cache_hw: largest in-plane size; None: native.
        margin: voxels kept around the brain's bounding box.
        progress: show a tqdm bar.
        volume_ids: a subset of the cases; None caches all of them.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data or settings.
        FileNotFoundError, KeyError, ValueError: bad cases (see ``load_nifti_volume``).
    """
    from tumorlib.data.cache import build_cache_from_reader

    data = Path(root).expanduser().resolve()
    cases = list_nifti_cases(data)
    ids = list(cases) if volume_ids is None else [int(v) for v in volume_ids]
    def files(vid: int) -> list[Path]:  # the case's files: their sizes and times go into the index
        return sorted(f for f in cases[vid].iterdir() if f.is_file() and f.name.endswith(_EXTENSIONS))

    return build_cache_from_reader(
        functools.partial(load_nifti_volume, data), ids, cache_dir, source=str(data),
        fingerprint=functools.partial(nifti_fingerprint, data), reader_name="nifti", source_files=files,
        workers=workers, cache_hw=cache_hw, margin=margin, progress=progress)
