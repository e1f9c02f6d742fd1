"""Axial, coronal and sagittal panels through one point (notebooks 04, 05 and 06), as one static figure.

The interactive counterpart is ``tumorlib.viz.viewer.ThreePlaneViewer``; both draw with
``tumorlib.viz.render`` and the colours of ``tumorlib.viz.colors``, and both orient the planes from the
volume's ``affine`` when given (radiological display with direction labels, ``tumorlib.viz.orientation``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tumorlib.core.brats import MODALITIES
from tumorlib.core.regions import COMPONENT_STRUCTURE
from tumorlib.viz.colors import ERROR_COLORS, add_class_legend, check_image, class_legend_handles, rgb01, to_label_map
from tumorlib.viz.figures import modality_index
from tumorlib.viz.notebook_figure import new_figure
from tumorlib.viz.orientation import DISPLAY_PLANES, direction_labels, volume_transform
from tumorlib.viz.render import brain_mask, center_of_mass, intensity_window, render_plane, to_uint8

__all__ = ["plot_postprocessing", "plot_three_views"]


def _default_position(img: np.ndarray, gt: np.ndarray | None, pred: np.ndarray | None) -> tuple[int, int, int]:
    brain = brain_mask(img)
    for labels in (gt, pred):
        if labels is not None and labels.any():
            return center_of_mass(labels > 0)
    return center_of_mass(brain)


def _checked_inputs(image: Any, gt: Any | None, pred: Any | None, position: Sequence[int] | None,
                    errors: bool) -> tuple[np.ndarray, Any, Any, tuple[int, ...]]:
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
    spacing: Sequence[float] | None = None,
    opacity: float = 0.5,
    errors: bool = False,
    crosshair: bool = True,
    title: str | None = None,
    affine: Any | None = None,
) -> Any:
    """Axial, coronal and sagittal panels through one point, with ground truth and/or prediction overlays.

    Args:
        image: ``(4, D, H, W)`` in T1, T1ce, T2, FLAIR order.
        gt: ground truth, ``(3, D, H, W)`` class channels or ``(D, H, W)`` label map, or None.
        pred: prediction in the same forms (probabilities are refused: decode them first with
            ``tumorlib.core.regions.Decoder``), or None.
        position: ``(z, y, x)`` voxel the three planes pass through; default: the centre of mass of the
            ground-truth tumour, else of the predicted tumour, else of the brain.
        modality: the grey image (name or channel index).
        spacing: voxel size along (D, H, W), for the aspect ratio of each panel; None: the affine's voxel
            sizes, or 1 mm without an affine.
        opacity: overlay opacity 0..1.
        errors: add a row of errors (false positive, false negative, wrong class); needs ``gt`` and ``pred``.
        crosshair: draw lines where the other two planes cut each panel.
        title: figure title; default names the modality and position.
        affine: (4, 4) NIfTI affine of the volume's (H, W, D) array (``tumorlib.data.cache.cache_affine``):
            each plane in radiological display with the direction of each edge written on it; None: the
            planes as stored (axial ``volume[z]``, coronal and sagittal with the last slice on top), no labels.

    Returns:
        ``matplotlib.figure.Figure``: one row per overlay (ground truth, prediction, errors; a single
        image-only row when neither mask is given), columns axial, coronal, sagittal.

    Raises:
        ValueError: for mismatched shapes, a position outside the volume, ``errors`` without both masks,
            bad spacing, or an affine with no display orientation.
    """
    img, gt_l, pred_l, pos = _checked_inputs(image, gt, pred, position, errors)
    transform = volume_transform(affine, img.shape[1:], spacing)
    m = modality_index(modality)
    gray_vol = to_uint8(img[m], intensity_window(img[m]), brain_mask(img))
    rows = _rows(gt_l, pred_l, errors, MODALITIES[m])
    sp, shape = transform.spacing, transform.shape
    extents = {p: tuple(shape[a] * sp[a] for a in transform.plane_axes(p)) for p in DISPLAY_PLANES}
    widths = [extents[p][1] for p in DISPLAY_PLANES]
    heights = [max(extents[p][0] for p in DISPLAY_PLANES)] * len(rows)
    fig = new_figure((3.6 * sum(widths) / max(widths), 3.6 * len(rows) * 1.05 + 0.6))
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": widths, "height_ratios": heights})
    for r, (row_name, overlay) in enumerate(rows):
        for c, plane in enumerate(DISPLAY_PLANES):
            axis = transform.axis(plane)
            index = pos[axis]
            # the crosshair marks the other two planes, where the position lies in this one
            cross = transform.point(plane, pos) if crosshair else None
            gray = transform.plane(gray_vol, plane, index)
            g = None if gt_l is None else transform.plane(gt_l, plane, index)
            p = None if pred_l is None else transform.plane(pred_l, plane, index)
            rgb = render_plane(gray, g, p, overlay=overlay, opacity=opacity, crosshair=cross)
            ax = axes[r, c]
            ax.imshow(rgb, aspect=transform.aspect(plane), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if affine is not None:
                direction_labels(ax, transform, plane)
            if r == 0:
                ax.set_title(f"{plane} ({'zyx'[axis]}={index})")
            if c == 0:
                ax.set_ylabel(row_name)
    fig.suptitle(title if title is not None else f"{MODALITIES[m]} at (z, y, x) = {pos}")
    if gt_l is not None or pred_l is not None:
        add_class_legend(fig, errors=errors)
    return fig


def plot_postprocessing(image: Any, raw: Any, post: Any, affine: Any | None = None, title: str | None = None,
                        modality: str | int = "flair") -> Any:
    """What post-processing removed from one prediction: before, after, and the voxels it changed.

    The planes pass through the largest changed component (else the tumour). The third row marks in cyan
    the voxels that left the tumour (removed whole-tumour components, now background) and in white the
    voxels that changed class (a removed tumour-core component now edema, a removed enhancing component
    now necrosis).

    Args:
        image: ``(4, D, H, W)`` in T1, T1ce, T2, FLAIR order.
        raw: the prediction before post-processing, ``(D, H, W)`` labels or ``(3, D, H, W)`` class channels.
        post: the same after (``tumorlib.inference.postprocess.PostProcessing.apply``).
        affine: the volume's affine, as for ``plot_three_views``.
        title: figure title.
        modality: the grey image.

    Returns:
        ``matplotlib.figure.Figure`` with rows before, after and changed.

    Raises:
        ValueError: as ``plot_three_views``.
    """
    from matplotlib.patches import Patch
    from scipy import ndimage

    raw_l, post_l = to_label_map(raw, spatial_ndim=3), to_label_map(post, spatial_ndim=3)
    changed, n = ndimage.label(raw_l != post_l, structure=COMPONENT_STRUCTURE)
    position = None
    if n:
        largest = int(np.argmax(np.bincount(changed.ravel())[1:])) + 1
        position = center_of_mass(changed == largest)
    fig = plot_three_views(image, gt=raw_l, pred=post_l, position=position, modality=modality, errors=True,
                           title=title, affine=affine)
    for ax, name in zip(fig.axes[::3], ("before", "after", "changed")):
        ax.set_ylabel(name)
    for legend in list(fig.legends):
        legend.remove()
    marks = [Patch(facecolor=rgb01(ERROR_COLORS[1]), edgecolor="0.3", label="removed (now background)"),
             Patch(facecolor=rgb01(ERROR_COLORS[2]), edgecolor="0.3", label="relabelled (TC -> ED, ET -> NCR)")]
    handles = class_legend_handles() + marks
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig
