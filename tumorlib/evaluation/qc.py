"""Per-case quality control of a predicted segmentation: region volumes, lesion counts and flags.

One row per case (``qc_row``), ready for a CSV (``write_qc_csv``) and the report page:

- ``volume_wt_ml``, ``volume_tc_ml``, ``volume_et_ml``: region volumes in millilitres from the voxel
  spacing (mm): voxels x ``prod(spacing)`` / 1000;
- ``lesions_wt``, ``lesions_tc``, ``lesions_et``: connected components of each region, 26-connectivity
  (voxels sharing a face, an edge or a corner belong together), components below ``min_lesion_ml``
  left out of the count;
- ``mean_entropy_tumour``, ``uncertain_fraction``: from the entropy map
  (``tumorlib.inference.uncertainty.uncertainty_summary``), NaN when no uncertainty is given;
- flags (bool), and ``flags``: the names of those raised, joined by ``;``:

  - ``flag_empty_tumour``: nothing predicted; ``flag_empty_et``: no enhancing tumour predicted (many
    low-grade cases truly have none, but in BraTS it is also where ET Dice falls to 0);
  - ``flag_touches_border``: a tumour voxel on a face of the crop box (the cache's brain crop, or the
    volume itself when no box is given): the tumour may go on beyond what the model saw;
  - ``flag_uncertain``: ``uncertain_fraction`` above ``max_uncertain_fraction``;
  - ``flag_volume_outlier``: a region volume outside ``[p1 / 2, 2 * p99]`` of the training cases' volumes
    of that region (percentiles of the given list; needs ``MIN_TRAIN_CASES`` cases, else not raised and
    ``volume_range_<region>`` is empty). The rule is a range, not a z-score, because tumour volumes are
    strongly skewed (a few very large cases) and a z-score would never flag small ones.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tumorlib.core.brats import REGION_KEYS, channels_to_labels, labels_to_regions
from tumorlib.core.regions import COMPONENT_STRUCTURE

__all__ = [
    "DEFAULT_MAX_UNCERTAIN_FRACTION",
    "FLAG_NAMES",
    "MIN_TRAIN_CASES",
    "QC_COLUMNS",
    "count_lesions",
    "qc_row",
    "region_volumes_ml",
    "touches_border",
    "volume_range",
    "write_qc_csv",
]

#: ``flag_uncertain`` is raised above this fraction of uncertain voxels.
DEFAULT_MAX_UNCERTAIN_FRACTION = 0.25
#: Fewest training volumes from which the outlier range is computed.
MIN_TRAIN_CASES = 5
#: The flags of a row, in column order.
FLAG_NAMES: tuple[str, ...] = ("empty_tumour", "empty_et", "touches_border", "uncertain", "volume_outlier")
#: Columns of a QC row, in order (``case`` first when given).
QC_COLUMNS: tuple[str, ...] = (
    "case",
    *(f"volume_{r}_ml" for r in REGION_KEYS),
    *(f"lesions_{r}" for r in REGION_KEYS),
    "mean_entropy_tumour",
    "uncertain_fraction",
    "et_postprocessing",
    *(f"components_removed_{r}" for r in REGION_KEYS),
    *(f"flag_{f}" for f in FLAG_NAMES),
    "flags",
    *(f"volume_range_{r}" for r in REGION_KEYS),
)


def _labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 4:  # (3, D, H, W) class channels
        return channels_to_labels(arr)
    if arr.ndim != 3:
        raise ValueError(f"labels must be (D, H, W) BraTS labels or (3, D, H, W) class channels, "
                         f"got shape {arr.shape}")
    return arr


def _voxel_ml(spacing: Sequence[float]) -> float:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be three positive voxel sizes in mm (D, H, W), got {spacing}")
    return spacing[0] * spacing[1] * spacing[2] / 1000.0


def region_volumes_ml(labels: Any, spacing: Sequence[float]) -> dict[str, float]:
    """Volume of each region in mL.

    Args:
        labels: (D, H, W) BraTS labels (0, 1, 2, 4) or (3, D, H, W) class channels (ncr, ed, et).
        spacing: voxel size along (D, H, W) in mm.

    Returns:
        ``{"wt": mL, "tc": mL, "et": mL}``.

    Raises:
        ValueError: bad labels or spacing.
    """
    regions = labels_to_regions(_labels(labels))
    ml = _voxel_ml(spacing)
    return {r: float(np.count_nonzero(regions[i])) * ml for i, r in enumerate(REGION_KEYS)}


def count_lesions(mask: Any, min_voxels: int = 1) -> int:
    """Connected components of a binary mask, 26-connectivity.

    Args:
        mask: (D, H, W) binary.
        min_voxels: components smaller than this are not counted.

    Returns:
        The number of components with at least ``min_voxels`` voxels.
    """
    components, n = ndimage.label(np.asarray(mask) != 0, structure=COMPONENT_STRUCTURE)
    if n == 0 or min_voxels <= 1:
        return int(n)
    sizes = np.bincount(components.ravel())[1:]
    return int(np.count_nonzero(sizes >= min_voxels))


def touches_border(mask: Any, crop_box: Sequence[Sequence[int]] | None = None) -> bool:
    """Whether a mask has a voxel on a face of the crop box.

    Args:
        mask: (D, H, W) binary, in the frame the box is given in.
        crop_box: ((d0, d1), (h0, h1), (w0, w1)) half-open ranges (the cache index's ``crop_box``);
            None: the whole volume.

    Returns:
        True when any voxel of the mask lies on the box's first or last index of an axis.

    Raises:
        ValueError: a box that is not three ranges inside the volume.
    """
    m = np.asarray(mask) != 0
    box = [(0, s) for s in m.shape] if crop_box is None else [tuple(int(v) for v in r) for r in crop_box]
    if len(box) != 3 or any(not 0 <= a < b <= s for (a, b), s in zip(box, m.shape)):
        raise ValueError(f"crop box {box} is not three ranges inside the volume of shape {m.shape}")
    inner = m[tuple(slice(a, b) for a, b in box)]
    for axis in range(3):
        if np.take(inner, 0, axis=axis).any() or np.take(inner, -1, axis=axis).any():
            return True
    return False


def volume_range(train_volumes_ml: Sequence[float]) -> tuple[float, float] | None:
    """The plausible range of a region's volume from training cases: ``[p1 / 2, 2 * p99]``.

    Args:
        train_volumes_ml: the region's volume (mL) in each training case.

    Returns:
        ``(low, high)`` in mL, or None with fewer than ``MIN_TRAIN_CASES`` finite values.
    """
    values = np.asarray([v for v in train_volumes_ml if math.isfinite(float(v))], dtype=np.float64)
    if values.size < MIN_TRAIN_CASES:
        return None
    p1, p99 = np.percentile(values, [1, 99])
    return float(p1) / 2.0, 2.0 * float(p99)


def _train_ranges(train_volumes_ml: Any) -> dict[str, tuple[float, float] | None]:
    if train_volumes_ml is None:
        return {}
    if isinstance(train_volumes_ml, Mapping):
        unknown = sorted(set(train_volumes_ml) - set(REGION_KEYS))
        if unknown:
            raise ValueError(f"train_volumes_ml has unknown regions {unknown}; expected {', '.join(REGION_KEYS)}")
        return {r: volume_range(v) for r, v in train_volumes_ml.items()}
    return {"wt": volume_range(train_volumes_ml)}  # a plain list: whole-tumour volumes


def _uncertainty(uncertainty: Any, labels: np.ndarray, threshold: float | None) -> dict[str, float]:
    if uncertainty is None:
        return {"mean_entropy_tumour": float("nan"), "uncertain_fraction": float("nan")}
    if isinstance(uncertainty, Mapping):
        return {k: float(uncertainty[k]) for k in ("mean_entropy_tumour", "uncertain_fraction")}
    from tumorlib.inference.uncertainty import DEFAULT_UNCERTAIN_THRESHOLD, uncertainty_summary

    summary = uncertainty_summary(uncertainty, labels, DEFAULT_UNCERTAIN_THRESHOLD if threshold is None else threshold)
    return {k: float(summary[k]) for k in ("mean_entropy_tumour", "uncertain_fraction")}


def qc_row(labels: Any, spacing: Sequence[float], uncertainty: Any = None, train_volumes_ml: Any = None,
           crop_box: Sequence[Sequence[int]] | None = None, case: Any = None,
           uncertain_threshold: float | None = None,
           max_uncertain_fraction: float = DEFAULT_MAX_UNCERTAIN_FRACTION, min_lesion_ml: float = 0.0,
           et_postprocessing: str = "none", components_removed: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The QC row of one predicted case (see the module text for every column).

    Args:
        labels: (D, H, W) predicted BraTS labels (0, 1, 2, 4) or (3, D, H, W) class channels.
        spacing: voxel size along (D, H, W) in mm (``nifti_spacing`` for NIfTI input).
        uncertainty: None; a (D, H, W) normalised entropy map; or a mapping with ``mean_entropy_tumour``
            and ``uncertain_fraction`` (an ``uncertainty_summary``).
        train_volumes_ml: None; a list of the training cases' WT volumes (mL); or a mapping region ->
            list (``"wt"``, ``"tc"``, ``"et"``).
        crop_box: the crop box in the labels' frame (see ``touches_border``); None: the whole volume.
        case: the case's id or name (the ``case`` column).
        uncertain_threshold: entropy above which a voxel is uncertain (default: the uncertainty module's).
        max_uncertain_fraction: ``flag_uncertain`` above this fraction.
        min_lesion_ml: components smaller than this do not count as lesions.
        et_postprocessing: the post-processing rule applied before this row (recorded as is, e.g. ``"none"``;
            ``PostProcessing.describe``).
        components_removed: per region, the components that rule removed (None: 0 each).

    Returns:
        A dict with the keys of ``QC_COLUMNS``.

    Raises:
        ValueError: bad labels, spacing, crop box or region names.
    """
    lab = _labels(labels)
    regions = labels_to_regions(lab)
    voxel_ml = _voxel_ml(spacing)
    min_voxels = max(1, math.ceil(min_lesion_ml / voxel_ml - 1e-9)) if min_lesion_ml > 0 else 1
    row: dict[str, Any] = {"case": case}
    volumes = region_volumes_ml(lab, spacing)
    row.update({f"volume_{r}_ml": v for r, v in volumes.items()})
    row.update({f"lesions_{r}": count_lesions(regions[i], min_voxels) for i, r in enumerate(REGION_KEYS)})
    row.update(_uncertainty(uncertainty, lab, uncertain_threshold))
    row["et_postprocessing"] = et_postprocessing
    row.update({f"components_removed_{r}": int((components_removed or {}).get(r, 0)) for r in REGION_KEYS})
    ranges = _train_ranges(train_volumes_ml)
    outlier = any(rng is not None and not rng[0] <= volumes[r] <= rng[1] for r, rng in ranges.items())
    flags = {
        "empty_tumour": volumes["wt"] == 0,
        "empty_et": volumes["et"] == 0,
        "touches_border": touches_border(regions[0], crop_box),
        "uncertain": bool(row["uncertain_fraction"] > max_uncertain_fraction),  # NaN: False
        "volume_outlier": outlier,
    }
    row.update({f"flag_{k}": bool(v) for k, v in flags.items()})
    row["flags"] = ";".join(k for k, v in flags.items() if v)
    for r in REGION_KEYS:
        rng = ranges.get(r)
        row[f"volume_range_{r}"] = "" if rng is None else f"{rng[0]:.3f}-{rng[1]:.3f}"
    return {k: row[k] for k in QC_COLUMNS}


def write_qc_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, writer: str | None = None) -> Path:
    """Write QC rows as a CSV (columns ``QC_COLUMNS``), atomically.

    Args:
        rows: ``qc_row`` results.
        path: the CSV file.
        writer: record it as this command's output (``tumorlib.core.safety.atomic_path``).

    Returns:
        The path written.
    """
    from tumorlib.core.safety import atomic_open

    path = Path(path)
    with atomic_open(path, "w", writer=writer, newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=list(QC_COLUMNS))
        table.writeheader()
        for row in rows:
            table.writerow({k: row.get(k, "") for k in QC_COLUMNS})
    return path
