"""The one-page QC report of a predicted case: three planes in radiological display, numbers and flags.

``plot_case_report`` draws, without pyplot: top row, FLAIR with the prediction in the class colours in
the axial, coronal and sagittal planes through the predicted tumour's centre (the volume's centre when
nothing is predicted), each plane oriented from the data's geometry (``tumorlib.viz.orientation``) with
its edge directions written on it; second row, the normalised predictive entropy over the same planes
(a heat map, 0 to 1); beside them the QC row (``tumorlib.evaluation.qc.qc_row``): region volumes in mL,
lesion counts, the post-processing applied (and the components it removed), the uncertainty numbers and the flags raised.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np

from tumorlib.core.brats import REGION_KEYS
from tumorlib.viz.colors import to_label_map, to_numpy
from tumorlib.viz.figures import modality_index
from tumorlib.viz.notebook_figure import new_figure
from tumorlib.viz.orientation import DISPLAY_PLANES, DisplayTransform, direction_labels
from tumorlib.viz.render import blend, brain_mask, center_of_mass, intensity_window, to_uint8

__all__ = ["direction_labels", "plot_case_report", "report_text"]

_LUT = np.array([[0, 0, 0], [1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [1.0, 0.9, 0.1]], np.float32)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def report_text(row: Mapping[str, Any]) -> str:
    """The QC row as the page's text block (volumes, lesions, post-processing, uncertainty, flags)."""
    lines = ["region  volume (mL)  lesions"]
    lines += [f"{r.upper():<7} {row[f'volume_{r}_ml']:>11.2f}  {row[f'lesions_{r}']:>7}" for r in REGION_KEYS]
    removed = " / ".join(str(row.get(f"components_removed_{r}", 0)) for r in REGION_KEYS)
    lines += ["", *textwrap.wrap(f"post-processing: {row['et_postprocessing']}", 44, subsequent_indent="  "),
              f"components removed WT/TC/ET: {removed}",
              f"mean entropy in tumour: {_fmt(row['mean_entropy_tumour'])}",
              f"uncertain fraction: {_fmt(row['uncertain_fraction'])}", "",
              "flags: " + (row["flags"].replace(";", ", ") if row["flags"] else "none")]
    ranges = [f"{r.upper()} {row[f'volume_range_{r}']}" for r in REGION_KEYS if row.get(f"volume_range_{r}")]
    if ranges:
        lines.append("training range (mL): " + ", ".join(ranges))
    return "\n".join(lines)


def plot_case_report(image: Any, labels: Any, entropy: Any, row: Mapping[str, Any], transform: DisplayTransform,
                     title: str | None = None, modality: str | int = "flair", opacity: float = 0.45) -> Any:
    """The report page of one case.

    Args:
        image: (4, D, H, W) intensities (raw or normalised).
        labels: predicted (D, H, W) BraTS labels or (3, D, H, W) class channels.
        entropy: (D, H, W) normalised predictive entropy, or None (its row is left out).
        row: the case's ``qc_row``.
        transform: ``display_transform`` of the volume's geometry.
        title: page title; None: ``case <row["case"]>``.
        modality: the background channel.
        opacity: of the class colours.

    Returns:
        The ``NotebookFigure``.
    """
    img = to_numpy(image)[modality_index(modality)].astype(np.float32)
    lab = to_label_map(labels, spatial_ndim=3)
    centre = center_of_mass(lab > 0)
    grey = to_uint8(img, intensity_window(img), brain_mask(to_numpy(image)))
    rows = 1 if entropy is None else 2
    fig = new_figure((11, 3.4 * rows + 0.4))
    grid = fig.add_gridspec(rows, 4, width_ratios=[1, 1, 1, 1.15])
    for j, plane in enumerate(DISPLAY_PLANES):
        index = centre[transform.axis(plane)]
        rgb = np.repeat(transform.plane(grey, plane, index)[..., None], 3, axis=-1).astype(np.float32) / 255.0
        rgb = blend(rgb, transform.plane(lab, plane, index), opacity, _LUT)
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(rgb, aspect=transform.aspect(plane), interpolation="nearest")
        ax.set_title(f"{plane} {index}", fontsize=9)
        direction_labels(ax, transform, plane)
        ax.set_axis_off()
        if entropy is not None:
            ax = fig.add_subplot(grid[1, j])
            shown = ax.imshow(transform.plane(to_numpy(entropy), plane, index), cmap="magma", vmin=0.0, vmax=1.0,
                              aspect=transform.aspect(plane), interpolation="nearest")
            ax.set_title(f"entropy, {plane}", fontsize=9)
            direction_labels(ax, transform, plane)
            ax.set_axis_off()
    if entropy is not None:
        fig.colorbar(shown, ax=ax, fraction=0.046, label="normalised entropy")
    text = fig.add_subplot(grid[:, 3])
    text.set_axis_off()
    text.text(0.0, 1.0, report_text(row), va="top", ha="left", family="monospace", fontsize=8.5,
              transform=text.transAxes)
    fig.suptitle(title if title is not None else f"case {row.get('case')}", fontsize=11)
    return fig
