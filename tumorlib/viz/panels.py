"""The geometry of the viewer's panels: display transform, voxel size, aspect resampling, pixel <-> voxel.

``ThreePlaneViewer`` (``tumorlib.viz.viewer``) shows each plane as ``DisplayTransform.plane`` cuts it
(``tumorlib.viz.orientation``), resampled by nearest neighbour to square pixels of the smallest spacing.
``PanelGeometry`` holds that resampling and maps both ways between a voxel and a displayed pixel, so the
crosshair and a click use the same transform as the picture.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tumorlib.viz.orientation import DISPLAY_PLANES, DisplayTransform, volume_transform
from tumorlib.viz.render import nearest_index

__all__ = ["PanelGeometry", "panel_geometry"]


class PanelGeometry:
    """How each plane of one volume is drawn: the transform, the resampling and the panel sizes.

    Args:
        transform: the volume's ``DisplayTransform``.
        spacing: voxel size along (D, H, W) in mm.
        size: displayed size in CSS pixels of the largest panel side.

    Attributes:
        transform, spacing: as given.
        shape: ``{plane: (rows, cols)}`` of each panel as displayed (after resampling).
        index: ``{plane: (row indices or None, column indices or None)}`` of the resampling.
        zoom: CSS pixels per displayed pixel.
    """

    def __init__(self, transform: DisplayTransform, spacing: Sequence[float], size: int) -> None:
        self.transform = transform
        self.spacing = tuple(float(s) for s in spacing)
        base = min(self.spacing)
        self.index: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.shape: dict[str, tuple[int, int]] = {}
        for plane in DISPLAY_PLANES:
            (nr, nc), axes = transform.plane_shape(plane), transform.plane_axes(plane)
            out_r = max(1, int(round(nr * self.spacing[axes[0]] / base)))
            out_c = max(1, int(round(nc * self.spacing[axes[1]] / base)))
            self.index[plane] = (None if out_r == nr else nearest_index(nr, out_r),
                                 None if out_c == nc else nearest_index(nc, out_c))
            self.shape[plane] = (out_r, out_c)
        self.zoom = float(size) / max(max(s) for s in self.shape.values())

    def resample(self, plane: str, rgb: np.ndarray) -> np.ndarray:
        """A plane as cut (``(rows, cols, ...)``) resampled to its displayed size."""
        rows, cols = self.index[plane]
        if rows is not None:
            rgb = rgb[rows]
        if cols is not None:
            rgb = rgb[:, cols]
        return rgb

    def _line(self, plane: str, axis: int, i: int) -> int:
        """Row (axis 0) or column (axis 1) in the displayed panel of source pixel ``i``."""
        idx = self.index[plane][axis]
        if idx is None:
            return i
        hits = np.nonzero(idx == i)[0]
        return int(hits[len(hits) // 2]) if hits.size else int(np.searchsorted(idx, i))

    def pixel(self, plane: str, voxel: Sequence[int]) -> tuple[int, int]:
        """Displayed (row, col) of a voxel ``(z, y, x)`` in a panel (the crosshair)."""
        row, col = self.transform.point(plane, voxel)
        return self._line(plane, 0, row), self._line(plane, 1, col)

    def voxel(self, plane: str, index: int, row: int, col: int) -> tuple[int, int, int]:
        """The voxel ``(z, y, x)`` under displayed pixel (row, col) of a panel cut at ``index``.

        Raises:
            IndexError: a pixel outside the panel.
        """
        out_r, out_c = self.shape[plane]
        if not (0 <= int(row) < out_r and 0 <= int(col) < out_c):
            raise IndexError(f"{plane} pixel {(row, col)} outside the panel {out_r}x{out_c}")
        rows, cols = self.index[plane]
        r = int(row) if rows is None else int(rows[int(row)])
        c = int(col) if cols is None else int(cols[int(col)])
        return self.transform.voxel(plane, index, r, c)


def panel_geometry(affine: Any | None, shape: Sequence[int], spacing: Sequence[float] | None,
                   size: int) -> PanelGeometry:
    """The panels of a volume: radiological display from ``affine``, or as stored without one.

    Args:
        affine: (4, 4) NIfTI affine of the (H, W, D) array, or None.
        shape: (D, H, W).
        spacing: voxel size along (D, H, W); None: the affine's voxel sizes, or 1 mm without an affine.
        size: CSS pixels of the largest panel side.

    Returns:
        The ``PanelGeometry``.

    Raises:
        ValueError: a spacing that is not three positive numbers; an affine ``display_transform`` refuses.
    """
    transform = volume_transform(affine, shape, spacing)
    return PanelGeometry(transform, transform.spacing, size)
