"""Score folders of BraTS label files against references, without any model.

Any tool's output can be scored: a prediction folder of ``X.nii.gz`` files is matched by file name to a
reference folder holding ``X.nii.gz``, ``X_seg.nii.gz`` or ``X-seg.nii.gz`` (``.nii`` also works). Each side
has its label convention (``tumorlib.core.label_conventions``: brats2020 0/1/2/4, brats2023 0/1/2/3 and the
2024 cavity 4, msd 0/1/2/3), named (``pred_labels``, ``ref_labels``) or detected from each file's name and
values (ambiguous: an error); both are read into the same classes, so a 2023 prediction scored against a
2023 reference gives the scores of the same labels in the 2020 convention. Each
pair must have one shape, one affine (the voxel grid, compared to 1e-4 mm) and only its convention's labels; the voxel
size comes from the reference's header. Each case gets the legacy BraTS 2020 columns
(``tumorlib.evaluation.metrics.METRIC_COLUMNS``) and the BraTS 2023 lesion-wise columns
(``tumorlib.evaluation.lesions``). References without a prediction are not scored (a folder of all
training labels can score a subset); a prediction without a reference is an error.

Every problem is one ``ValueError`` line naming the file: a non-NIfTI file in the prediction folder
(hidden files such as ``.DS_Store`` are skipped), an empty folder, a missing or ambiguous reference, a
shape or affine mismatch, a label outside the convention, a non-integer or non-3-D volume, an unreadable file.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from tumorlib.core.brats import channels_to_labels
from tumorlib.core.folders import require_folder
from tumorlib.core.label_conventions import LabelConvention, convention_to_channels, detect_label_convention
from tumorlib.evaluation.lesions import LESION_COLUMNS, LESION_COUNT_COLUMNS, lesion_scores
from tumorlib.evaluation.metrics import METRIC_COLUMNS, brats_scores
from tumorlib.io.nifti import nifti_spacing

__all__ = [
    "LABEL_FILE_COLUMNS",
    "NIFTI_SUFFIXES",
    "check_label_files_out",
    "case_name",
    "evaluate_label_files",
    "match_label_files",
    "read_label_file",
    "score_label_file_pair",
    "score_label_files",
]

#: File name endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: The columns of ``score_label_files``, in order.
LABEL_FILE_COLUMNS: tuple[str, ...] = ("case", *METRIC_COLUMNS, *LESION_COLUMNS, *LESION_COUNT_COLUMNS)
#: Largest affine difference (mm) still read as the same voxel grid.
_AFFINE_TOLERANCE = 1e-4


def case_name(path: str | os.PathLike) -> str | None:
    """The case name of a NIfTI file: its name without ``.nii.gz`` or ``.nii``; None for other files."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def check_label_files_out(out: str | os.PathLike, pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> None:
    """The rules of the label files' metrics CSV, checked before anything else (``tumorlib.core.outputs`` after).

    Raises:
        ValueError: ``out`` does not end in ``.csv``, lies inside the prediction or reference folder (a CSV
            there would be read as a stray file next time), or is one of their files under another name.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: the metrics file must end in .csv")
    for folder in (Path(pred_dir), Path(ref_dir)):
        if out.absolute().resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out} is inside the input folder {folder}; write the CSV elsewhere")
    from tumorlib.core.folders import check_not_input

    folders = [Path(pred_dir), Path(ref_dir)]
    check_not_input(out, [p for f in folders if f.is_dir() for p in f.iterdir() if p.is_file()])  # a hard link


def _folder(path: str | os.PathLike, role: str) -> Path:
    return require_folder(path, f"{role} folder")


def _reference(ref_dir: Path, case: str) -> Path:
    names = [f"{case}{tail}{s}" for tail in ("", "_seg", "-seg") for s in NIFTI_SUFFIXES]
    found = [ref_dir / n for n in names if (ref_dir / n).is_file()]
    if not found:
        raise ValueError(f"{case}: no reference {case}.nii.gz or {case}_seg.nii.gz in {ref_dir}")
    if len(found) > 1:
        raise ValueError(f"{case}: several references match in {ref_dir}: {', '.join(p.name for p in found)}")
    return found[0]


def _is_sidecar(folder: Path, case: str) -> bool:
    """``X_probabilities``, ``X_entropy``, ``X_variance`` beside a label file ``X`` (what ``predict`` writes)."""
    from tumorlib.inference.predict import SIDECAR_SUFFIXES

    return any(case.endswith(sfx) and any((folder / f"{case[: -len(sfx)]}{ext}").is_file() for ext in (".nii.gz", ".nii"))
               for sfx in SIDECAR_SUFFIXES)


def match_label_files(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair each prediction file with its reference by file name.

    Args:
        pred_dir: folder of predicted label files ``X.nii.gz``.
        ref_dir: folder of references ``X.nii.gz`` or ``X_seg.nii.gz``.

    Returns:
        ``(case, pred_path, ref_path)`` sorted by case.

    Raises:
        ValueError: a folder is missing or holds no NIfTI file, a prediction folder entry is not a NIfTI
            file, or a prediction has no (or more than one) reference.
    """
    pred_dir, ref_dir = _folder(pred_dir, "prediction"), _folder(ref_dir, "reference")
    pairs = []
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith("."):
            continue
        case = case_name(path)
        if case is None or not path.is_file():
            raise ValueError(f"{path}: not a NIfTI label file (expected *.nii.gz or *.nii)")
        if _is_sidecar(pred_dir, case):
            continue  # predict's probabilities or uncertainty map beside the label file X
        pairs.append((case, path, _reference(ref_dir, case)))
    if not pairs:
        raise ValueError(f"{pred_dir}: no prediction files (*.nii.gz) to score")
    cases = [c for c, _, _ in pairs]
    dupes = sorted({c for c in cases if cases.count(c) > 1})
    if dupes:
        raise ValueError(f"{pred_dir}: case {dupes[0]} is there as both .nii and .nii.gz")
    return pairs


def read_label_file(path: str | os.PathLike, convention: str | LabelConvention | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One label file of any convention, as BraTS2020 labels in tumorlib's (D, H, W) layout.

    Args:
        path: a 3-D NIfTI label file, stored (H, W, D) as BraTS files are.
        convention: its label convention (``brats2020``, ``brats2023``, ``msd``); None: detected from the
            file's name and values (``detect_label_convention``).

    Returns:
        ``(labels, affine)``: (D, H, W) uint8 labels 0/1/2/4 (ncr, ed, et; the 2024 resection cavity is 0)
        and the file's (4, 4) affine.

    Raises:
        ValueError: unreadable, not 3-D, not integer-valued, a label outside the convention, or a
            convention the values leave ambiguous (each names the file).
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel and zlib raise several types for broken files
        raise ValueError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D label volume, got shape {data.shape}")
    values = np.unique(data)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ValueError(f"{path}: labels must be integers, found non-integer values")
    found = values.astype(np.int64).tolist()
    conv = detect_label_convention(found, path.name, where=str(path)) if convention is None else convention
    channels = convention_to_channels(np.transpose(data, (2, 0, 1)).astype(np.int64), conv, where=str(path))
    return channels_to_labels(channels), np.asarray(img.affine, dtype=np.float64)


def score_label_file_pair(pred_path: str | os.PathLike, ref_path: str | os.PathLike,
                          pred_labels: str | None = None, ref_labels: str | None = None) -> dict[str, float]:
    """Legacy and lesion-wise scores of one prediction file against its reference.

    Args:
        pred_path: predicted label file.
        ref_path: reference label file.
        pred_labels, ref_labels: each side's label convention; None: detected (``read_label_file``).

    Returns:
        ``{column: value}`` for ``METRIC_COLUMNS``, ``LESION_COLUMNS`` and ``LESION_COUNT_COLUMNS``.

    Raises:
        ValueError: see ``read_label_file``, or the shapes or affines differ (names both files).
    """
    pred, pred_affine = read_label_file(pred_path, pred_labels)
    ref, ref_affine = read_label_file(ref_path, ref_labels)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred_path}: shape {pred.shape[1:] + pred.shape[:1]} differs from reference "
                         f"{ref_path} {ref.shape[1:] + ref.shape[:1]}")
    if not np.allclose(pred_affine, ref_affine, atol=_AFFINE_TOLERANCE):
        diff = float(np.abs(pred_affine - ref_affine).max())
        raise ValueError(f"{pred_path}: affine differs from reference {ref_path} (by up to {diff:.4g}); "
                         f"write predictions on the reference's grid and header")
    spacing = nifti_spacing(ref_affine)
    scores = brats_scores(convention_to_channels(pred, "brats2020"), convention_to_channels(ref, "brats2020"),
                          spacing)
    scores.update(lesion_scores(pred, ref, spacing))
    return scores


def score_label_files(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, pred_labels: str | None = None,
                      ref_labels: str | None = None) -> pd.DataFrame:
    """Score every prediction file of a folder against the reference of the same name.

    Args:
        pred_dir: folder of predicted label files ``X.nii.gz``.
        ref_dir: folder of references ``X.nii.gz`` or ``X_seg.nii.gz``.
        pred_labels, ref_labels: each side's label convention; None: detected per file.

    Returns:
        One row per case, sorted by case, columns ``LABEL_FILE_COLUMNS``: ``case`` (the file name without
        ``.nii.gz``), the legacy metrics, the lesion-wise metrics and lesion counts.

    Raises:
        ValueError: one line naming the file (see the module text).
    """
    rows = []
    for case, pred_path, ref_path in match_label_files(pred_dir, ref_dir):
        rows.append({"case": case, **score_label_file_pair(pred_path, ref_path, pred_labels, ref_labels)})
    return pd.DataFrame(rows, columns=list(LABEL_FILE_COLUMNS))


def evaluate_label_files(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out: str | os.PathLike,
                         progress: bool = True, pred_labels: str | None = None,
                         ref_labels: str | None = None) -> pd.DataFrame:
    """Score a folder of label files (``score_label_files``) and write the CSV and its summary.

    The output is refused before anything is read when it could destroy data: it must be a ``.csv``
    file outside both folders (a CSV in the prediction folder would be read as a stray file next time)
    and, like its summary (``tumorlib.evaluation.evaluate.summary_path``), not one of the label files.
    Both files are written atomically.

    Args:
        pred_dir: folder of predicted BraTS label files.
        ref_dir: folder of references (``X.nii.gz`` or ``X_seg.nii.gz``).
        out: the per-case CSV; the summary (mean, median, std) goes beside it.
        progress: print where the CSV went and the summary.
        pred_labels, ref_labels: each side's label convention; None: detected per file.

    Returns:
        The per-case table (``LABEL_FILE_COLUMNS``).

    Raises:
        ValueError: one line naming the file (see the module text, or the refused ``--out``).
    """
    from tumorlib.core.safety import atomic_write
    from tumorlib.evaluation.evaluate import summarize, summary_path

    out_path, pred, ref = Path(out), _folder(pred_dir, "prediction"), _folder(ref_dir, "reference")
    check_label_files_out(out_path, pred, ref)
    pairs = match_label_files(pred, ref)
    inputs = [p for _, pred_path, ref_path in pairs for p in (pred_path, ref_path)]
    from tumorlib.core.outputs import check_output_file

    for path in (out_path, summary_path(out_path)):
        check_output_file(path, inputs, writer="evaluate")  # never an input, nor a file tumorlib did not write
    rows = [{"case": case, **score_label_file_pair(p, r, pred_labels, ref_labels)} for case, p, r in pairs]
    frame = pd.DataFrame(rows, columns=list(LABEL_FILE_COLUMNS))
    summary = summarize(frame)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, frame.to_csv(index=False), writer="evaluate")
    atomic_write(summary_path(out_path), summary.to_csv(index_label="statistic"), writer="evaluate")
    if progress:
        from tumorlib.core.sources import display_path

        print(f"{len(frame)} cases ({display_path(pred)} against {display_path(ref)}) -> {display_path(out_path)}")
        print(summary.round(4).to_string())
    return frame
