"""The data's conventions in one place: modalities and their orders, classes, BraTS labels, regions,
and the one rule that turns the network's outputs into labels.

Modalities. The model's input channels are always in the canonical order ``CANONICAL_ORDER`` = T1,
T1ce, T2, FLAIR. The Kaggle pack (``awsaf49/brats2020-training-data``) stores its ``image`` channels in
another order, ``KAGGLE_STORED_ORDER`` = FLAIR, T1, T1ce, T2 (alphabetical order of the source NIfTI
files; ``tumorlib inspect-modalities`` checks it from the images themselves). Orders are tuples of the
lower-case keys ``t1``, ``t1ce``, ``t2``, ``flair``; ``reorder_channels`` maps one to the other.

Classes and labels. The three mask channels are necrosis/non-enhancing tumour core (``ncr``), edema
(``ed``) and enhancing tumour (``et``); in BraTS label files they are labels 1, 2 and 4 (0 background).
The evaluation regions are WT (whole tumour: all three), TC (tumour core: ncr + et) and ET (et). Other
releases' labels (BraTS 2023+ 1/2/3, MSD 2/1/3, the 2024 resection cavity): ``tumorlib.core.label_conventions``.

Decoding (``tumorlib.core.regions.Decoder``, the one decoder). A network with three independent sigmoid
outputs, one per class, is decoded into one label per voxel:

1. tumour where the union probability ``1 - (1 - p_ncr)(1 - p_ed)(1 - p_et)`` is above the threshold;
2. there, the most probable class; exact ties go to enhancing, then necrosis, then edema
   (``CLASS_PRECEDENCE``), so binary masks that overlap keep the inner class.

The union is the noisy-OR rather than the maximum: at a border where two classes share the
probability (0.45 each), the maximum stays below 0.5 and leaves a hole in the tumour, while the
noisy-OR (0.70) keeps the voxel. For mutually exclusive, calibrated classes the tumour probability is
the sum, and ``max <= noisy-OR <= min(1, sum)``; a single class above the threshold decides exactly
as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BRATS_LABELS",
    "CANONICAL_ORDER",
    "CLASS_KEYS",
    "CLASS_NAMES",
    "CLASS_PRECEDENCE",
    "KAGGLE_STORED_ORDER",
    "MODALITIES",
    "MODALITY_KEYS",
    "MODALITY_NAMES",
    "REGION_CLASSES",
    "REGION_KEYS",
    "REGION_NAMES",
    "channel_permutation",
    "channels_to_classes",
    "channels_to_labels",
    "channels_to_regions",
    "check_order",
    "classes_to_labels",
    "labels_to_channels",
    "labels_to_regions",
    "modality_key",
    "reorder_channels",
    "tumour_probability",
]

#: Lower-case modality keys in the model's canonical input order (also the NIfTI file suffixes).
MODALITY_KEYS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: The model's input channel order (T1, T1ce, T2, FLAIR).
CANONICAL_ORDER: tuple[str, ...] = MODALITY_KEYS
#: Display name of each modality key.
MODALITY_NAMES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
#: Display names in canonical order.
MODALITIES: tuple[str, ...] = tuple(MODALITY_NAMES[k] for k in CANONICAL_ORDER)
#: The order of the ``image`` channels in the Kaggle pack's HDF5 files.
KAGGLE_STORED_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

#: Short keys of the mask channels, in channel order (column names: ``dice_ncr``, ...).
CLASS_KEYS: tuple[str, ...] = ("ncr", "ed", "et")
#: Display names of the mask channels, in channel order.
CLASS_NAMES: tuple[str, ...] = ("necrosis", "edema", "enhancing")
#: BraTS label of each mask channel (0 is background).
BRATS_LABELS: tuple[int, ...] = (1, 2, 4)
#: Which class wins where binary channels overlap or probabilities tie: the inner class first.
CLASS_PRECEDENCE: tuple[str, ...] = ("et", "ncr", "ed")
#: BraTS evaluation regions, in the order ``channels_to_regions`` returns them.
REGION_KEYS: tuple[str, ...] = ("wt", "tc", "et")
#: Display names of the regions.
REGION_NAMES: tuple[str, ...] = ("whole tumour", "tumour core", "enhancing tumour")
#: The classes each region is the union of.
REGION_CLASSES: dict[str, tuple[str, ...]] = {"wt": ("ncr", "ed", "et"), "tc": ("ncr", "et"), "et": ("et",)}

_ALIASES = {"t1gd": "t1ce", "t1c": "t1ce", "t1-ce": "t1ce", "t1_ce": "t1ce", "t1n": "t1", "t1w": "t1", "t2w": "t2",
            "t2f": "flair"}
_PRECEDENCE_IDX = tuple(CLASS_KEYS.index(k) for k in CLASS_PRECEDENCE)
_LABEL_OF_CLASS = np.array((0, *BRATS_LABELS), np.uint8)  # class code 0..3 -> BraTS label


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def modality_key(name: str) -> str:
    """The lower-case key of a modality name (``"FLAIR"`` -> ``"flair"``, ``"T1Gd"`` -> ``"t1ce"``).

    Args:
        name: a key or display name, any case.

    Returns:
        One of ``MODALITY_KEYS``.

    Raises:
        ValueError: an unknown name (lists the known ones).
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MODALITY_KEYS:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(MODALITY_KEYS)}")
    return key


def check_order(order: Sequence[str]) -> tuple[str, ...]:
    """Validate a channel order: each of the four modalities exactly once.

    Args:
        order: four modality names, e.g. ``("flair", "t1", "t1ce", "t2")`` (any case).

    Returns:
        The order as lower-case keys.

    Raises:
        ValueError: an unknown, duplicate or missing modality (names it and the order).
    """
    if isinstance(order, str):
        order = order.replace(",", " ").split()
    keys = []
    for name in order:
        try:
            keys.append(modality_key(name))
        except ValueError as err:
            raise ValueError(f"channel order {tuple(order)}: {err}") from None
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"channel order {tuple(order)}: {', '.join(dupes)} given more than once")
    missing = [k for k in MODALITY_KEYS if k not in keys]
    if missing:
        raise ValueError(f"channel order {tuple(order)}: {', '.join(missing)} missing "
                         f"(need each of {', '.join(MODALITY_KEYS)} once)")
    return tuple(keys)


def channel_permutation(source: Sequence[str], target: Sequence[str] = CANONICAL_ORDER) -> tuple[int, ...]:
    """Indices ``idx`` such that ``stored[idx]`` is in ``target`` order.

    Args:
        source: the order the channels are in.
        target: the order wanted (default: canonical T1, T1ce, T2, FLAIR).

    Returns:
        Four source channel indices, one per target channel.

    Raises:
        ValueError: either order is not a permutation of the four modalities.
    """
    src, dst = check_order(source), check_order(target)
    return tuple(src.index(k) for k in dst)


def reorder_channels(image: Any, source: Sequence[str], target: Sequence[str] = CANONICAL_ORDER,
                     axis: int = 0) -> Any:
    """Reorder the modality channels of an image.

    Args:
        image: (4, D, H, W) (or 4 entries on ``axis``) array or tensor.
        source: the order of ``image``'s channels.
        target: the order wanted (default: canonical).
        axis: the channel axis.

    Returns:
        The image with channels in ``target`` order (a copy; same library as the input).

    Raises:
        ValueError: a bad order, or ``axis`` does not have 4 entries.
    """
    perm = channel_permutation(source, target)
    if image.shape[axis] != len(perm):
        raise ValueError(f"image of shape {tuple(image.shape)} has {image.shape[axis]} channels on axis "
                         f"{axis}, expected 4 ({', '.join(check_order(source))})")
    if _is_torch(image):
        import torch

        return torch.index_select(image, axis, torch.tensor(perm, device=image.device))
    return np.take(np.asarray(image), perm, axis=axis)


def channels_to_classes(channels: Any) -> np.ndarray:
    """A class-code map from binary class channels: 0 background, k + 1 for channel k.

    Args:
        channels: (3, D, H, W) binary channels (non-zero = on), numpy or torch.

    Returns:
        (D, H, W) uint8 in {0, 1, 2, 3}; where channels overlap, ``CLASS_PRECEDENCE`` decides.

    Raises:
        ValueError: not 3 channels.
    """
    on = _numpy(channels) != 0
    if on.ndim < 2 or on.shape[0] != len(CLASS_KEYS):
        raise ValueError(f"class channels must be (3, D, H, W) (ncr, ed, et), got shape {on.shape}")
    out = np.zeros(on.shape[1:], np.uint8)
    for idx in reversed(_PRECEDENCE_IDX):  # the last written wins
        out[on[idx]] = idx + 1
    return out


def classes_to_labels(classes: np.ndarray) -> np.ndarray:
    """Class codes 0..3 (channel index + 1) to BraTS labels 0/1/2/4.

    Raises:
        ValueError: a code outside 0..3.
    """
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() > len(CLASS_KEYS)):
        raise ValueError(f"class codes must lie in 0..{len(CLASS_KEYS)}, got {np.unique(classes)[:8]}")
    return _LABEL_OF_CLASS[classes]


def channels_to_labels(channels: Any) -> np.ndarray:
    """BraTS labels from binary class channels (overlaps resolved by ``CLASS_PRECEDENCE``).

    Args:
        channels: (3, D, H, W) binary (ncr, ed, et), numpy or torch.

    Returns:
        (D, H, W) uint8 in {0, 1, 2, 4}.
    """
    return _LABEL_OF_CLASS[channels_to_classes(channels)]


def labels_to_channels(labels: Any) -> np.ndarray:
    """Disjoint class channels from a BraTS label map.

    Args:
        labels: (D, H, W) integers in {0, 1, 2, 4}.

    Returns:
        (3, D, H, W) uint8 (ncr, ed, et).

    Raises:
        ValueError: a label outside {0, 1, 2, 4} (lists the values found).
    """
    labels = _numpy(labels)
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *BRATS_LABELS})
    if unknown:
        raise ValueError(f"labels {unknown} are not BraTS labels (0, 1, 2, 4)")
    return np.stack([labels == v for v in BRATS_LABELS]).astype(np.uint8)


def channels_to_regions(mask: Any) -> Any:
    """BraTS evaluation regions from the three class channels.

    Args:
        mask: (3, D, H, W) binary class channels (ncr, ed, et), numpy or torch; a leading batch axis
            is allowed: (B, 3, D, H, W).

    Returns:
        Bool array or tensor (same library) of the same shape, channels WT, TC, ET.

    Raises:
        ValueError: the channel axis does not have 3 entries.
    """
    axis = 0 if mask.ndim == 4 else 1
    if mask.shape[axis] != 3:
        raise ValueError(f"BraTS regions need 3 class channels (ncr, ed, et) on axis {axis}, "
                         f"got shape {tuple(mask.shape)}")
    if _is_torch(mask):
        import torch

        ncr, ed, et = (mask != 0).unbind(axis)
        return torch.stack([ncr | ed | et, ncr | et, et], dim=axis)
    m = np.asarray(mask) != 0
    ncr, ed, et = (np.take(m, i, axis=axis) for i in range(3))
    return np.stack([ncr | ed | et, ncr | et, et], axis=axis)


def labels_to_regions(labels: Any) -> np.ndarray:
    """(3, D, H, W) bool WT, TC, ET from a (D, H, W) BraTS label map."""
    return channels_to_regions(labels_to_channels(labels))


def _numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _probabilities(prob: Any) -> np.ndarray:
    p = _numpy(prob)
    if p.ndim != 4 or p.shape[0] != len(CLASS_KEYS):
        raise ValueError(f"prob must be (3, D, H, W) (ncr, ed, et), got shape {p.shape}")
    return p.astype(np.float32, copy=False)


def tumour_probability(prob: Any) -> np.ndarray:
    """The union (noisy-OR) probability of any tumour class: ``1 - prod_c (1 - p_c)``.

    Args:
        prob: (3, D, H, W) sigmoid probabilities (ncr, ed, et), numpy or torch.

    Returns:
        (D, H, W) float32 in [0, 1].

    Raises:
        ValueError: ``prob`` is not (3, D, H, W).
    """
    p = np.clip(_probabilities(prob), 0.0, 1.0)
    return 1.0 - np.prod(1.0 - p, axis=0)
