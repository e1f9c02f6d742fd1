"""``ThreePlaneViewer``: scroll through a volume in axial, coronal and sagittal planes in JupyterLab.

The viewer is plain ipywidgets (no frontend extension beyond the widget manager JupyterLab 4 ships with):
three ``IntSlider`` for the slice positions, a modality dropdown, an overlay choice, an opacity slider and
a crosshair checkbox drive three ``ipywidgets.Image`` panels. Each redraw composes the planes with numpy
(``tumorlib.viz.render``), encodes them as PNG and replaces the bytes of the existing ``Image`` widgets;
nothing is rebuilt, so a slider step costs a few milliseconds (``tumorlib.benchmarks.viewer``).

Anisotropic voxels are shown with their true proportions: each plane is resampled (nearest neighbour)
to square pixels of the smallest spacing before encoding, so the PNG itself has the right aspect ratio.

Orientation. Given the volume's ``affine`` (``tumorlib.data.cache.cache_affine`` for a cached volume,
``tumorlib.viz.orientation.kaggle_affine()`` for a raw Kaggle one), every plane is shown in radiological
display (``tumorlib.viz.orientation``: axial anterior up and the patient's left on the right, coronal and
sagittal superior up) with the direction of each edge written beside the panel; each slider moves along
the array axis its plane cuts, and the crosshair and ``voxel_at``/``click`` map display pixels to voxels
through the same transform (views of the arrays, no copy per redraw). Without an affine the planes are
shown as stored (``array_transform``) and no directions are written.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from tumorlib.core.brats import CLASS_NAMES, MODALITIES
from tumorlib.viz.colors import check_image, overlay_legend_html, to_label_map, to_numpy
from tumorlib.viz.panels import panel_geometry
from tumorlib.viz.render import (
    PLANES,
    brain_mask,
    center_of_mass,
    draw_crosshair,
    intensity_window,
    png_bytes,
    render_plane,
    to_uint8,
)

__all__ = ["OVERLAYS", "ThreePlaneViewer"]

#: Overlay choices: (label shown in the dropdown, value).
OVERLAYS: tuple[tuple[str, str], ...] = (
    ("none", "none"),
    ("ground truth", "ground truth"),
    ("prediction", "prediction"),
    ("both (outlines)", "both"),
    ("errors (FP / FN)", "errors"),
    ("uncertainty (entropy)", "uncertainty"),
)
#: The masks each overlay needs (viewer attributes).
_NEEDS = {"none": (), "ground truth": ("gt",), "prediction": ("pred",), "both": ("gt", "pred"),
          "errors": ("gt", "pred"), "uncertainty": ("uncertainty",)}

_VIEWER_CSS = """<style>
.tumorlib-viewer .tumorlib-panel img { image-rendering: pixelated; background: #000; }
.tumorlib-viewer .tumorlib-edge { font-size: 80%; font-weight: bold; color: #777; padding: 0 3px; }
.tumorlib-viewer .tumorlib-swatch { display: inline-block; width: 0.9em; height: 0.9em;
  margin: 0 0.3em 0 0.9em; vertical-align: middle; border: 1px solid #555; }
</style>"""


class ThreePlaneViewer:
    """Interactive axial / coronal / sagittal viewer of a 4-modality volume with segmentation overlays.

    Display it as the last expression of a notebook cell (or with ``IPython.display.display``). The
    controls are attributes, so code and tests can drive the viewer exactly as a user does:
    ``viewer.sliders["axial"].value = 40`` redraws the panels, ``viewer.rendered["axial"]`` holds the RGB
    array last sent to the axial panel and ``viewer.images["axial"].value`` its PNG bytes.

    Args:
        image: ``(4, D, H, W)`` float intensities, channels T1, T1ce, T2, FLAIR (array or tensor).
        gt: ground truth, ``(3, D, H, W)`` class channels (necrosis, edema, enhancing) or ``(D, H, W)``
            label map 0..3 (BraTS 4 accepted), or None.
        pred: prediction in the same forms (probabilities are refused: decode them first with
            ``tumorlib.core.regions.Decoder``), or None.
        spacing: voxel size along (D, H, W) in mm; anisotropic spacing is shown to scale. None: the
            affine's voxel sizes, or 1 mm without an affine.
        modality: modality shown first (name or channel index).
        overlay: first overlay, one of ``none``, ``ground truth``, ``prediction``, ``both``, ``errors``,
            ``uncertainty``; default ``prediction`` when given, else ``ground truth`` when given, else ``none``.
        opacity: first overlay opacity 0..1.
        position: first ``(z, y, x)``; default the centre of mass of the ground-truth tumour, else of the
            predicted tumour, else of the brain.
        size: displayed size in CSS pixels of the largest panel side.
        title: text shown above the panels, or None.
        uncertainty: ``(D, H, W)`` map in [0, 1] (normalised predictive entropy,
            ``tumorlib.inference.uncertainty.uncertainty_maps``) for the ``uncertainty`` overlay, or None.
        affine: (4, 4) NIfTI affine of the volume's (H, W, D) array (see the module text): radiological
            display with direction labels; None: the planes as stored, no labels.

    Attributes:
        sliders: ``{"axial", "coronal", "sagittal"}`` ``IntSlider`` widgets, each along the array axis its
            plane cuts (``transform.axis(plane)``; without an affine axial z, coronal y, sagittal x).
        transform: the ``DisplayTransform`` of every panel; ``panels``: its ``PanelGeometry``.
        edge_labels: ``{plane: {edge: HTML}}``, the direction labels (empty without an affine).
        modality_dropdown, overlay_dropdown, opacity_slider, crosshair_checkbox: the other controls.
        images: ``{plane: ipywidgets.Image}`` panels; ``rendered``: ``{plane: (h, w, 3) uint8}``.
        widget: the ``ipywidgets.VBox`` holding everything (CSS class ``tumorlib-viewer``).
        redraw_count: number of redraws so far; ``last_redraw_ms``: duration of the last one.

    Raises:
        ValueError: for an image that is not (4, D, H, W), masks of another spatial shape, bad spacing,
            an overlay whose masks are missing, or an affine with no display orientation.
    """

    def __init__(
        self,
        image: Any,
        gt: Any | None = None,
        pred: Any | None = None,
        spacing: Sequence[float] | None = None,
        modality: str | int = "flair",
        overlay: str | None = None,
        opacity: float = 0.5,
        position: Sequence[int] | None = None,
        size: int = 320,
        title: str | None = None,
        uncertainty: Any | None = None,
        affine: Any | None = None,
    ) -> None:
        import ipywidgets as widgets

        img = check_image(image)
        self.image = img
        self.shape: tuple[int, int, int] = tuple(int(s) for s in img.shape[1:])  # type: ignore[assignment]
        self.gt = None if gt is None else to_label_map(gt, spatial_ndim=3)
        self.pred = None if pred is None else to_label_map(pred, spatial_ndim=3)
        self.uncertainty = None if uncertainty is None else np.asarray(to_numpy(uncertainty), dtype=np.float32)
        for name, lab in (("gt", self.gt), ("pred", self.pred), ("uncertainty", self.uncertainty)):
            if lab is not None and lab.shape != self.shape:
                raise ValueError(f"{name} of spatial shape {lab.shape} does not match image {self.shape}")
        self.panels = panel_geometry(affine, self.shape, spacing, size)
        self.transform, self.spacing = self.panels.transform, self.panels.spacing
        self.labelled = affine is not None
        self._windows = [intensity_window(img[c]) for c in range(len(MODALITIES))]
        self._gray: dict[int, np.ndarray] = {}
        self._brain: np.ndarray | None = None
        self._base: dict[str, tuple[tuple[Any, ...], np.ndarray]] = {}
        self.rendered: dict[str, np.ndarray] = {}
        self.redraw_count = 0
        self.last_redraw_ms = 0.0
        overlay = self._checked_overlay(overlay)
        if position is None:
            position = self.default_position()
        pos = tuple(int(p) for p in position)
        if len(pos) != 3 or any(not 0 <= p < s for p, s in zip(pos, self.shape)):
            raise ValueError(f"position {pos} outside the volume of shape {self.shape}")
        self._build_controls(widgets, pos, modality, overlay, opacity)
        self._build_layout(widgets, title)
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        for control in (self.modality_dropdown, self.overlay_dropdown, self.opacity_slider, self.crosshair_checkbox):
            control.observe(self._on_change, names="value")
        self.redraw()

    # ------------------------------------------------------------------------------------------- widgets

    def _checked_overlay(self, overlay: str | None) -> str:
        """The overlay to start with: ``overlay``, or the prediction, ground truth or none as given."""
        if overlay is None:
            overlay = "prediction" if self.pred is not None else ("ground truth" if self.gt is not None else "none")
        if not self._overlay_available(overlay):
            known = [v for _, v in OVERLAYS]
            if overlay not in known:
                raise ValueError(f"unknown overlay {overlay!r}; expected one of {', '.join(known)}")
            raise ValueError(f"overlay {overlay!r} needs masks that were not given (gt={self.gt is not None}, "
                             f"pred={self.pred is not None}, uncertainty={self.uncertainty is not None})")
        return overlay

    def _build_controls(self, widgets: Any, pos: tuple[int, ...], modality: str | int, overlay: str,
                        opacity: float) -> None:
        """The three sliders, the modality and overlay dropdowns, the opacity slider and the checkbox."""
        from tumorlib.viz.figures import modality_index

        slider_layout = widgets.Layout(width="95%")
        self.sliders: dict[str, Any] = {}
        for plane, _ in PLANES:
            axis = self.transform.axis(plane)
            self.sliders[plane] = widgets.IntSlider(value=pos[axis], min=0, max=self.shape[axis] - 1,
                                                    description=f"{plane} {'zyx'[axis]}", layout=slider_layout,
                                                    continuous_update=True)
        options = [(label, value) for label, value in OVERLAYS if self._overlay_available(value)]
        self.modality_dropdown = widgets.Dropdown(options=list(MODALITIES),
                                                  value=MODALITIES[modality_index(modality)],
                                                  description="modality", layout=widgets.Layout(width="200px"))
        self.overlay_dropdown = widgets.Dropdown(options=options, value=overlay, description="overlay",
                                                 layout=widgets.Layout(width="250px"))
        self.opacity_slider = widgets.FloatSlider(value=float(opacity), min=0.0, max=1.0, step=0.05,
                                                  description="opacity", layout=widgets.Layout(width="260px"),
                                                  continuous_update=True)
        self.crosshair_checkbox = widgets.Checkbox(value=True, description="crosshair", indent=False,
                                                   layout=widgets.Layout(width="110px"))

    def _build_layout(self, widgets: Any, title: str | None) -> None:
        """The three image panels, legend and readout, and the ``VBox`` holding them with the controls."""
        self.images: dict[str, Any] = {}
        self.edge_labels: dict[str, dict[str, Any]] = {}
        panels = []
        for plane, _ in PLANES:
            h, w = self.panels.shape[plane]
            img_w = widgets.Image(format="png", width=str(int(round(w * self.panels.zoom))),
                                  height=str(int(round(h * self.panels.zoom))))
            self.images[plane] = img_w
            caption = widgets.HTML(f"<b>{plane}</b>")
            children = [caption, img_w]
            if self.labelled:
                edges = {edge: widgets.HTML(f"<span class='tumorlib-edge' title='patient direction'>{text}</span>")
                         for edge, text in self.transform.labels(plane).items()}
                self.edge_labels[plane] = edges
                middle = widgets.HBox([edges["left"], img_w, edges["right"]],
                                      layout=widgets.Layout(align_items="center"))
                children = [caption, edges["top"], middle, edges["bottom"]]
            box = widgets.VBox(children, layout=widgets.Layout(margin="0 6px 0 0", align_items="center"))
            box.add_class("tumorlib-panel")
            panels.append(box)
        self.readout = widgets.HTML()
        self.legend = widgets.HTML()
        header = [widgets.HTML(_VIEWER_CSS + (f"<b>{title}</b>" if title else ""))]
        controls = widgets.HBox([self.modality_dropdown, self.overlay_dropdown, self.opacity_slider,
                                 self.crosshair_checkbox], layout=widgets.Layout(flex_flow="row wrap"))
        self.widget = widgets.VBox(
            header + [widgets.HBox(panels), self.legend, self.sliders["axial"], self.sliders["coronal"],
                      self.sliders["sagittal"], controls, self.readout]
        )
        self.widget.add_class("tumorlib-viewer")

    # ------------------------------------------------------------------------------------------- geometry

    def voxel_at(self, plane: str, row: int, col: int) -> tuple[int, int, int]:
        """The voxel ``(z, y, x)`` under a pixel of a displayed panel (``rendered[plane][row, col]``).

        Args:
            plane: the panel.
            row, col: pixel in the panel as displayed (after the aspect resampling).

        Returns:
            ``(z, y, x)`` array indices; the plane's own axis is its slider's value.

        Raises:
            IndexError: a pixel outside the panel.
        """
        return self.panels.voxel(plane, self.sliders[plane].value, row, col)

    def click(self, plane: str, row: int, col: int) -> tuple[int, int, int]:
        """Move the crosshair to the voxel under a pixel of a panel, as a click there does (one redraw).

        Returns:
            the new position ``(z, y, x)``.
        """
        voxel = self.voxel_at(plane, row, col)
        self.set_position(*voxel)
        return voxel

    # ------------------------------------------------------------------------------------------- state

    def _overlay_available(self, overlay: str) -> bool:
        return overlay in _NEEDS and all(getattr(self, name) is not None for name in _NEEDS[overlay])

    def default_position(self) -> tuple[int, int, int]:
        """Centre of mass of the ground-truth tumour, else of the predicted tumour, else of the brain.

        Returns:
            ``(z, y, x)`` voxel indices.
        """
        for labels in (self.gt, self.pred):
            if labels is not None and labels.any():
                return center_of_mass(labels > 0)
        return center_of_mass(brain_mask(self.image))

    @property
    def position(self) -> tuple[int, int, int]:
        """Current ``(z, y, x)`` array indices, each the value of the slider whose plane cuts that axis."""
        out = [0, 0, 0]
        for plane, slider in self.sliders.items():
            out[self.transform.axis(plane)] = slider.value
        return out[0], out[1], out[2]

    def set_position(self, z: int, y: int, x: int) -> None:
        """Move all three sliders at once and redraw once.

        Args:
            z, y, x: the voxel's array indices (clipped to the volume by the sliders).
        """
        voxel = (int(z), int(y), int(x))
        self._hold = True
        try:
            for plane, slider in self.sliders.items():
                slider.value = voxel[self.transform.axis(plane)]
        finally:
            self._hold = False
        self.redraw()

    @property
    def modality(self) -> int:
        """Channel index of the modality shown."""
        return MODALITIES.index(self.modality_dropdown.value)

    def gray_volume(self, channel: int) -> np.ndarray:
        """The windowed ``(D, H, W)`` uint8 volume of one modality, black outside the brain (cached).

        Args:
            channel: modality index 0..3.

        Returns:
            ``(D, H, W)`` uint8.
        """
        if channel not in self._gray:
            if self._brain is None:
                self._brain = brain_mask(self.image)
            self._gray[channel] = to_uint8(self.image[channel], self._windows[channel], self._brain)
        return self._gray[channel]

    # ------------------------------------------------------------------------------------------- drawing

    def render(self, plane: str) -> np.ndarray:
        """Compose one panel as displayed now (overlay, aspect resampling, crosshair).

        Args:
            plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.

        Returns:
            ``(h, w, 3)`` uint8 RGB at display resolution (square pixels of the smallest spacing).
        """
        index = self.sliders[plane].value
        cut = self.transform.plane
        overlay = self.overlay_dropdown.value
        opacity = float(self.opacity_slider.value)
        key = (index, self.modality, overlay, opacity)
        cached = self._base.get(plane)
        if cached is None or cached[0] != key:
            gray = cut(self.gray_volume(self.modality), plane, index)  # views: flips and transposes only
            gt = None if self.gt is None else cut(self.gt, plane, index)
            pred = None if self.pred is None else cut(self.pred, plane, index)
            heat = None if self.uncertainty is None else cut(self.uncertainty, plane, index)
            rgb = render_plane(gray, gt, pred, overlay=overlay, opacity=opacity, heat=heat)
            self._base[plane] = (key, np.ascontiguousarray(self.panels.resample(plane, rgb)))
        out = self._base[plane][1].copy()
        if self.crosshair_checkbox.value:
            row, col = self.panels.pixel(plane, self.position)
            draw_crosshair(out, row, col, color=(255, 255, 255), alpha=0.45)
        return out

    def redraw(self) -> float:
        """Recompose the three panels and replace the PNG bytes of the ``Image`` widgets.

        Returns:
            the time it took in milliseconds (also stored as ``last_redraw_ms``).
        """
        start = time.perf_counter()
        for plane, _ in PLANES:
            rgb = self.render(plane)
            previous = self.rendered.get(plane)
            if previous is None or previous.shape != rgb.shape or not np.array_equal(previous, rgb):
                self.rendered[plane] = rgb
                self.images[plane].value = png_bytes(rgb)
        self._update_text()
        self.redraw_count += 1
        self.last_redraw_ms = (time.perf_counter() - start) * 1000.0
        return self.last_redraw_ms

    def _on_change(self, change: dict[str, Any]) -> None:
        if getattr(self, "_hold", False):
            return
        self.redraw()

    def _update_text(self) -> None:
        z, y, x = self.position
        m = self.modality
        value = float(self.image[m, z, y, x])
        parts = [f"(z, y, x) = ({z}, {y}, {x})", f"{MODALITIES[m]} = {value:.4g}"]
        for name, lab in (("ground truth", self.gt), ("prediction", self.pred)):
            if lab is not None:
                k = int(lab[z, y, x])
                parts.append(f"{name}: {'background' if k == 0 else CLASS_NAMES[k - 1]}")
        if self.uncertainty is not None:
            parts.append(f"entropy = {float(self.uncertainty[z, y, x]):.3f}")
        self.readout.value = "<code>" + " &nbsp;|&nbsp; ".join(parts) + "</code>"
        self.legend.value = f"<div style='font-size: 90%'>{overlay_legend_html(self.overlay_dropdown.value)}</div>"

    # ------------------------------------------------------------------------------------------- display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict) and "text/plain" in bundle:
            bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        return (f"ThreePlaneViewer(shape={self.shape}, spacing={self.spacing}, position={self.position}, "
                f"modality={self.modality_dropdown.value!r}, overlay={self.overlay_dropdown.value!r})")

