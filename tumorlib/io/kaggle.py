"""Reader for the Kaggle BraTS2020 per-slice HDF5 layout (``awsaf49/brats2020-training-data``).

Each volume is stored as files ``volume_{id}_slice_{s}.h5`` with datasets ``image`` (H, W, 4) float64
and ``mask`` (H, W, 3) uint8 (necrosis/NET, edema, enhancing). The pack stores the image channels as
FLAIR, T1, T1ce, T2 (``tumorlib.core.brats.KAGGLE_STORED_ORDER``; ``tumorlib inspect-modalities`` checks a
folder); the reader returns them in the canonical order T1, T1ce, T2, FLAIR. It finds the files below
any root (for example kagglehub's download folder), checks them and stacks them into channel-first
volumes. Besides errors for broken files it warns when mask channels overlap or the background is not
exactly 0 (an image that was already normalised), and checks each volume's depth against
``meta_data.csv`` when that file sits beside the slices.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tumorlib.core.brats import KAGGLE_STORED_ORDER, MODALITIES, channel_permutation
from tumorlib.core.plausibility import check_intensity_dtype, check_plausible_image

from .kaggle_scan import SLICE_RE as _SLICE_RE
from .kaggle_scan import find_slices, scan_slices

__all__ = [
    "KAGGLE_DATASET",
    "check_volume",
    "download_brats2020",
    "find_slices",
    "list_volumes",
    "load_metadata",
    "load_volume",
    "scan_slices",
]

KAGGLE_DATASET = "awsaf49/brats2020-training-data"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def list_volumes(root: str | os.PathLike) -> list[int]:
    """The volume ids present below ``root``, sorted (they need not start at 1 or be contiguous).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no ``volume_*_slice_*.h5`` files.
    """
    ids = sorted(find_slices(root))
    if not ids:
        raise FileNotFoundError(f"no volume_{{id}}_slice_{{s}}.h5 files below {root}")
    return ids


@functools.lru_cache(maxsize=32)
def _slice_dirs(root: str) -> tuple[Path, ...]:
    """The folders below ``root`` that hold slice files (cached: the real set has ~57k files)."""
    return tuple(sorted({p.parent for vid in find_slices(root).values() for p in vid.values()}))


def _volume_slices(root: str | os.PathLike, volume_id: int) -> list[Path]:
    """The slice files of one volume in index order, checked for gaps."""
    key = str(Path(root).resolve())
    slices: dict[int, Path] = {}
    for attempt in range(2):
        dirs = _slice_dirs(key)
        if attempt == 0 and not all(d.is_dir() for d in dirs):
            _slice_dirs.cache_clear()  # a listed folder is gone: list again
            continue
        for folder in dirs:
            for path in folder.glob(f"volume_*{volume_id}_slice_*.h5"):  # also zero-padded ids (007)
                match = _SLICE_RE.match(path.name)
                if match and int(match.group(1)) == volume_id:
                    s = int(match.group(2))
                    if s in slices:
                        raise ValueError(f"volume {volume_id}: slice {s} found twice: {slices[s]} and {path}")
                    slices[s] = path
        if slices:
            break
        _slice_dirs.cache_clear()  # the folder may have changed since it was listed: list it again
    if not slices:
        ids = list_volumes(root)  # raises when the folder holds no volumes at all
        raise KeyError(f"volume {volume_id} not found below {root} "
                       f"(present: {min(ids)}..{max(ids)}, {len(ids)} volumes)")
    n = max(slices) + 1
    missing = sorted(set(range(n)) - set(slices))
    if missing:
        folder = slices[max(slices)].parent
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"volume {volume_id}: slice(s) {shown} missing in {folder} "
                         f"(found {len(slices)} of {n})")
    _check_trailing_slices(root, volume_id, n, slices[n - 1].parent)
    return [slices[s] for s in range(n)]


@functools.lru_cache(maxsize=32)
def _volume_depths(root: str) -> dict[int, int]:
    """Depth (highest slice + 1) of every volume below ``root`` (cached like ``_slice_dirs``)."""
    return {vid: max(slices) + 1 for vid, slices in find_slices(root).items()}


@functools.lru_cache(maxsize=8)
def _listed_depths(path: Path, mtime_ns: int, size: int) -> dict[int, int]:
    """Slices per volume (highest listed + 1) in a ``meta_data.csv`` (cached per file version)."""
    meta = pd.read_csv(path, usecols=["volume", "slice"])
    return {int(v): int(s) + 1 for v, s in meta.groupby("volume")["slice"].max().items()}


def _check_trailing_slices(root: str | os.PathLike, volume_id: int, depth: int, folder: Path) -> None:
    """Catch missing trailing slices, which leave no gap in the numbering.

    With a ``meta_data.csv`` beside the slices listing more of them: an error (the data is incomplete).
    Without one: a warning when the volume is shallower than most other volumes below ``root``
    (folders written by other tools may hold volumes of different depths on purpose).

    Raises:
        ValueError: fewer slices than ``meta_data.csv`` lists (names the volume, folder and CSV).
    """
    meta = folder / "meta_data.csv"
    if meta.is_file():
        try:
            st = meta.stat()
            listed = _listed_depths(meta, st.st_mtime_ns, st.st_size).get(volume_id)
        except (OSError, ValueError, KeyError):
            listed = None  # an unreadable or foreign CSV: load_metadata reports it
        if listed is not None and depth != listed:
            missing = f": slice(s) {depth}..{listed - 1} are missing" if depth < listed else ""
            raise ValueError(f"volume {volume_id}: {depth} slices in {folder} but {meta} lists {listed}"
                             f"{missing}")
        if listed is not None:
            return
    others = [d for v, d in _volume_depths(str(Path(root).resolve())).items() if v != volume_id]
    if others:
        common = max(set(others), key=others.count)
        if depth < common and others.count(common) > len(others) / 2:
            warnings.warn(f"volume {volume_id}: {depth} slices in {folder}, but most volumes there have "
                          f"{common}: trailing slices may be missing", UserWarning, stacklevel=4)


def _read_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One slice's (image (H, W, 4), mask (H, W, 3)) with checks that name the file."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"{path}: unreadable HDF5 file ({err})") from err
    with f:
        for key in ("image", "mask"):
            if key not in f:
                raise KeyError(f"{path}: no '{key}' dataset (has: {', '.join(f.keys()) or 'nothing'})")
            if not isinstance(f[key], h5py.Dataset):
                raise ValueError(f"{path}: '{key}' is an HDF5 {type(f[key]).__name__.lower()}, not a dataset")
        image, mask = f["image"][()], f["mask"][()]
    image, mask = _check_slice_values(path, image, mask)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"{path}: image must be (H, W, 4) (four modalities), got {image.shape}")
    if mask.ndim != 3 or mask.shape[2] != 3:
        raise ValueError(f"{path}: mask must be (H, W, 3) (necrosis, edema, enhancing), got {mask.shape}")
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{path}: image {image.shape} and mask {mask.shape} differ in size")
    return image, mask


def _check_slice_values(path: Path, image: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
    """Intensities as image (``check_intensity_dtype``), numbers as mask, image finite in float32, mask
    exactly 0/1; errors name the file."""
    image, mask = np.asarray(image), np.asarray(mask)
    check_intensity_dtype(image.dtype, str(path))
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"{path}: mask holds {mask.dtype} values ({mask.dtype.kind!r}), not numbers")
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError(f"{path}: image holds NaN or inf values")
        if image.size and float(np.abs(image).max()) > _FLOAT32_MAX:
            raise ValueError(f"{path}: image values up to {float(np.abs(image).max()):.3g} overflow float32 "
                             f"(max {_FLOAT32_MAX:.3g})")
    if mask.size and not ((mask == 0) | (mask == 1)).all():
        bad = np.unique(mask[(mask != 0) & (mask != 1)])[:8]
        raise ValueError(f"{path}: mask values must be 0 or 1, found {bad.tolist()} ({mask.dtype})")
    return image, mask


#: Fraction of voxels that must be exactly 0 in every channel for the background to look raw.
MIN_BACKGROUND_FRACTION = 0.01


def check_volume(image: np.ndarray, mask: np.ndarray, volume_id: int | str) -> dict[str, float]:
    """Warn about a volume that breaks the pack's conventions (the reader calls this).

    Args:
        image: (4, D, H, W) intensities as stored (raw scanner units, background exactly 0).
        mask: (3, D, H, W) class channels, which should be mutually exclusive.
        volume_id: named in the warnings.

    Returns:
        ``{"overlap_voxels": n, "background_fraction": f, "min_intensity": m}``.

    Warns:
        UserWarning: mask channels overlap (with the voxel count), or the image has negative values or
            almost no voxel exactly 0 in all channels: it looks already normalised, and the brain mask
            (non-zero voxels) used for cropping and normalisation would be wrong.
    """
    overlap = int(np.count_nonzero(mask.sum(axis=0, dtype=np.uint8) > 1))
    if overlap:
        warnings.warn(f"volume {volume_id}: {overlap} voxels lie in more than one mask channel "
                      "(necrosis, edema, enhancing should be disjoint)", stacklevel=3)
    background = float(np.mean(~image.any(axis=0)))
    low = float(image.min(initial=0.0))
    if low < 0 or background < MIN_BACKGROUND_FRACTION:
        why = f"negative intensities (min {low:.3g})" if low < 0 else \
            f"only {background:.2%} of voxels are exactly 0 in every channel"
        warnings.warn(f"volume {volume_id}: image looks already normalised ({why}); tumorlib expects raw "
                      "intensities with background exactly 0, else its brain mask is wrong", stacklevel=3)
    return {"overlap_voxels": overlap, "background_fraction": background, "min_intensity": low}


def load_volume(root: str | os.PathLike, volume_id: int,
                stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Read one volume from its HDF5 slices, channels in the canonical order.

    Args:
        root: any folder above the slice files.
        volume_id: the id in ``volume_{id}_slice_{s}.h5``.
        stored_order: the modality of each stored ``image`` channel (default: the Kaggle pack's
            FLAIR, T1, T1ce, T2; a config's ``kaggle_channel_order``).

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, D = number of slices in index order.
        mask: (3, D, H, W) uint8 in {0, 1}, channels necrosis/NET, edema, enhancing.

    Raises:
        KeyError: unknown volume id, or a slice without ``image``/``mask`` (names the file).
        ValueError: a gap in the slice numbering, a depth that differs from ``meta_data.csv``, slices
            of different shapes, wrong channel counts, NaN/inf intensities or mask values other than
            0/1 (each names the file or volume), or a bad ``stored_order``.
        ImplausibleImageError: (a ValueError) a volume that cannot be a scan, judged whole
            (``tumorlib.core.plausibility.check_plausible_image``: a blank or constant modality, two
            identical modalities) or a slice of non-intensity values (bool, ...); names the volume and folder
            or the file.
        OSError: an unreadable file (names it).

    Warns:
        UserWarning: overlapping mask channels or an image that looks normalised (``check_volume``).
    """
    perm = list(channel_permutation(stored_order))
    paths = _volume_slices(root, volume_id)
    image = mask = None
    for s, path in enumerate(paths):
        img_s, mask_s = _read_slice(path)
        if image is None:
            h, w = img_s.shape[:2]
            image = np.empty((4, len(paths), h, w), np.float32)
            mask = np.empty((3, len(paths), h, w), np.uint8)
        elif img_s.shape[:2] != image.shape[2:]:
            raise ValueError(f"{path}: slice is {img_s.shape[:2]} but earlier slices of volume "
                             f"{volume_id} are {image.shape[2:]}")
        image[:, s] = np.moveaxis(img_s[:, :, perm], -1, 0)
        mask[:, s] = np.moveaxis(mask_s, -1, 0)
    check_plausible_image(image, f"volume {volume_id} ({paths[-1].parent})", channels=MODALITIES)
    check_volume(image, mask, volume_id)
    return image, mask


def _find_file(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name))
    return hits[0] if hits else None


def load_metadata(root: str | os.PathLike) -> pd.DataFrame:
    """The per-slice metadata table, joined with the per-patient CSVs where present.

    Reads ``meta_data.csv`` (slice_path, target, volume, slice) and, when found, ``name_mapping.csv``
    (Grade, BraTS_2020_subject_ID, ...) and ``survival_info.csv`` (Age, Survival_days, ...), matched to
    volumes by the subject number (``BraTS20_Training_007`` is volume 7).

    Args:
        root: any folder above the CSVs.

    Returns:
        One row per slice, sorted by volume and slice.

    Raises:
        FileNotFoundError: no ``meta_data.csv`` below ``root``.
        ValueError: ``meta_data.csv`` lacks one of its columns (names the file).
    """
    root = Path(root)
    meta_path = _find_file(root, "meta_data.csv")
    if meta_path is None:
        raise FileNotFoundError(f"no meta_data.csv below {root}")
    meta = pd.read_csv(meta_path)
    required = {"slice_path", "target", "volume", "slice"}
    if not required <= set(meta.columns):
        raise ValueError(f"{meta_path}: needs columns {sorted(required)}, has {list(meta.columns)}")
    names_path = _find_file(meta_path.parent, "name_mapping.csv") or _find_file(root, "name_mapping.csv")
    if names_path is not None:
        names = pd.read_csv(names_path)
        if "BraTS_2020_subject_ID" in names.columns:
            names["volume"] = names["BraTS_2020_subject_ID"].str.extract(r"(\d+)$")[0].astype(int)
            keep = [c for c in ("volume", "Grade", "BraTS_2020_subject_ID") if c in names.columns]
            meta = meta.merge(names[keep], on="volume", how="left")
    surv_path = _find_file(meta_path.parent, "survival_info.csv") or _find_file(root, "survival_info.csv")
    if surv_path is not None and "BraTS_2020_subject_ID" in meta.columns:
        surv = pd.read_csv(surv_path)
        if "Brats20ID" in surv.columns:
            surv = surv.rename(columns={"Brats20ID": "BraTS_2020_subject_ID"})
            meta = meta.merge(surv, on="BraTS_2020_subject_ID", how="left")
    return meta.sort_values(["volume", "slice"], ignore_index=True)


def download_brats2020(dataset: str = KAGGLE_DATASET) -> Path:
    """Download BraTS2020 from Kaggle with ``kagglehub`` (``pip install tumorlib[kaggle]``).

    Needs Kaggle credentials (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``) and
    about 7 GB of disk. kagglehub caches the download, so a second call returns at once.

    Args:
        dataset: the Kaggle dataset handle.

    Returns:
        The downloaded folder; pass it as ``TUMORLIB_DATA`` or ``--data``.

    Raises:
        ImportError: kagglehub is not installed.
        FileNotFoundError: the download holds no ``volume_*_slice_*.h5`` files.
    """
    try:
        import kagglehub
    except ImportError as err:
        raise ImportError("downloading BraTS2020 needs kagglehub: pip install 'tumorlib[kaggle]'") from err
    path = Path(kagglehub.dataset_download(dataset))
    list_volumes(path)  # fails with a clear message if the download is not the expected layout
    return path
