"""Which BraTS-family release a NIfTI folder holds, from its file names and ``dataset.json`` only.

==========  ===============================================================  ================
layout      files                                                            labels
==========  ===============================================================  ================
brats2020   ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (any case name)  brats2020
brats2021   the same files in ``BraTS2021_00000/`` folders                   brats2020
brats2023   ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}``  brats2023
msd         ``dataset.json``, ``imagesTr/BRATS_001.nii.gz`` (4-D), ``labelsTr/``  msd
==========  ===============================================================  ================

(the label conventions: ``tumorlib.core.label_conventions``). ``detect_layout`` never guesses: a folder
whose cases follow two layouts, a case folder holding files of two layouts, or a folder with NIfTI files of
no known layout is a one-line error naming what it found. Naming the layout (``--layout``) reads the files
of that layout whatever the case folders are called.

Volume ids: the number that ends a brats2020/2021 case folder (``BraTS20_Training_007`` -> 7); for
brats2023, patient * 1000 + timepoint (``BraTS-GLI-00012-001`` -> 12001); for msd the number of
``BRATS_001`` (1).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tumorlib.core.brats import CANONICAL_ORDER, check_order
from tumorlib.core.folders import require_folder

from .kaggle_scan import find_slices

__all__ = ["LAYOUTS", "LAYOUT_CONVENTIONS", "NiftiCase", "case_from_path", "check_layout", "data_layout", "detect_layout",
           "list_cases",
           "msd_channel_order"]

#: The layouts tumorlib reads.
LAYOUTS: tuple[str, ...] = ("brats2020", "brats2021", "brats2023", "msd")
#: The label convention of each layout.
LAYOUT_CONVENTIONS: dict[str, str] = {"brats2020": "brats2020", "brats2021": "brats2020",
                                      "brats2023": "brats2023", "msd": "msd"}
_EXT = r"\.nii(\.gz)?$"
_SUFFIXES = {"brats2020": dict(zip(CANONICAL_ORDER, ("_t1", "_t1ce", "_t2", "_flair"))),
             "brats2023": dict(zip(CANONICAL_ORDER, ("-t1n", "-t1c", "-t2w", "-t2f")))}
_FILE_RE = {"brats2020": re.compile(r"_(t1|t1ce|t2|flair)" + _EXT, re.I),
            "brats2023": re.compile(r"-(t1n|t1c|t2w|t2f)" + _EXT, re.I)}
# BraTS20_Training_355 ships its segmentation as "W39_1998.09.19_Segm.nii": accept *seg / *segm
_SEG_RE = {"brats2020": re.compile(r"(^|[_\-.])segm?" + _EXT, re.I), "brats2023": re.compile(r"-seg" + _EXT, re.I)}
_GLI_RE = re.compile(r"BraTS-[A-Z]{2,4}-(\d{5})-(\d{3})")
_KNOWN = "known layouts: brats2020, brats2021 (*_t1ce.nii.gz), brats2023 (*-t1c.nii.gz), msd (dataset.json)"


@dataclass(frozen=True)
class NiftiCase:
    """The files of one case.

    Attributes:
        volume_id: the case's number (see the module text).
        name: the case name (folder name; for msd the image file's name without ``.nii.gz``).
        layout: one of ``LAYOUTS``.
        images: four files in canonical order (T1, T1ce, T2, FLAIR), or one 4-D file (msd).
        seg: the segmentation, or None.
        stored_order: the channel order of a 4-D image file (msd), else None.
    """

    volume_id: int
    name: str
    layout: str
    images: tuple[Path, ...]
    seg: Path | None = None
    stored_order: tuple[str, ...] | None = None

    @property
    def convention(self) -> str:
        """The label convention of the case's segmentation (``tumorlib.core.label_conventions``)."""
        return LAYOUT_CONVENTIONS[self.layout]

    @property
    def files(self) -> list[Path]:
        """Every file of the case (images, then the segmentation)."""
        return [*self.images, *([self.seg] if self.seg is not None else [])]

    def __str__(self) -> str:
        return str(self.images[0] if self.layout == "msd" else self.images[0].parent)


def _nifti_names(folder: Path) -> list[str]:
    """The NIfTI file names in ``folder``; hidden files (macOS ``._*`` copies in archives) are not data."""
    return sorted(f.name for f in folder.iterdir()
                  if f.is_file() and not f.name.startswith(".") and re.search(_EXT, f.name, re.I))


def _one(folder: Path, names: list[str], pattern: re.Pattern, what: str) -> Path | None:
    hits = [n for n in names if pattern.search(n)]
    if len(hits) > 1:
        raise ValueError(f"{folder}: {len(hits)} files for {what}: {', '.join(hits)}")
    return folder / hits[0] if hits else None


def _folder_case(folder: Path, layout: str, need_id: bool = True) -> NiftiCase:
    """The case in one folder of a brats2020/2021/2023 layout (every modality file required); a case read on
    its own (``need_id`` False: ``predict --nifti``) may have a folder name without a number (id 0)."""
    family = "brats2023" if layout == "brats2023" else "brats2020"
    names = _nifti_names(folder)
    images = []
    for key, suffix in _SUFFIXES[family].items():
        found = _one(folder, names, re.compile(re.escape(suffix) + _EXT, re.I), key)
        if found is None:
            raise FileNotFoundError(f"{folder}: no {key} file (*{suffix}.nii.gz) in the case folder ({layout})")
        images.append(found)
    seg = _one(folder, names, _SEG_RE[family], "seg")
    if family == "brats2023":
        match = _GLI_RE.search(images[0].name)
        if match is None:
            raise ValueError(f"{images[0]}: a brats2023 file name must start BraTS-GLI-00000-000 (any 2-4 "
                             "letter type)")
        vid = int(match.group(1)) * 1000 + int(match.group(2))
    else:
        match = re.search(r"(\d+)$", folder.name)
        if match is None and need_id:
            raise ValueError(f"{folder}: case folder name must end in its number (e.g. BraTS20_Training_001)")
        vid = int(match.group(1)) if match is not None else 0
    return NiftiCase(vid, folder.name, layout, tuple(images), seg)


def _folder_layout(folder: Path, names: list[str]) -> str | None:
    """The layout one folder's file names say, None when they say none; two at once is an error."""
    kinds = sorted(k for k, rx in _FILE_RE.items() if any(rx.search(n) for n in names))
    if len(kinds) > 1:
        raise ValueError(f"{folder}: files of two layouts in one case folder ({', '.join(names[:6])})")
    if not kinds:
        return None
    if kinds[0] == "brats2020" and re.fullmatch(r"BraTS2021_\d+", folder.name):
        return "brats2021"
    return kinds[0]


def msd_channel_order(dataset_json: str | os.PathLike) -> tuple[str, ...]:
    """The channel order of an MSD (or nnU-Net v2) ``dataset.json``: its ``modality`` or ``channel_names``.

    Raises:
        ValueError: unreadable JSON, no channel names, names that are not the four modalities, or labels
            other than MSD's 1 edema, 2 non-enhancing tumour, 3 enhancing (names the file).
    """
    path = Path(dataset_json)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable dataset.json ({err})") from None
    channels = meta.get("modality") or meta.get("channel_names")
    if not isinstance(channels, dict):
        raise ValueError(f"{path}: no 'modality' (or 'channel_names') in dataset.json")
    try:
        order = check_order([channels[k] for k in sorted(channels, key=int)])
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: {err}") from None
    labels = {str(k): str(v).lower() for k, v in (meta.get("labels") or {}).items()}
    want = {"1": "edema", "2": "non-enhancing", "3": "enhancing"}
    if labels and not all(w in labels.get(k, "").replace(" ", "-") for k, w in want.items()):
        raise ValueError(f"{path}: labels {meta.get('labels')} are not MSD Task01's 1 edema, 2 non-enhancing "
                         "tumour, 3 enhancing tumour")
    return order


def _msd_cases(root: Path) -> dict[int, NiftiCase]:
    order = msd_channel_order(root / "dataset.json")
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir():
        raise FileNotFoundError(f"{root}: dataset.json but no imagesTr/ folder (msd layout)")
    cases: dict[int, NiftiCase] = {}
    for name in _nifti_names(images):
        match = re.fullmatch(r"(BRATS_(\d+))(_0000)?" + _EXT, name)
        if match is None:
            raise ValueError(f"{images / name}: not an msd image name (BRATS_001.nii.gz)")
        seg = [labels / f"{match.group(1)}{e}" for e in (".nii.gz", ".nii")]
        seg = [p for p in seg if p.is_file()]
        cases[int(match.group(2))] = NiftiCase(int(match.group(2)), match.group(1), "msd", (images / name,),
                                               seg[0] if seg else None, order)
    if not cases:
        raise FileNotFoundError(f"{images}: no BRATS_*.nii.gz images (msd layout)")
    return dict(sorted(cases.items()))


def _scan(root: Path) -> dict[str, list[Path]]:
    """Case folders below ``root`` by the layout their file names say."""
    found: dict[str, list[Path]] = {}
    for folder, _dirs, _files in os.walk(root):
        path = Path(folder)
        layout = _folder_layout(path, _nifti_names(path))
        if layout is not None:
            found.setdefault(layout, []).append(path)
    return found


def detect_layout(root: str | os.PathLike) -> str:
    """The layout of a data folder, from its file names and ``dataset.json``.

    Args:
        root: the folder above the case folders (or the MSD task folder with ``dataset.json``).

    Returns:
        One of ``LAYOUTS``.

    Raises:
        FileNotFoundError: no such folder, or no case of a known layout in it (lists the known layouts).
        ValueError: cases of several layouts (names each with an example), or a case folder with files of two.
    """
    root = Path(root)
    require_folder(root, "NIfTI data folder")
    if (root / "dataset.json").is_file():
        return "msd"
    found = _scan(root)
    if len(found) > 1:
        seen = "; ".join(f"{k}: {len(v)} cases (e.g. {v[0].name})" for k, v in sorted(found.items()))
        raise ValueError(f"{root}: mixed layouts ({seen}); keep one layout per folder or name it with --layout")
    if not found:
        raise FileNotFoundError(f"{root}: no NIfTI case of a known layout ({_KNOWN})")
    return next(iter(found))


def data_layout(root: str | os.PathLike) -> str:
    """What a data folder holds: ``"kaggle"`` (the per-slice HDF5 pack) or one of ``LAYOUTS`` (NIfTI cases).

    The one test ``TUMORLIB_DATA`` and the workspace's data go through; a NIfTI folder's layout is
    ``detect_layout``'s answer, so it is read exactly as ``cache --nifti ROOT`` reads it.

    Args:
        root: the data folder.

    Returns:
        ``"kaggle"`` or a layout name.

    Raises:
        FileNotFoundError: no such folder, or neither Kaggle slices nor NIfTI cases of a known layout in it
            (one line listing the layouts).
        ValueError: NIfTI cases of several layouts (``detect_layout``).
    """
    root = Path(root)
    require_folder(root, "data folder")
    if find_slices(root):
        return "kaggle"
    try:
        return detect_layout(root)
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: neither Kaggle volume_{{id}}_slice_{{s}}.h5 files nor NIfTI cases "
                                f"of a known layout ({_KNOWN})") from None


def list_cases(root: str | os.PathLike, layout: str | None = None) -> dict[int, NiftiCase]:
    """Every case below ``root``, keyed by volume id.

    Args:
        root: the data folder.
        layout: one of ``LAYOUTS``; None: ``detect_layout``.

    Returns:
        ``{volume_id: NiftiCase}`` sorted by id.

    Raises:
        FileNotFoundError, ValueError: see ``detect_layout``; an unknown layout name; a case folder missing a
            modality; two cases with one id (names both).
    """
    root = Path(root)
    layout = detect_layout(root) if layout is None else check_layout(layout)
    if layout == "msd":
        return _msd_cases(root)
    require_folder(root, "NIfTI data folder")
    family = "brats2023" if layout == "brats2023" else "brats2020"
    folders = [p for k, v in _scan(root).items() if (k == "brats2023") == (family == "brats2023") for p in v]
    cases: dict[int, NiftiCase] = {}
    for folder in sorted(folders):
        case = _folder_case(folder, layout)
        if case.volume_id in cases:
            raise ValueError(f"volume {case.volume_id}: two case folders, {cases[case.volume_id]} and {folder}")
        cases[case.volume_id] = case
    if not cases:
        raise FileNotFoundError(f"no {layout} case folders below {root} ({_KNOWN})")
    return dict(sorted(cases.items()))


def check_layout(layout: str) -> str:
    """A layout name, checked (lists the known ones)."""
    name = str(layout).strip().lower()
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; {_KNOWN}")
    return name


def case_from_path(path: str | os.PathLike | NiftiCase, layout: str | None = None) -> NiftiCase:
    """The case at a path: a brats2020/2021/2023 case folder, or an msd image file (``imagesTr/BRATS_001.nii.gz``,
    its label file taken from ``labelsTr/`` beside it).

    Raises:
        FileNotFoundError: no such folder or file, a folder of no known layout (lists them), a modality missing.
        ValueError: files of two layouts in the folder.
    """
    if isinstance(path, NiftiCase):
        return path
    path = Path(path)
    if path.is_file() and (layout in (None, "msd")) and (path.parent.parent / "dataset.json").is_file():
        cases = [c for c in _msd_cases(path.parent.parent).values() if c.images[0] == path]
        if cases:
            return cases[0]
        match = re.fullmatch(r"(BRATS_(\d+))(_0000)?" + _EXT, path.name)
        if match is not None:  # an image outside imagesTr (imagesTs: the unlabelled test cases)
            order = msd_channel_order(path.parent.parent / "dataset.json")
            return NiftiCase(int(match.group(2)), match.group(1), "msd", (path,), None, order)
    require_folder(path, "NIfTI case folder")
    found = _folder_layout(path, _nifti_names(path)) if layout is None else check_layout(layout)
    if found is None or found == "msd":
        raise FileNotFoundError(f"{path}: no case of a known layout in the folder ({_KNOWN})")
    return _folder_case(path, found, need_id=False)
