"""Figures and the interactive three-plane viewer, with one colour scheme for the tumour classes.

- ``tumorlib.viz.colors``: class and error colours, legends, mask conversions.
- ``tumorlib.viz.render``: numpy windowing, slicing and overlays shared by figures and viewer.
- ``tumorlib.viz.notebook_figure``: the pyplot-free figure every plot starts from.
- ``tumorlib.viz.figures``: static matplotlib figures of the data (sample slice, class fractions,
  histograms, the cache crop).
- ``tumorlib.viz.views``: axial, coronal and sagittal panels through one point.
- ``tumorlib.viz.results``: predictions, training curves, metric boxes.
- ``tumorlib.viz.confidence``: reliability diagram, Dice against mean uncertainty.
- ``tumorlib.viz.report``: the one-page QC report of a case.
- ``tumorlib.viz.viewer``: ``ThreePlaneViewer`` (ipywidgets); imported on first use so that
  ``import tumorlib.viz`` stays light (no ipywidgets) for training scripts. Its speed benchmark is
  ``tumorlib.benchmarks.viewer``.
"""

from __future__ import annotations

from typing import Any

from tumorlib.core.brats import CLASS_KEYS, CLASS_NAMES, MODALITIES
from tumorlib.viz.colors import (
    CLASS_COLORS,
    ERROR_COLORS,
    ERROR_NAMES,
    add_class_legend,
    class_legend_handles,
    error_legend_handles,
    error_map,
    to_label_map,
)
from tumorlib.viz.figures import (
    class_fractions,
    plot_cache_crop,
    plot_class_fractions,
    plot_intensity_histograms,
    plot_sample_slice,
    tumor_slice,
)
from tumorlib.viz.render import center_of_mass, render_plane
from tumorlib.viz.results import plot_metric_boxes, plot_predictions, plot_training_curves
from tumorlib.viz.confidence import plot_dice_vs_uncertainty, plot_reliability
from tumorlib.viz.views import plot_postprocessing, plot_three_views

__all__ = [
    "CLASS_COLORS",
    "CLASS_KEYS",
    "CLASS_NAMES",
    "ERROR_COLORS",
    "ERROR_NAMES",
    "MODALITIES",
    "ThreePlaneViewer",
    "add_class_legend",
    "center_of_mass",
    "class_fractions",
    "class_legend_handles",
    "error_legend_handles",
    "error_map",
    "plot_cache_crop",
    "plot_dice_vs_uncertainty",
    "plot_reliability",
    "plot_class_fractions",
    "plot_intensity_histograms",
    "plot_metric_boxes",
    "plot_predictions",
    "plot_sample_slice",
    "plot_postprocessing",
    "plot_three_views",
    "plot_training_curves",
    "render_plane",
    "to_label_map",
    "tumor_slice",
]

_LAZY = {"ThreePlaneViewer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tumorlib.viz import viewer

        return getattr(viewer, name)
    raise AttributeError(f"module 'tumorlib.viz' has no attribute {name!r}")
