"""Axial, coronal and sagittal panels through one point (notebooks 04, 05 and 06), as one static figure.

The interactive counterpart is ``tumorlib.viz.viewer.ThreePlaneViewer``; both draw with
``tumorlib.viz.render`` and the colours of ``tumorlib.viz.colors``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tumorlib.core.brats import MODALITIES
from tumorlib.viz.colors import add_class_legend, check_image, to_label_map
from tumorlib.viz.figures import modality_index
from tumorlib.viz.notebook_figure import new_figure
from tumorlib.viz.render import (
    PLANES,
    brain_mask,
    center_of_mass,
    intensity_window,
    plane_aspect,
    plane_slice,
    render_plane,
    to_uint8,
)

__all__ = ["plot_three_views"]


def _default_position(img: np.ndarray, gt: np.ndarray | None, pred: np.ndarray | None) -> tuple[int, int, int]:
    brain = brain_mask(img)
    for labels in (gt, pred):
        if labels is not None and labels.any():
            return center_of_mass(labels > 0)
    return center_of_mass(brain)


def _checked_inputs(image: Any, gt: Any | None, pred: Any | None, position: Sequence[int] | None,
                    spacing: Sequence[float], errors: bool) -> tuple[np.ndarray, Any, Any, tuple[int, ...]]:
    """The image, both label maps (or None) and the position, checked as ``plot_three_views`` documents."""
    img = check_image(image)
    shape = img.shape[1:]
    gt_l = None if gt is None else to_label_map(gt, spatial_ndim=3)
    pred_l = None if pred is None else to_label_map(pred, spatial_ndim=3)
    for name, lab in (("gt", gt_l), ("pred", pred_l)):
        if lab is not None and lab.shape != shape:
            raise ValueError(f"{name} {lab.shape} and image {shape} differ in spatial shape")
    if errors and (gt_l is None or pred_l is None):
        raise ValueError("errors=True needs both gt and pred")
    pos = _default_position(img, gt_l, pred_l) if position is None else tuple(int(p) for p in position)
    if len(pos) != 3 or any(not 0 <= p < s for p, s in zip(pos, shape)):
        raise ValueError(f"position {tuple(pos)} outside the volume of shape {shape}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing {tuple(spacing)} must be three positive numbers (D, H, W)")
    return img, gt_l, pred_l, pos


def _rows(gt_l: Any, pred_l: Any, errors: bool, modality_name: str) -> list[tuple[str, str]]:
    """``(row label, overlay)`` per figure row: ground truth, prediction, errors, or the image alone."""
    rows: list[tuple[str, str]] = []
    if gt_l is not None:
        rows.append(("ground truth", "ground truth"))
    if pred_l is not None:
        rows.append(("prediction", "prediction"))
    if errors:
        rows.append(("errors", "errors"))
    return rows or [(modality_name, "none")]


def plot_three_views(
    image: Any,
    gt: Any | None = None,
    pred: Any | None = None,
    position: Sequence[int] | None = None,
    modality: str | int = "flair",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    opacity: float = 0.5,
    errors: bool = False,
    crosshair: bool = True,
    title: str | None = None,
) -> Any:
    """Axial, coronal and sagittal panels through one point, with ground truth and/or prediction overlays.

    Args:
        image: ``(4, D, H, W)`` in T1, T1ce, T2, FLAIR order.
        gt: ground truth, ``(3, D, H, W)`` class channels or ``(D, H, W)`` label map, or None.
        pred: prediction in the same forms (probabilities are decoded by
            ``tumorlib.core.brats.decode_classes`` at 0.5), or None.
        position: ``(z, y, x)`` voxel the three planes pass through; default: the centre of mass of the
            ground-truth tumour, else of the predicted tumour, else of the brain.
        modality: the grey image (name or channel index).
        spacing: voxel size along (D, H, W), for the aspect ratio of each panel.
        opacity: overlay opacity 0..1.
        errors: add a row of errors (false positive, false negative, wrong class); needs ``gt`` and ``pred``.
        crosshair: draw lines where the other two planes cut each panel.
        title: figure title; default names the modality and position.

    Returns:
        ``matplotlib.figure.Figure``: one row per overlay (ground truth, prediction, errors; a single
        image-only row when neither mask is given), columns axial, coronal, sagittal.

    Raises:
        ValueError: for mismatched shapes, a position outside the volume, or ``errors`` without both masks.
    """
    img, gt_l, pred_l, pos = _checked_inputs(image, gt, pred, position, spacing, errors)
    m = modality_index(modality)
    gray_vol = to_uint8(img[m], intensity_window(img[m]), brain_mask(img))
    rows = _rows(gt_l, pred_l, errors, MODALITIES[m])
    z, y, x = pos
    D, H, W = img.shape[1:]
    sz, sy, sx = (float(s) for s in spacing)
    # panel (row, col) of each crosshair: the lines mark the other two planes in display orientation
    cuts = {
        "axial": (z, (y, x)),
        "coronal": (y, (D - 1 - z, x)),
        "sagittal": (x, (D - 1 - z, y)),
    }
    widths = [W * sx, W * sx, H * sy]
    heights = [max(H * sy, D * sz)] * len(rows)
    fig = new_figure((3.6 * sum(widths) / max(widths), 3.6 * len(rows) * 1.05 + 0.6))
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": widths, "height_ratios": heights})
    for r, (row_name, overlay) in enumerate(rows):
        for c, (plane, _) in enumerate(PLANES):
            index, cross = cuts[plane]
            gray = plane_slice(gray_vol, plane, index)
            g = None if gt_l is None else plane_slice(gt_l, plane, index)
            p = None if pred_l is None else plane_slice(pred_l, plane, index)
            rgb = render_plane(gray, g, p, overlay=overlay, opacity=opacity, crosshair=cross if crosshair else None)
            ax = axes[r, c]
            ax.imshow(rgb, aspect=plane_aspect(plane, spacing), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{plane} ({'zyx'[c]}={index})")
            if c == 0:
                ax.set_ylabel(row_name)
    fig.suptitle(title if title is not None else f"{MODALITIES[m]} at (z, y, x) = {pos}")
    if gt_l is not None or pred_l is not None:
        add_class_legend(fig, errors=errors)
    return fig
