"""Post-processing of predicted BraTS labels: nnU-Net's small-enhancing-tumour rule and its tuning.

A predicted enhancing tumour (ET, label 4) of only a few voxels is more often a false positive than a real
enhancement, and the BraTS ET Dice punishes a false ET in a case without one with 0. nnU-Net's BraTS
entries therefore relabel the whole predicted ET as necrosis (label 1, class NCR) when it has fewer than
a threshold of voxels in total (200 voxels in the BraTS 2020/2021 winners), choosing the threshold on
validation cases. Since NCR and ET both belong to the tumour core, WT and TC do not change; ET (and the
NCR class) do.

Thresholds are voxel counts of the volume they are applied to. A value given for a full-size BraTS volume
(155 x 240 x 240) is scaled to a smaller volume by voxel count (``scaled_min_voxels``), so the demo's
down-sampled volumes use the same physical size. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tumorlib.core.brats import BRATS_LABELS, CLASS_KEYS
from tumorlib.data.anatomy import BRATS_SHAPE

__all__ = [
    "ET_GRID_AT_FULL_SIZE",
    "POSTPROCESSING_FILE",
    "run_et_min_voxels",
    "write_postprocessing",
    "et_threshold_grid",
    "remove_small_et",
    "scaled_min_voxels",
    "tune_et_min_voxels",
]

#: The thresholds tried at full size (155 x 240 x 240): 0 (off) to 750 voxels by 10.
ET_GRID_AT_FULL_SIZE: tuple[int, ...] = tuple(range(0, 751, 10))

#: The file in a run folder where ``tumorlib tune-postprocessing`` records its choice.
POSTPROCESSING_FILE = "postprocessing.json"

_ET = BRATS_LABELS[CLASS_KEYS.index("et")]
_NCR = BRATS_LABELS[CLASS_KEYS.index("ncr")]


def _check_threshold(min_voxels: int, name: str = "min_voxels") -> int:
    if int(min_voxels) != min_voxels or min_voxels < 0:
        raise ValueError(f"{name} must be a whole number of voxels >= 0 (0 = off), got {min_voxels!r}")
    return int(min_voxels)


def remove_small_et(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Relabel a predicted enhancing tumour smaller than ``min_voxels`` (in total) as necrosis.

    Args:
        labels: (D, H, W) BraTS labels (0, 1, 2, 4).
        min_voxels: an ET of fewer voxels than this becomes label 1; 0 turns the rule off.

    Returns:
        A new label array (same dtype); unchanged values when the ET is absent or large enough.

    Raises:
        ValueError: ``min_voxels`` is negative or not a whole number.
    """
    min_voxels = _check_threshold(min_voxels)
    out = np.array(labels, copy=True)
    et = out == _ET
    count = int(np.count_nonzero(et))
    if 0 < count < min_voxels:
        out[et] = _NCR
    return out


def scaled_min_voxels(value_at_full_size: float, shape: Sequence[int]) -> int:
    """A voxel-count threshold given for a full-size BraTS volume, scaled to a volume of ``shape``.

    Args:
        value_at_full_size: the threshold at 155 x 240 x 240 voxels.
        shape: (D, H, W) of the volume the threshold is applied to.

    Returns:
        ``round(value * prod(shape) / prod(155, 240, 240))`` (the same physical volume when the smaller
        volume covers the same field of view); 0 stays 0.

    Raises:
        ValueError: a negative value or a shape that is not three positive sizes.
    """
    if value_at_full_size < 0:
        raise ValueError(f"threshold must be >= 0, got {value_at_full_size!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape must be three positive sizes (D, H, W), got {shape}")
    return int(round(float(value_at_full_size) * float(np.prod(shape)) / float(np.prod(BRATS_SHAPE))))


def et_threshold_grid(shape: Sequence[int] = BRATS_SHAPE) -> tuple[int, ...]:
    """The thresholds to try for volumes of ``shape``: 0 to 750 by 10 at full size, scaled.

    Args:
        shape: (D, H, W) of the volumes.

    Returns:
        Increasing distinct voxel counts, starting with 0 (off); at full size ``ET_GRID_AT_FULL_SIZE``.
    """
    return tuple(sorted({scaled_min_voxels(v, shape) for v in ET_GRID_AT_FULL_SIZE}))


def _et_dice(pred_et: np.ndarray, ref_et: np.ndarray) -> float:
    total = int(np.count_nonzero(pred_et)) + int(np.count_nonzero(ref_et))
    if total == 0:
        return 1.0  # both empty (the convention of tumorlib.evaluation.metrics.dice)
    return 2.0 * int(np.count_nonzero(pred_et & ref_et)) / total


def tune_et_min_voxels(pred_label_maps: Sequence[np.ndarray], ref_label_maps: Sequence[np.ndarray],
                       grid: Sequence[int]) -> tuple[int, list[dict[str, float]]]:
    """Pick the ``remove_small_et`` threshold with the best mean ET Dice over validation cases.

    Args:
        pred_label_maps: predicted (D, H, W) BraTS label maps, one per case (before post-processing).
        ref_label_maps: the reference label maps, same order and shapes.
        grid: thresholds to try (voxel counts for these volumes, e.g. ``et_threshold_grid(shape)``).

    Returns:
        ``(best, table)``: the threshold with the highest mean ET Dice (ties: the smallest), and one row
        per threshold in grid order: ``et_min_voxels``, ``mean_dice_et``, ``cases_relabelled``.

    Raises:
        ValueError: no cases, different numbers of predictions and references, a shape mismatch (names
            the case index), an empty grid or a bad threshold.
    """
    if len(pred_label_maps) != len(ref_label_maps):
        raise ValueError(f"{len(pred_label_maps)} predictions but {len(ref_label_maps)} references")
    if not pred_label_maps:
        raise ValueError("no cases to tune the ET threshold on")
    thresholds = [_check_threshold(t, "grid threshold") for t in grid]
    if not thresholds:
        raise ValueError("the threshold grid is empty")
    counts, kept, removed = [], [], []
    for i, (pred, ref) in enumerate(zip(pred_label_maps, ref_label_maps)):
        pred_et, ref_et = np.asarray(pred) == _ET, np.asarray(ref) == _ET
        if pred_et.shape != ref_et.shape:
            raise ValueError(f"case {i}: prediction shape {pred_et.shape} differs from reference {ref_et.shape}")
        counts.append(int(np.count_nonzero(pred_et)))
        kept.append(_et_dice(pred_et, ref_et))
        removed.append(1.0 if not ref_et.any() else 0.0)  # the ET removed: Dice of an empty prediction
    counts_a, kept_a, removed_a = np.array(counts), np.array(kept), np.array(removed)
    table = []
    for t in thresholds:
        relabel = (counts_a > 0) & (counts_a < t)
        mean = float(np.where(relabel, removed_a, kept_a).mean())
        table.append({"et_min_voxels": t, "mean_dice_et": mean, "cases_relabelled": int(relabel.sum())})
    best_mean = max(row["mean_dice_et"] for row in table)
    best = min(row["et_min_voxels"] for row in table if row["mean_dice_et"] >= best_mean - 1e-12)
    return best, table


def run_et_min_voxels(run_dir: Any, config: Any) -> int:
    """The ET threshold a run applies: ``RUN/postprocessing.json`` when tuned, else ``config.et_min_voxels``.

    Args:
        run_dir: the run folder.
        config: the run's config (its ``et_min_voxels``, 0 when the field is absent).

    Returns:
        The voxel count (0: off).

    Raises:
        ValueError: an unreadable ``postprocessing.json`` or a bad value in it (names the file).
    """
    import json
    from pathlib import Path

    path = Path(run_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return _check_threshold(getattr(config, "et_min_voxels", 0), "et_min_voxels")
    try:
        value = json.loads(path.read_text())["et_min_voxels"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a post-processing record with et_min_voxels ({err})") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: et_min_voxels must be a whole number >= 0, got {value!r}")
    return _check_threshold(value, f"{path}: et_min_voxels")


def write_postprocessing(run_dir: Any, record: dict[str, Any]) -> Any:
    """Write ``RUN/postprocessing.json`` atomically (``record`` must hold ``et_min_voxels``).

    Returns:
        The path written.

    Raises:
        ValueError: ``record`` has no valid ``et_min_voxels``.
    """
    import json
    from pathlib import Path

    from tumorlib.core.safety import atomic_write

    _check_threshold(record.get("et_min_voxels", -1), "et_min_voxels")
    return atomic_write(Path(run_dir) / POSTPROCESSING_FILE, json.dumps(record, indent=2) + "\n")
