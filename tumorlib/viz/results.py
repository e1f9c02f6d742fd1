"""Figures of results: patch predictions, training curves and the box plot of evaluation metrics.

Like ``tumorlib.viz.figures``, every function returns a pyplot-free ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tumorlib.core.brats import CLASS_KEYS, CLASS_NAMES, MODALITIES
from tumorlib.viz.colors import add_class_legend, check_image, to_label_map
from tumorlib.viz.figures import modality_index, tumor_slice
from tumorlib.viz.notebook_figure import new_figure
from tumorlib.viz.orientation import direction_labels, volume_transform
from tumorlib.viz.render import brain_mask, intensity_window, render_plane, to_uint8

__all__ = ["plot_metric_boxes", "plot_predictions", "plot_training_curves"]


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    inter = np.count_nonzero(pred & target)
    total = np.count_nonzero(pred) + np.count_nonzero(target)
    return 1.0 if total == 0 else 2.0 * inter / total


def _patch_panels(i: int, im: np.ndarray, g: np.ndarray, p: np.ndarray, slice_index: Any, m: int,
                  opacity: float, affine: Any | None) -> tuple[Any, list[tuple[np.ndarray, str]]]:
    """The transform and the four (RGB, title) panels of patch ``i`` (see ``plot_predictions``)."""
    transform = volume_transform(affine, g.shape)
    cut = transform.axis("axial")
    if slice_index is None:
        z = tumor_slice(np.moveaxis(g if g.any() else p, cut, 0), np.moveaxis(im, cut + 1, 1))
    elif isinstance(slice_index, (int, np.integer)):
        z = int(slice_index)
    else:
        z = int(slice_index[i])
    if not 0 <= z < g.shape[cut]:
        raise ValueError(f"patch {i}: slice {z} outside 0..{g.shape[cut] - 1}")
    plane = transform.plane(im, "axial", z)
    gz, pz = transform.plane(g, "axial", z), transform.plane(p, "axial", z)
    gray = to_uint8(plane[m], intensity_window(im[m]), brain_mask(plane))
    dices = [_dice(p == k + 1, g == k + 1) for k in range(len(CLASS_NAMES))]
    panels = [
        (render_plane(gray), f"{MODALITIES[m]} (z={z})"),
        (render_plane(gray, gz, None, "ground truth", opacity), "ground truth"),
        (render_plane(gray, None, pz, "prediction", opacity),
         "prediction, Dice " + "/".join(f"{d:.2f}" for d in dices)),
        (render_plane(gray, gz, pz, "errors", max(opacity, 0.7)), "errors"),
    ]
    return transform, panels


def plot_predictions(
    images: Any,
    gts: Any,
    preds: Any,
    slice_index: int | Sequence[int] | None = None,
    modality: str | int = "flair",
    max_rows: int = 4,
    opacity: float = 0.5,
    titles: Sequence[str] | None = None,
    title: str | None = "Ground truth vs prediction",
    affine: Any | None = None,
) -> Any:
    """The reference design's prediction figure: per patch, the image, ground truth, prediction and errors at one slice.

    Args:
        images: ``(N, 4, d, h, w)`` patches (array, tensor or sequence of ``(4, d, h, w)``).
        gts: ``(N, 3, d, h, w)`` ground-truth class channels (or ``(N, d, h, w)`` label maps).
        preds: ``(N, 3, d, h, w)`` binary predictions (probabilities are refused: decode them first with
            ``tumorlib.core.regions.Decoder``).
        slice_index: axial slice per patch (one int for all, or one per patch); default per patch: the slice
            with the most ground-truth tumour (or predicted tumour when the ground truth is empty).
        modality: the grey image (name or channel index).
        max_rows: at most this many patches are drawn (the first ones).
        opacity: overlay opacity 0..1.
        titles: row label per patch (e.g. ``"volume 12"``).
        title: figure title, or None.
        affine: (4, 4) NIfTI affine of the volume the patches were cut from (only its axes matter): each
            slice in radiological display with the edge directions written on it, ``slice_index`` counting
            along the axis the axial plane cuts; None: ``patch[:, z]`` as stored, no labels.

    Returns:
        ``matplotlib.figure.Figure`` with one row per patch and columns image, ground truth, prediction
        (with per-class Dice of the whole patch in its title), errors.

    Raises:
        ValueError: for mismatched counts or shapes, or no patches.
    """
    ims = [check_image(im, f"image {i}") for i, im in enumerate(images)]
    gl = [to_label_map(g, spatial_ndim=3) for g in gts]
    pl = [to_label_map(p, spatial_ndim=3) for p in preds]
    if not ims:
        raise ValueError("no patches given")
    if not len(ims) == len(gl) == len(pl):
        raise ValueError(f"{len(ims)} images, {len(gl)} ground truths, {len(pl)} predictions: counts differ")
    n = min(len(ims), max(1, int(max_rows)))
    m = modality_index(modality)
    fig = new_figure((12.0, 3.1 * n + 0.8))
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        im, g, p = ims[i], gl[i], pl[i]
        if g.shape != im.shape[1:] or p.shape != im.shape[1:]:
            raise ValueError(f"patch {i}: image {im.shape[1:]}, ground truth {g.shape}, prediction {p.shape} differ")
        transform, panels = _patch_panels(i, im, g, p, slice_index, m, opacity, affine)
        for c, (rgb, name) in enumerate(panels):
            ax = axes[i, c]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9)
            if affine is not None:
                direction_labels(ax, transform, "axial")
        if titles is not None and i < len(titles):
            axes[i, 0].set_ylabel(titles[i])
    if title:
        fig.suptitle(title + " (Dice: " + "/".join(CLASS_KEYS) + ")")
    add_class_legend(fig, errors=True)
    return fig


def plot_training_curves(history_df: Any, path: Any | None = None, title: str | None = "Training history") -> Any:
    """``tumorlib.training.history.plot_training_curves`` on a figure that notebooks show as PNG.

    Args:
        history_df: a history DataFrame or a path to ``history.csv``.
        path: optional file to save the figure to.
        title: figure title, or None.

    Returns:
        ``matplotlib.figure.Figure`` (see the training function).

    Raises:
        ValueError: no ``epoch`` column or no rows.
    """
    from tumorlib.training import history
    from tumorlib.viz.notebook_figure import NotebookFigure

    return history.plot_training_curves(history_df, path, title, figure=NotebookFigure)


def plot_metric_boxes(frame: Any, title: str | None = None) -> Any:
    """Box plots of Dice (classes and regions) and HD95 (regions) over the volumes.

    Args:
        frame: the per-volume table from ``tumorlib.evaluation.evaluate.evaluate`` (a ``pandas.DataFrame``).
        title: figure title; None: the number of volumes.

    Returns:
        ``matplotlib.figure.Figure`` with two panels (Dice, HD95), each volume drawn as a dot.
    """
    from tumorlib.core.brats import CLASS_KEYS as METRIC_CLASSES
    from tumorlib.core.brats import REGION_KEYS as REGION_NAMES

    dice_cols = [f"dice_{n}" for n in (*METRIC_CLASSES, "wt", "tc")]
    hd_cols = [f"hd95_{n}" for n in REGION_NAMES]
    fig = new_figure((10.0, 4.0))
    ax_d, ax_h = fig.subplots(1, 2, gridspec_kw={"width_ratios": [5, 3]})
    for ax, cols, label in ((ax_d, dice_cols, "Dice"), (ax_h, hd_cols, "HD95 (mm)")):
        data = [frame[c].astype(float).to_numpy() for c in cols]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(cols) + 1), [c.split("_")[1].upper() for c in cols])
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.08, 0.08, len(values)), values, ".", color="0.3", alpha=0.6)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax_d.set_ylim(-0.02, 1.02)
    ax_d.set_title("Dice: classes | regions")
    ax_h.set_title("HD95: regions")
    fig.suptitle(title if title is not None else f"{len(frame)} volumes")
    return fig
