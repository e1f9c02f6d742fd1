"""Post-processing of predicted BraTS labels: one rule of connected components per region.

Small isolated components are the first error a reader sees in a prediction (an edema blob far from the
tumour) and what the BraTS 2023 lesion-wise scores punish most: each one is a false-positive lesion. BraTS
2023-2025 entries therefore remove small components per region, and nnU-Net keeps only the largest
component of a class or region where that helps on cross-validation. ``PostProcessing`` is that rule, for
the three regions in their nesting order:

1. **WT** (labels 1, 2, 4): a 26-connected component smaller than ``min_mm3[0]`` (or, with
   ``keep_largest[0]``, every one but the largest) becomes background (0).
2. **TC** (labels 1, 4): a removed component becomes edema (2): the voxels stay tumour.
3. **ET** (label 4): a removed component becomes necrosis (1): the voxels stay tumour core.
4. ``et_min_voxels`` (the rule ``tune-postprocessing`` chose before the per-region rule existed, and the
   config field of that name): a predicted ET of fewer voxels *in total* becomes necrosis.

Sizes are volumes in mm^3 (voxel count times the voxel volume), so a rule means the same at every
resolution. A run's rule is ``RUN/postprocessing.json`` when ``tumorlib tune-postprocessing`` wrote one
(``run_postprocessing``; files that hold only ``et_min_voxels`` still load and mean what they meant), else
the config's ``et_min_voxels``. ``predict``, ``evaluate``, ``report``, the notebooks and the viewer apply it
through ``PostProcessing.apply``; ``evaluate --pred/--ref`` scores label files as they are. Pure numpy and
scipy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from tumorlib.core.brats import BRATS_LABELS, CLASS_KEYS, REGION_KEYS
from tumorlib.core.regions import COMPONENT_STRUCTURE

__all__ = [
    "POSTPROCESSING_FILE",
    "POSTPROCESSING_WRITER",
    "PostProcessed",
    "PostProcessing",
    "check_postprocessing_replaceable",
    "remove_small_et",
    "run_postprocessing",
    "write_postprocessing",
]

#: The file in a run folder where ``tumorlib tune-postprocessing`` records its choice.
POSTPROCESSING_FILE = "postprocessing.json"

_NCR, _ED, _ET = (BRATS_LABELS[CLASS_KEYS.index(k)] for k in ("ncr", "ed", "et"))
#: Per region: the labels it holds and what a removed component of it becomes.
_REGION_RULES: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("wt", (_NCR, _ED, _ET), 0), ("tc", (_NCR, _ET), _ED), ("et", (_ET,), _NCR))
_COMPONENTS = COMPONENT_STRUCTURE  # 26-connectivity, as the lesion-wise metrics


def _check_threshold(min_voxels: Any, name: str = "min_voxels") -> int:
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer, float)) \
            or int(min_voxels) != min_voxels or min_voxels < 0:
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


class PostProcessed(NamedTuple):
    """What ``PostProcessing.apply_with_removed`` returns."""

    #: (D, H, W) labels after the rule
    labels: np.ndarray
    #: region -> (D, H, W) bool mask of the voxels the rule took out of that region
    removed: dict[str, np.ndarray]
    #: region -> number of components the rule took out (the total-ET rule counts as one)
    components: dict[str, int]


def _kept(mask: np.ndarray, min_voxels: float, keep_largest: bool) -> tuple[np.ndarray, int]:
    """The voxels of the components of ``mask`` that stay, and how many components go."""
    cc, n = ndimage.label(mask, structure=_COMPONENTS)
    if n == 0:
        return mask, 0
    sizes = np.bincount(cc.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    if keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))
        keep[:] = False
        keep[largest] = True
    return keep[cc], n - int(keep.sum())


@dataclass(frozen=True)
class PostProcessing:
    """One post-processing rule of predicted labels (see the module text).

    Attributes:
        min_mm3: per region (WT, TC, ET), components smaller than this volume (mm^3) are removed; 0: off.
        keep_largest: per region, keep only the largest component (of those large enough).
        et_min_voxels: a predicted ET of fewer voxels in total becomes necrosis (0: off).
    """

    min_mm3: tuple[float, float, float] = (0.0, 0.0, 0.0)
    keep_largest: tuple[bool, bool, bool] = (False, False, False)
    et_min_voxels: int = 0

    def __post_init__(self) -> None:
        sizes = tuple(float(v) for v in self.min_mm3)
        if len(sizes) != len(REGION_KEYS) or not all(math.isfinite(v) and v >= 0 for v in sizes):
            raise ValueError(f"min_mm3 must be {len(REGION_KEYS)} finite volumes >= 0 (WT, TC, ET), "
                             f"got {self.min_mm3!r}")
        largest = tuple(self.keep_largest)
        if len(largest) != len(REGION_KEYS) or not all(isinstance(v, (bool, np.bool_)) for v in largest):
            raise ValueError(f"keep_largest must be {len(REGION_KEYS)} booleans (WT, TC, ET), got {self.keep_largest!r}")
        object.__setattr__(self, "min_mm3", sizes)
        object.__setattr__(self, "keep_largest", tuple(bool(v) for v in largest))
        object.__setattr__(self, "et_min_voxels", _check_threshold(self.et_min_voxels, "et_min_voxels"))

    @property
    def active(self) -> bool:
        """Whether the rule can change any label."""
        return any(self.min_mm3) or any(self.keep_largest) or self.et_min_voxels > 0

    def describe(self) -> str:
        """One line for reports: ``"none"``, or each region's part, e.g. ``"WT < 200 mm3 -> background"``."""
        parts = []
        for (region, _labels, to), size, largest in zip(_REGION_RULES, self.min_mm3, self.keep_largest):
            what = [f"< {size:g} mm3"] if size else []
            what += ["all but the largest"] if largest else []
            if what:
                parts.append(f"{region.upper()} {' and '.join(what)} -> {'background' if to == 0 else CLASS_KEYS[BRATS_LABELS.index(to)].upper()}")
        if self.et_min_voxels:
            parts.append(f"ET below {self.et_min_voxels} voxels in total -> NCR")
        return "; ".join(parts) if parts else "none"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict`` reads it back)."""
        return {"min_mm3": {r: v for r, v in zip(REGION_KEYS, self.min_mm3)},
                "keep_largest": {r: v for r, v in zip(REGION_KEYS, self.keep_largest)},
                "et_min_voxels": self.et_min_voxels}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "post-processing rule") -> PostProcessing:
        """A rule from its JSON form; a record with only ``et_min_voxels`` is the total-ET rule alone.

        Raises:
            ValueError: an unknown key, a missing region, or a bad value (names ``name`` and the key).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{name}: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"min_mm3", "keep_largest", "et_min_voxels"})
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown}")
        fields: dict[str, Any] = {}
        for key, kind in (("min_mm3", (int, float)), ("keep_largest", (bool,))):
            if key not in data:
                continue
            part = data[key]
            if not isinstance(part, Mapping) or set(part) != set(REGION_KEYS):
                raise ValueError(f"{name}: {key} must give each of {', '.join(REGION_KEYS)}, got {part!r}")
            for region in REGION_KEYS:
                value = part[region]
                if not isinstance(value, kind) or (kind != (bool,) and isinstance(value, bool)):
                    raise ValueError(f"{name}: {key}.{region} must be a {'boolean' if kind == (bool,) else 'number'}, "
                                     f"got {value!r}")
            fields[key] = tuple(part[r] for r in REGION_KEYS)
        if "et_min_voxels" in data:
            fields["et_min_voxels"] = _check_threshold(data["et_min_voxels"], f"{name}: et_min_voxels")
        try:
            return cls(**fields)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    def apply_with_removed(self, labels: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> PostProcessed:
        """The rule applied to one label map, with what it removed.

        Args:
            labels: (D, H, W) BraTS labels (0, 1, 2, 4).
            spacing: voxel size (mm) along the three axes.

        Returns:
            ``PostProcessed(labels, removed, components)``; the input is not changed.

        Raises:
            ValueError: labels that are not 3-D, or a spacing that is not three positive sizes.
        """
        out = np.array(labels, copy=True)
        if out.ndim != 3:
            raise ValueError(f"post-processing needs (D, H, W) labels, got shape {out.shape}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be three positive voxel sizes (mm), got {spacing}")
        voxel_mm3 = float(np.prod(spacing))
        removed, components = {}, {}
        for (region, members, to), size, largest in zip(_REGION_RULES, self.min_mm3, self.keep_largest):
            gone = np.zeros(out.shape, bool)
            components[region] = 0
            if size or largest:
                mask = np.isin(out, members)
                kept, components[region] = _kept(mask, size / voxel_mm3 - 1e-9, largest)
                gone = mask & ~kept
                out[gone] = to
            removed[region] = gone
        if self.et_min_voxels:
            et = out == _ET
            if 0 < np.count_nonzero(et) < self.et_min_voxels:
                out[et] = _NCR
                removed["et"] = removed["et"] | et
                components["et"] += 1
        return PostProcessed(out, removed, components)

    def apply(self, labels: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """The rule applied to one (D, H, W) label map (a new array; see ``apply_with_removed``)."""
        if not self.active:
            return np.array(labels, copy=True)
        return self.apply_with_removed(labels, spacing).labels


def run_postprocessing(run_dir: str | os.PathLike, config: Any) -> PostProcessing:
    """The rule a run applies: ``RUN/postprocessing.json`` when tuned, else ``config.et_min_voxels`` alone.

    A file written before the per-region rule (``{"et_min_voxels": N, ...}``) is the total-ET rule of N.

    Args:
        run_dir: the run folder.
        config: the run's config (its ``et_min_voxels``, 0 when the field is absent).

    Returns:
        The ``PostProcessing``.

    Raises:
        ValueError: an unreadable ``postprocessing.json`` or a bad value in it (names the file).
    """
    path = Path(run_dir) / POSTPROCESSING_FILE
    if not path.is_file():
        return PostProcessing(et_min_voxels=_check_threshold(getattr(config, "et_min_voxels", 0), "et_min_voxels"))
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a post-processing record ({err})") from None
    if not isinstance(record, dict) or ("rule" not in record and "et_min_voxels" not in record):
        raise ValueError(f"{path}: not a post-processing record (no rule and no et_min_voxels)")
    if "rule" in record:
        return PostProcessing.from_dict(record["rule"], str(path))
    return PostProcessing.from_dict({"et_min_voxels": record["et_min_voxels"]}, str(path))


#: The command whose record marks ``RUN/postprocessing.json`` as its own (it may replace only that).
POSTPROCESSING_WRITER = "tune-postprocessing"


#: The keys of tuning's whole record (a hand-written rule holds ``rule`` alone).
_TUNED_KEYS = frozenset({"rule", "rule_text", "candidates", "split", "val_with", "val_without"})


def _tuned_before_records(path: Path) -> bool:
    """A record tuning wrote before tumorlib kept records of its outputs: no record names it, and it holds
    tuning's whole record (candidates, scores), not a rule alone."""
    from tumorlib.core.safety import ever_recorded

    if ever_recorded(path) or path.is_symlink():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and _TUNED_KEYS <= set(record)


def check_postprocessing_replaceable(run_dir: str | os.PathLike) -> Path:
    """``RUN/postprocessing.json``, refused when it exists and is not tuning's own record.

    Tuning's own: the file its record says it wrote, unchanged since, or (from before such records) a whole
    tuning record nothing has recorded. A rule written by hand, or a tuned one edited since, is the user's:
    tuning never replaces it.

    Raises:
        FileExistsError: the file is not tuning's (names it).
    """
    from tumorlib.core.safety import written_by

    path = Path(run_dir) / POSTPROCESSING_FILE
    if not (path.exists() or path.is_symlink()) or written_by(path) == POSTPROCESSING_WRITER:
        return path
    if _tuned_before_records(path):
        return path
    raise FileExistsError(f"{path} is not a record tune-postprocessing wrote as it is now (written by hand or "
                          "edited since): never replaced; move it away to tune again, or keep it as the run's rule")


def write_postprocessing(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``RUN/postprocessing.json`` atomically (``record["rule"]`` is a ``PostProcessing.to_dict``),
    replacing only an earlier choice of tuning (``check_postprocessing_replaceable``).

    Returns:
        The path written.

    Raises:
        ValueError: ``record`` holds no valid rule.
        FileExistsError: a ``postprocessing.json`` tuning did not write is there.
    """
    from tumorlib.core.safety import atomic_write

    if "rule" not in record:
        raise ValueError("a post-processing record needs its rule")
    PostProcessing.from_dict(record["rule"])
    path = check_postprocessing_replaceable(run_dir)
    return atomic_write(path, json.dumps(record, indent=2) + "\n", writer=POSTPROCESSING_WRITER)
