"""The figure of ``tumorlib inspect-modalities``: each stored channel's tissue signature and a slice.

Kept apart from ``tumorlib.viz.figures`` so that the check of the channel order has one module for its
numbers (``tumorlib.data.modalities``) and one for its picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorlib.core.brats import MODALITY_NAMES
from tumorlib.data.modalities import SIGNATURE_TISSUES

__all__ = ["plot_modality_signatures"]

_CHANNEL_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")  # Okabe-Ito, one per stored channel


def _name(order: Any, c: int) -> str:
    if order is None or order[c] is None:
        return "?"
    return MODALITY_NAMES[order[c]]


def plot_modality_signatures(report: dict[str, Any], image: Any | None = None, mask: Any | None = None,
                             title: str | None = "Which stored channel is which modality") -> Any:
    """Bars of each stored channel's tissue/healthy-brain ratios, optionally above one slice per channel.

    Args:
        report: the dict ``tumorlib.data.modalities.inspect_modalities`` returns (ratios are the
            median over its volumes).
        image: optional (4, D, H, W) volume in the *stored* order, for a row of slices (the axial slice
            with the most tumour).
        mask: optional (3, D, H, W) class channels of ``image`` (picks the slice).
        title: figure title, or None.

    Returns:
        ``matplotlib.figure.Figure``: bars of log2(tissue / healthy brain) for CSF, edema, enhancing
        and necrosis, one bar per stored channel labelled with its inferred modality.

    Raises:
        ValueError: a report without volumes, or an image that is not (4, D, H, W).
    """
    from tumorlib.viz.notebook_figure import NotebookFigure as Figure  # a PNG in notebooks without pyplot

    votes = report.get("volumes") or []
    if not votes:
        raise ValueError("the report holds no volumes")
    order = report.get("inferred_order")
    ratios = np.array([[v["signatures"][t] for t in SIGNATURE_TISSUES] for v in votes], np.float64)
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(ratios > 0, ratios, np.nan), axis=0)  # (tissues, 4)
    fig = Figure(figsize=(12.0, 6.4 if image is not None else 3.6), layout="constrained")
    if image is not None:
        img = np.asarray(image)
        if img.ndim != 4 or img.shape[0] != 4:
            raise ValueError(f"image of shape {img.shape}: expected (4, D, H, W) in stored order")
        if mask is not None and np.asarray(mask).any():
            z = int(np.asarray(mask).any(axis=0).sum(axis=(1, 2)).argmax())
        else:
            z = img.shape[1] // 2
        top, bottom = fig.subfigures(2, 1, height_ratios=(1.1, 1.0))
        axes = top.subplots(1, 4)
        for c in range(4):
            sl = img[c, z]
            hi = np.percentile(sl[sl > 0], 99.5) if (sl > 0).any() else 1.0
            axes[c].imshow(sl, cmap="gray", vmin=0, vmax=hi)
            axes[c].set_title(f"stored channel {c}: {_name(order, c)}", color=_CHANNEL_COLORS[c])
            axes[c].axis("off")
    else:
        bottom = fig
    ax = bottom.subplots(1, 1)
    x = np.arange(len(SIGNATURE_TISSUES))
    width = 0.2
    for c in range(4):
        ax.bar(x + (c - 1.5) * width, np.log2(med[:, c]), width, color=_CHANNEL_COLORS[c],
               label=f"channel {c} = {_name(order, c)}")
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(x, [f"{t}\n({'textbook: ' + _TEXTBOOK[t]})" for t in SIGNATURE_TISSUES], fontsize=8)
    ax.set_ylabel("log2(tissue / healthy brain)")
    ax.legend(frameon=False, fontsize=8, ncol=4, loc="upper left")
    n = len(votes)
    agreeing = report.get("agreeing_votes", 0)
    verdict = (f"{agreeing} vote{'s' if agreeing != 1 else ''} for the verdict" if report.get("inferred_order")
               else "no verdict")
    ax.set_title(f"median over {n} volume{'s' if n != 1 else ''}; {verdict}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


_TEXTBOOK = {
    "csf": "bright on T2 only",
    "edema": "bright on T2, FLAIR",
    "enhancing": "far brightest on T1ce",
    "necrosis": "dark on T1, T1ce",
}
