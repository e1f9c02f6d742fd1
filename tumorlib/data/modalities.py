"""Which stored image channel is which modality, found from the images and masks themselves.

The Kaggle pack does not say in which order its ``image`` channels are stored, so tumorlib checks it
with textbook MRI contrasts that hold on any scanner (measured on brain voxels, each channel divided by
its median over healthy brain, i.e. brain voxels at least two voxels away from the tumour masks):

1. **T1 and T1ce** share one contrast (white matter > grey matter > CSF); the gadolinium changes only
   enhancing tissue and vessels. Of the six channel pairs, theirs is the most correlated over healthy
   brain (T2 and FLAIR differ from each other at CSF, and from the T1 pair at WM/GM).
2. **CSF** is the healthy tissue darkest on the T1 pair (its 5 % darkest voxels, averaged over the two).
   There **T2** is bright (CSF > GM > WM) and **FLAIR** is dark (CSF suppressed): of the two remaining
   channels, the one brighter in CSF is T2.
3. **T1ce** is far brighter than T1 in the enhancing-tumour mask: of the pair, the one brighter there is
   T1ce. A volume without enhancing tumour leaves this question open (its vote names the pair only).

No step assumes an order: each picks channels by a measured property. ``check_case_order`` applies steps
1 and 2 (they need no labels) to one unlabelled case whose files name their modalities (a NIfTI case),
and says when the intensities contradict the names; step 3 needs the enhancing-tumour mask, so a T1/T1ce
swap is not seen there. Measured on tumorlib's synthetic volumes: at 32x64x64 (about 30,000 brain voxels)
every swap that moves T2 or FLAIR was seen, with no false alarm; at 8x24x24 (about 1,000 brain voxels)
the verdicts were mostly wrong, so cases under ``MIN_CASE_VOXELS`` brain voxels are not judged (nor do they
vote: random stored orders at 24x48x48, about 12,000 voxels, were voted wrong every time). Each volume votes
for a full order; the verdict is the order most volumes vote for, once ``MIN_VERDICT_VOTES`` agree.
``modality_signatures`` returns the measured ratios (CSF, edema, enhancing, necrosis over healthy brain)
that ``tumorlib.viz.plot_modality_signatures`` draws.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from tumorlib.core.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER, MODALITY_NAMES, check_order

__all__ = [
    "MIN_CASE_VOXELS",
    "MIN_VERDICT_VOTES",
    "SIGNATURE_TISSUES",
    "check_case_order",
    "format_modality_report",
    "infer_channel_order",
    "inspect_modalities",
    "modality_signatures",
]

#: The tissues whose median intensity (over healthy brain's) ``modality_signatures`` reports.
SIGNATURE_TISSUES: tuple[str, ...] = ("csf", "edema", "enhancing", "necrosis")
#: Fewer brain voxels than this: a case is not judged (too small to be reliable), nor does it vote.
MIN_CASE_VOXELS = 20_000
#: Complete votes that must agree before ``inspect_modalities`` names an order (one volume is never enough).
MIN_VERDICT_VOTES = 2
_CSF_QUANTILE = 5.0  # percent of healthy voxels, darkest on the T1 pair, taken as CSF
_MIN_VOXELS = 10  # fewer enhancing voxels than this: T1 and T1ce stay undecided
_MAX_SAMPLES = 200_000  # healthy voxels used for the correlations


def _regions(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(brain, healthy) bool (D, H, W): non-zero voxels, and those two voxels away from tumour."""
    brain = image.any(axis=0)
    tumour = mask.any(axis=0)
    healthy = brain & ~ndimage.binary_dilation(tumour, iterations=2) if tumour.any() else brain
    return brain, healthy


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 4 or image.shape[0] != 4 or mask.shape != (3,) + image.shape[1:]:
        raise ValueError(f"need image (4, D, H, W) and mask (3, D, H, W), got {image.shape} and {mask.shape}")
    return image, mask != 0


def infer_channel_order(image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """One volume's vote: the modality of each stored channel, with the evidence.

    Args:
        image: (4, D, H, W) intensities in the stored (unknown) channel order, background exactly 0.
        mask: (3, D, H, W) class channels (necrosis/NET, edema, enhancing).

    Returns:
        ``{"order": [4 names or None], "evidence": {...}, "signatures": {...}}``: ``order[c]`` is the
        lower-case modality of stored channel ``c`` (``None`` for T1/T1ce when the volume has no
        enhancing tumour); ``evidence`` holds ``pair_correlations`` (six pairs), ``t1_pair``,
        ``csf_ratio`` and ``enhancing_ratio`` per channel (None without enhancing tumour),
        ``enhancing_voxels``.

    Raises:
        ValueError: bad shapes, or fewer than 100 healthy brain voxels.
    """
    image, mask = _check(image, mask)
    _brain, healthy = _regions(image, mask)
    if healthy.sum() < 100:
        raise ValueError(f"only {int(healthy.sum())} healthy brain voxels (non-zero, away from the tumour)")
    scale = np.array([np.median(image[c][healthy]) for c in range(4)], np.float64)
    scale[scale <= 0] = 1.0
    values = image[:, healthy].astype(np.float64) / scale[:, None]  # (4, N)
    sample = values[:, :: max(1, values.shape[1] // _MAX_SAMPLES)]
    corr = np.nan_to_num(np.corrcoef(sample), nan=-1.0)
    pairs = {f"{a}-{b}": float(corr[a, b]) for a, b in itertools.combinations(range(4), 2)}
    t1_pair = max(itertools.combinations(range(4), 2), key=lambda ab: corr[ab])
    others = [c for c in range(4) if c not in t1_pair]
    darkness = values[list(t1_pair)].mean(axis=0)
    csf = darkness <= np.percentile(darkness, _CSF_QUANTILE)
    csf_ratio = [float(np.median(values[c][csf])) for c in range(4)]
    t2 = max(others, key=lambda c: csf_ratio[c])
    flair = others[0] if others[1] == t2 else others[1]
    order: list[str | None] = [None] * 4
    order[t2], order[flair] = "t2", "flair"
    enh = mask[2] & image.any(axis=0)
    n_enh = int(enh.sum())
    enh_ratio = [float(np.median(image[c][enh]) / scale[c]) if n_enh else None for c in range(4)]
    if n_enh >= _MIN_VOXELS:
        t1ce = max(t1_pair, key=lambda c: enh_ratio[c])
        t1 = t1_pair[0] if t1_pair[1] == t1ce else t1_pair[1]
        order[t1ce], order[t1] = "t1ce", "t1"
    evidence = {"pair_correlations": pairs, "t1_pair": list(t1_pair), "csf_ratio": csf_ratio,
                "enhancing_ratio": enh_ratio, "enhancing_voxels": n_enh}
    return {"order": order, "evidence": evidence, "signatures": modality_signatures(image, mask, csf=csf)}


def check_case_order(image: np.ndarray) -> list[str | None] | None:
    """Whether one unlabelled case read in the canonical order (T1, T1ce, T2, FLAIR) looks like it.

    Args:
        image: (4, D, H, W) intensities, channel ``c`` read from the file named ``CANONICAL_ORDER[c]``.

    Returns:
        None when the contrasts agree with the names (or the case has fewer than ``MIN_CASE_VOXELS``
        brain voxels: not judged); else the vote of ``infer_channel_order`` without labels: the modality
        each file looks like (``"t2"``, ``"flair"``, None for the T1 pair).
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != 4 or int(image.any(axis=0).sum()) < MIN_CASE_VOXELS:
        return None
    order = infer_channel_order(image, np.zeros((3, *image.shape[1:]), bool))["order"]
    return None if (order[2], order[3]) == ("t2", "flair") else order


def modality_signatures(image: np.ndarray, mask: np.ndarray,
                        csf: np.ndarray | None = None) -> dict[str, list[float]]:
    """Median intensity of each tissue over that of healthy brain, per stored channel.

    Args:
        image: (4, D, H, W) intensities in stored order.
        mask: (3, D, H, W) class channels.
        csf: bool over the healthy voxels (as ``infer_channel_order`` finds it); None: found here.

    Returns:
        ``{tissue: [4 ratios]}`` for the tissues of ``SIGNATURE_TISSUES`` (None for a tissue absent
        from the volume, so the dict stays valid JSON). Textbook values: CSF > 1 only on T2; edema > 1 on T2 and FLAIR; enhancing
        far above 1 on T1ce only.
    """
    if csf is None:
        return infer_channel_order(image, mask)["signatures"]
    image, mask = _check(image, mask)
    brain, healthy = _regions(image, mask)
    scale = np.array([np.median(image[c][healthy]) for c in range(4)], np.float64)
    scale[scale <= 0] = 1.0
    regions = {"csf": None, "edema": mask[1] & brain, "enhancing": mask[2] & brain,
               "necrosis": mask[0] & brain}
    out: dict[str, list[float]] = {}
    for name in SIGNATURE_TISSUES:
        region = regions[name]
        if region is None:
            out[name] = [float(np.median(image[c][healthy][csf]) / scale[c]) for c in range(4)]
        elif region.any():
            out[name] = [float(np.median(image[c][region]) / scale[c]) for c in range(4)]
        else:
            out[name] = [None] * 4
    return out


def _spread(ids: Sequence[int], n: int | None) -> list[int]:
    """``n`` ids spread evenly over the sorted list (all when ``n`` is None or too large)."""
    ids = sorted(ids)
    if n is None or n >= len(ids):
        return ids
    if n < 1:
        raise ValueError(f"--volumes must be >= 1, got {n}")
    picks = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in dict.fromkeys(picks.tolist())]


def inspect_modalities(data_dir: str | os.PathLike, volumes: int | None = 5,
                       configured: Sequence[str] = KAGGLE_STORED_ORDER,
                       volume_ids: Sequence[int] | None = None, progress: bool = False) -> dict[str, Any]:
    """Infer the stored channel order of a Kaggle-layout folder from a few volumes.

    Args:
        data_dir: any folder above the ``volume_{id}_slice_{s}.h5`` files.
        volumes: how many volumes to read, spread over the ids (None: all).
        configured: the order the config assumes (``kaggle_channel_order``), compared with the verdict.
        volume_ids: read exactly these volumes instead.
        progress: show a tqdm bar.

    Returns:
        A JSON-ready dict: ``inferred_order`` (lower-case names in stored channel order, or None when
        the votes do not settle it: fewer than ``MIN_VERDICT_VOTES`` agreeing, split, or every volume under
        ``MIN_CASE_VOXELS`` brain voxels), ``undecided_because`` (why, in words; None with a verdict),
        ``configured_order``, ``agrees``, ``agreeing_votes`` (volumes that voted for the verdict),
        ``decided_votes``, and ``volumes``: one entry per volume with its ``volume`` id, ``order`` vote,
        ``evidence``, ``signatures``, ``brain_voxels`` and ``judged`` (whether it was large enough to vote).

    Raises:
        FileNotFoundError, KeyError, ValueError: see ``tumorlib.io.kaggle.load_volume``.
    """
    from tqdm.auto import tqdm

    from tumorlib.io.kaggle import list_volumes, load_volume

    configured = check_order(configured)
    ids = list(volume_ids) if volume_ids is not None else _spread(list_volumes(data_dir), volumes)
    votes = []
    for vid in tqdm(ids, desc="volumes", disable=not progress):
        # read the channels exactly as stored: the identity order
        image, mask = load_volume(data_dir, vid, stored_order=CANONICAL_ORDER)
        vote = infer_channel_order(image, mask)
        brain = int(image.any(axis=0).sum())
        votes.append({"volume": int(vid), **vote, "brain_voxels": brain, "judged": brain >= MIN_CASE_VOXELS})
    complete = [tuple(v["order"]) for v in votes if v["judged"] and None not in v["order"]]
    inferred, agreeing, why = None, 0, None
    if complete:
        (best, agreeing), *rest = Counter(complete).most_common()
        if rest and rest[0][1] >= agreeing:
            why = f"the votes are split ({agreeing} against {rest[0][1]})"
        elif agreeing < MIN_VERDICT_VOTES:
            why = (f"{agreeing} volume{'s' if agreeing != 1 else ''} voted; a verdict needs {MIN_VERDICT_VOTES} "
                   "that agree (read more with --volumes)")
        else:
            inferred = list(best)
    elif votes and not any(v["judged"] for v in votes):
        why = f"every volume has under {MIN_CASE_VOXELS:,} brain voxels: too small to judge"
    else:
        why = "no volume gave a complete order (T1 and T1ce need enhancing tumour to tell apart)"
    return {"inferred_order": inferred, "configured_order": list(configured),
            "agrees": inferred is not None and tuple(inferred) == configured,
            "agreeing_votes": agreeing, "decided_votes": len(complete), "undecided_because": why,
            "volumes": votes}


def _names(order: Sequence[str | None]) -> str:
    return ", ".join(MODALITY_NAMES[m] if m else "?" for m in order)


def format_modality_report(report: dict[str, Any]) -> str:
    """The per-volume votes, the verdict and the comparison with the configured order, as text lines."""
    lines = []
    for v in report["volumes"]:
        ev = v["evidence"]
        a, b = ev["t1_pair"]
        csf = " ".join(f"{r:.2f}" for r in ev["csf_ratio"])
        enh = " ".join("n/a" if r is None else f"{r:.2f}" for r in ev["enhancing_ratio"])
        small = "" if v.get("judged", True) else f" (too small to vote: {v['brain_voxels']:,} brain voxels)"
        lines.append(f"volume {v['volume']}{small}: {_names(v['order'])}  (T1 pair = channels {a},{b}, "
                     f"r = {ev['pair_correlations'][f'{a}-{b}']:.2f}; CSF/healthy per channel {csf}; "
                     f"enhancing/healthy {enh}, {ev['enhancing_voxels']} voxels)")
    inferred = report["inferred_order"]
    if inferred is None:
        why = report.get("undecided_because") or f"{report['decided_votes']} complete votes"
        lines.append(f"verdict: undecided, cannot judge the order from {len(report['volumes'])} volumes: {why}")
        lines.append(f"configured kaggle_channel_order {_names(report['configured_order'])}: neither confirmed "
                     "nor contradicted")
        return "\n".join(lines)
    lines.append(f"verdict: stored order {_names(inferred)} ({report['agreeing_votes']} of "
                 f"{len(report['volumes'])} volumes)")
    verb = "agrees with" if report["agrees"] else "DIFFERS from"
    lines.append(f"{verb} the configured kaggle_channel_order {_names(report['configured_order'])}")
    if inferred is not None and not report["agrees"]:
        lines.append(f"fix: --kaggle_channel_order {','.join(inferred)} when caching and training this data")
    return "\n".join(lines)
