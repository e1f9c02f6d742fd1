"""The label conventions of each BraTS-family release, mapped onto tumorlib's classes and back.

tumorlib's classes are ``CLASS_KEYS`` = ncr (necrosis / non-enhancing tumour core), ed (edema), et
(enhancing tumour), defined in ``tumorlib.core.brats``; this module is the one place that says which label
value each release gives them:

============  ==========================================  ====  ====  ====  ==========================
convention    releases                                     ncr   ed    et    read as background
============  ==========================================  ====  ====  ====  ==========================
brats2020     BraTS 2018-2021 (``*_t1ce``, ``*_seg``)      1     2     4     --
brats2023     BraTS 2023-2025 (GLI, MEN, MET, SSA, PED)    1     2     3     4 (2024 resection cavity)
msd           Decathlon Task01_BrainTumour                 2     1     3     --
============  ==========================================  ====  ====  ====  ==========================

``brats2021`` is another name for ``brats2020`` (same labels). In BraTS 2023+ files label 1 is NETC
(non-enhancing tumour core), 2 SNFH (surrounding FLAIR hyperintensity) and 3 ET: the same tissue classes
as 2020's 1/2/4.

The resection cavity. The 2024 post-treatment glioma set adds label 4 = resection cavity (RC). The 2024
challenge scores it as its own region, outside the tumour regions: WT, TC and ET never include it. tumorlib
reads it as background for WT/TC/ET (it is in none of ncr, ed, et) and never writes it.

Label 4 is ambiguous: enhancing tumour in ``brats2020``, resection cavity in ``brats2023``. The convention
of a file is therefore named (``--labels``, ``--pred-labels``, ``--ref-labels``, the layout) or taken from
its file naming (``detect_label_convention``: ``BraTS-GLI-00000-000`` is brats2023, ``BRATS_001`` msd,
``BraTS20_...``/``BraTS2021_...`` brats2020). From values alone tumorlib never reads 4 as a cavity: labels
without 3 are ``brats2020`` (the labels tumorlib has always read and written; 1 and 2 mean the same in
brats2023, and MSD files are known by their ``BRATS_001`` names); 3 without 4 fits brats2023 and msd, and
3 beside 4 is a 2020 file with a stray 3 or a 2024 post-treatment file: both are errors unless named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tumorlib.core.brats import CLASS_KEYS, CLASS_PRECEDENCE

__all__ = [
    "LABEL_CONVENTIONS",
    "LabelConvention",
    "channels_to_convention",
    "check_values",
    "convention_from_name",
    "convention_to_channels",
    "detect_label_convention",
    "label_convention",
    "relabel",
]


@dataclass(frozen=True)
class LabelConvention:
    """One release's label values.

    Attributes:
        name: ``brats2020``, ``brats2023`` or ``msd``.
        labels: label value of each class key (``ncr``, ``ed``, ``et``).
        background: label values read as background for every tumour region, with what they are.
        releases: the releases that use it, for messages.
    """

    name: str
    labels: dict[str, int]
    background: dict[int, str] = field(default_factory=dict)
    releases: str = ""

    @property
    def values(self) -> tuple[int, ...]:
        """Every label value a file of this convention may hold (0 included), sorted."""
        return tuple(sorted({0, *self.labels.values(), *self.background}))

    @property
    def written(self) -> tuple[int, ...]:
        """Label value of each class in ``CLASS_KEYS`` order (what tumorlib writes)."""
        return tuple(self.labels[k] for k in CLASS_KEYS)


#: Every convention by name.
LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    "brats2020": LabelConvention("brats2020", {"ncr": 1, "ed": 2, "et": 4}, {}, "BraTS 2018-2021"),
    "brats2023": LabelConvention("brats2023", {"ncr": 1, "ed": 2, "et": 3}, {4: "resection cavity"},
                                 "BraTS 2023-2025 (GLI, MEN, MET, SSA, PED)"),
    "msd": LabelConvention("msd", {"ncr": 2, "ed": 1, "et": 3}, {}, "MSD Task01_BrainTumour"),
}
_ALIASES = {"brats2021": "brats2020", "brats2024": "brats2023", "brats2025": "brats2023", "gli": "brats2023"}
# file names that say their release: BraTS-GLI-00000-000(-seg), BRATS_001, BraTS20_Training_001, BraTS2021_00000
_NAME_RULES = ((re.compile(r"BraTS-[A-Z]{2,4}-\d{5}-\d{3}"), "brats2023"),
               (re.compile(r"(^|[/\\])BRATS_\d{3}(?![\d])"), "msd"),
               (re.compile(r"BraTS(20|2021)_(Training_|Validation_)?\d+"), "brats2020"))


def label_convention(name: str | LabelConvention) -> LabelConvention:
    """The convention of a name (``brats2020``, ``brats2021``, ``brats2023``, ``msd``; any case).

    Raises:
        ValueError: an unknown name (lists the known ones).
    """
    if isinstance(name, LabelConvention):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {name!r}; expected one of brats2020, brats2021, "
                         f"brats2023, msd")
    return LABEL_CONVENTIONS[key]


def convention_from_name(path: str | Any) -> str | None:
    """The convention a file or folder name says (``BraTS-GLI-...`` -> brats2023, ``BRATS_001`` -> msd,
    ``BraTS20_...``/``BraTS2021_...`` -> brats2020); None when the name says none."""
    text = str(path)
    for pattern, name in _NAME_RULES:
        if pattern.search(text):
            return name
    return None


def detect_label_convention(values: Iterable[int], name: str | Any | None = None,
                            where: str = "labels") -> LabelConvention:
    """The convention of a label file, from its file name first, else from its values where only one fits.

    Args:
        values: the label values the file holds.
        name: the file's path or name (``convention_from_name``), or None.
        where: the file, for messages.

    Returns:
        The convention (see the module text for the rule).

    Raises:
        ValueError: values the named convention does not have, values no convention has, or values that
            fit several conventions (3 without 4: brats2023 or msd) with no name to decide.
    """
    found = sorted({int(v) for v in values})
    named = convention_from_name(name) if name is not None else None
    if named is not None:
        conv = LABEL_CONVENTIONS[named]
        check_values(found, conv, where)
        return conv
    fits = [c for c in LABEL_CONVENTIONS.values() if set(found) <= set(c.values)]
    if 3 in found and 4 in found and fits:
        raise ValueError(f"{where}: labels {found}: [3] is no brats2020 label, and 4 is enhancing tumour in "
                         "brats2020 but the resection cavity in brats2023; name the convention "
                         "(--labels / --pred-labels / --ref-labels)")
    if 3 not in found:
        fits = [c for c in fits if c.name == "brats2020"]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ValueError(f"{where}: labels {found} fit no label convention (brats2020 0/1/2/4, brats2023 "
                         f"0/1/2/3/4, msd 0/1/2/3)")
    raise ValueError(f"{where}: labels {found} fit {' and '.join(c.name for c in fits)}; name the convention "
                     f"(--labels / --pred-labels / --ref-labels)")


def check_values(values: Iterable[int], convention: LabelConvention | str, where: str = "labels") -> None:
    """Refuse label values outside a convention (names the file, the values and the convention)."""
    conv = label_convention(convention)
    unknown = sorted({int(v) for v in values} - set(conv.values))
    if unknown:
        hint = (" (3 is enhancing tumour in BraTS 2023+ and MSD files: name their convention or layout)"
                if conv.name == "brats2020" and 3 in unknown else "")
        raise ValueError(f"{where}: labels {unknown[:8]} are not {conv.name} labels "
                         f"{', '.join(map(str, conv.values))}{hint}")


def convention_to_channels(labels: Any, convention: LabelConvention | str, where: str = "labels") -> np.ndarray:
    """Disjoint class channels from a label map of one convention.

    Args:
        labels: (D, H, W) integer labels.
        convention: the file's convention (name or ``LabelConvention``).
        where: the file, for messages.

    Returns:
        (3, D, H, W) uint8 (ncr, ed, et); ``background`` labels (the resection cavity) are in none.

    Raises:
        ValueError: a value outside the convention (names ``where``).
    """
    conv = label_convention(convention)
    labels = np.asarray(labels)
    check_values(np.unique(labels).tolist(), conv, where)
    return np.stack([labels == v for v in conv.written]).astype(np.uint8)


def channels_to_convention(channels: Any, convention: LabelConvention | str) -> np.ndarray:
    """A label map in one convention from class channels (overlaps: ``CLASS_PRECEDENCE``).

    Args:
        channels: (3, D, H, W) binary (ncr, ed, et).
        convention: the convention to write.

    Returns:
        (D, H, W) uint8.
    """
    conv = label_convention(convention)
    on = np.asarray(channels) != 0
    out = np.zeros(on.shape[1:], np.uint8)
    for key in reversed(CLASS_PRECEDENCE):  # the last written wins
        out[on[CLASS_KEYS.index(key)]] = conv.labels[key]
    return out


def relabel(labels: Any, source: LabelConvention | str, target: LabelConvention | str,
            where: str = "labels") -> np.ndarray:
    """A label map from one convention to another (``background`` labels become 0).

    Args:
        labels: (D, H, W) integer labels in ``source``.
        source, target: conventions.
        where: the file, for messages.

    Returns:
        (D, H, W) uint8 labels in ``target``.
    """
    return channels_to_convention(convention_to_channels(labels, source, where), target)
