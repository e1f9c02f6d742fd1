"""Numpy rendering shared by the static figures and the viewer: windowing, slicing, overlays, outlines.

Everything here works on plain arrays and returns ``uint8`` RGB images, so the static figures and the
interactive viewer paint classes, outlines and errors identically, and the viewer can redraw a plane in
about a millisecond without matplotlib.

Axes: a volume is ``(D, H, W)`` = (z slices, y rows, x columns). The three planes are

- axial: ``volume[z]`` -> ``(H, W)``, rows y, columns x;
- coronal: ``volume[:, y]`` -> ``(D, W)``, rows z flipped so the top slice is drawn at the top;
- sagittal: ``volume[:, :, x]`` -> ``(D, H)``, rows z flipped, columns y.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tumorlib.viz.colors import CLASS_COLORS, ERROR_COLORS, to_numpy

__all__ = [
    "HEAT_LUT",
    "heat_blend",
    "PLANES",
    "blend",
    "brain_mask",
    "center_of_mass",
    "draw_crosshair",
    "intensity_window",
    "label_outline",
    "nearest_index",
    "outline",
    "plane_aspect",
    "plane_slice",
    "png_bytes",
    "render_plane",
    "to_uint8",
]

#: Plane names with the volume axis each one cuts: axial z (0), coronal y (1), sagittal x (2).
PLANES: tuple[tuple[str, int], ...] = (("axial", 0), ("coronal", 1), ("sagittal", 2))

_CLASS_LUT = np.array(((0, 0, 0),) + CLASS_COLORS, dtype=np.float32)
_ERROR_LUT = np.array(((0, 0, 0),) + ERROR_COLORS, dtype=np.float32)


def _heat_lut(n: int = 256) -> np.ndarray:
    """A black-body heat scale (dark red -> red -> yellow -> white), (n, 3) float32 in 0..255."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    return np.stack([np.clip(0.35 + 1.95 * t, 0, 1), np.clip(2.0 * t - 0.6, 0, 1),
                     np.clip(3.0 * t - 2.0, 0, 1)], axis=1) * 255.0


#: Colours of the uncertainty overlay: index ``round(value * 255)`` of a value in [0, 1].
HEAT_LUT = _heat_lut()


def heat_blend(rgb: np.ndarray, values2d: np.ndarray, opacity: float, floor: float = 0.05) -> np.ndarray:
    """Blend a [0, 1] map (e.g. normalised entropy) over an RGB image as a heat map, in place.

    Each pixel is mixed with ``HEAT_LUT`` at ``opacity * value``, so certain voxels stay grey; values at
    or below ``floor`` are left alone.

    Args:
        rgb: ``(h, w, 3)`` float32 in 0..255, modified in place.
        values2d: ``(h, w)`` values in [0, 1] (clipped).
        opacity: largest opacity 0..1 (reached at value 1).
        floor: values up to this are not drawn.

    Returns:
        ``rgb``.
    """
    v = np.clip(np.asarray(values2d, dtype=np.float32), 0.0, 1.0)
    on = v > floor
    if opacity > 0 and on.any():
        a = (opacity * v[on])[:, None]
        rgb[on] = (1.0 - a) * rgb[on] + a * HEAT_LUT[np.rint(v[on] * 255).astype(np.intp)]
    return rgb


def brain_mask(image: Any) -> np.ndarray:
    """Brain voxels: nonzero in any channel.

    Args:
        image: ``(C, *spatial)`` intensities.

    Returns:
        ``(*spatial)`` bool.
    """
    arr = to_numpy(image)
    return np.any(arr != 0, axis=0)


def intensity_window(volume: Any, lo: float = 0.5, hi: float = 99.5, max_samples: int = 200_000) -> tuple[float, float]:
    """Display window of one modality: percentiles of its nonzero (brain) voxels.

    Args:
        volume: ``(*spatial)`` intensities of one modality.
        lo: lower percentile.
        hi: upper percentile.
        max_samples: percentiles are taken over an evenly strided subsample of at most this many voxels.

    Returns:
        ``(vmin, vmax)`` with ``vmax > vmin``; ``(0, 1)`` for an all-zero volume.
    """
    arr = to_numpy(volume).ravel()
    step = max(1, arr.size // max_samples)
    sample = arr[::step]
    sample = sample[sample != 0]
    if sample.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(sample, (lo, hi)))
    if not vmax > vmin:
        vmax = vmin + 1.0
    return vmin, vmax


def to_uint8(volume: Any, window: tuple[float, float] | None = None, brain: Any | None = None) -> np.ndarray:
    """Window a modality to 0..255 grey levels, background black.

    Args:
        volume: ``(*spatial)`` intensities.
        window: ``(vmin, vmax)``; default ``intensity_window(volume)``.
        brain: optional ``(*spatial)`` bool brain mask (see ``brain_mask``): voxels outside are set to 0,
            so z-scored volumes (background 0, brain around 0 too) keep a black background.

    Returns:
        ``(*spatial)`` uint8.
    """
    arr = to_numpy(volume)
    vmin, vmax = intensity_window(arr) if window is None else window
    scaled = (arr.astype(np.float32) - vmin) * (255.0 / (vmax - vmin))
    out = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    if brain is not None:
        out[~np.asarray(brain, dtype=bool)] = 0
    return out


def center_of_mass(mask: Any, fallback: Any | None = None) -> tuple[int, int, int]:
    """Rounded centre of mass of the nonzero voxels of a 3-D mask.

    Args:
        mask: ``(D, H, W)`` mask or label map (nonzero = inside).
        fallback: ``(D, H, W)`` mask used when ``mask`` is empty (e.g. the brain); if that is empty too,
            the volume centre is returned.

    Returns:
        ``(z, y, x)`` voxel indices.
    """
    for m in (mask, fallback):
        if m is None:
            continue
        arr = to_numpy(m)
        if arr.ndim != 3:
            raise ValueError(f"centre of mass needs a (D, H, W) mask, got shape {arr.shape}")
        idx = np.nonzero(arr)
        if idx[0].size:
            return tuple(int(round(float(i.mean()))) for i in idx)  # type: ignore[return-value]
    shape = to_numpy(mask).shape
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Cut one plane out of a volume, oriented for display (see the module docstring).

    Args:
        volume: ``(D, H, W)`` array, or ``(..., D, H, W)`` with leading axes kept.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along the plane's axis.

    Returns:
        ``(..., H, W)`` for axial, ``(..., D, W)`` for coronal, ``(..., D, H)`` for sagittal.

    Raises:
        ValueError: for an unknown plane; IndexError for an index outside the volume.
    """
    if plane == "axial":
        return volume[..., index, :, :]
    if plane == "coronal":
        return volume[..., ::-1, index, :]
    if plane == "sagittal":
        return volume[..., ::-1, :, index]
    raise ValueError(f"unknown plane {plane!r}; expected axial, coronal or sagittal")


def plane_aspect(plane: str, spacing: Sequence[float]) -> float:
    """Height/width of one displayed pixel of a plane, for voxel ``spacing`` (sz, sy, sx).

    Args:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        spacing: voxel size along (D, H, W).

    Returns:
        the aspect ratio matplotlib's ``imshow(aspect=...)`` expects.
    """
    sz, sy, sx = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def outline(mask2d: np.ndarray) -> np.ndarray:
    """Inner boundary of a 2-D region: pixels inside with a 4-neighbour outside (or on the border).

    Args:
        mask2d: ``(h, w)`` bool.

    Returns:
        ``(h, w)`` bool, True on the boundary.
    """
    m = np.asarray(mask2d, dtype=bool)
    interior = np.zeros_like(m)
    interior[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~interior


def label_outline(labels2d: np.ndarray) -> np.ndarray:
    """Boundaries of every class of a 2-D label map, each boundary keeping its class label.

    Args:
        labels2d: ``(h, w)`` uint8 labels 0..3.

    Returns:
        ``(h, w)`` uint8: the class label on each class's inner boundary, 0 elsewhere.
    """
    lab = np.asarray(labels2d)
    same = np.zeros(lab.shape, dtype=bool)
    c = lab[1:-1, 1:-1]
    same[1:-1, 1:-1] = (lab[:-2, 1:-1] == c) & (lab[2:, 1:-1] == c) & (lab[1:-1, :-2] == c) & (lab[1:-1, 2:] == c)
    return np.where((lab > 0) & ~same, lab, 0).astype(np.uint8)


def blend(rgb: np.ndarray, labels2d: np.ndarray, alpha: float, lut: np.ndarray = _CLASS_LUT) -> np.ndarray:
    """Alpha-blend label colours over an RGB image where labels are nonzero.

    Args:
        rgb: ``(h, w, 3)`` float32, modified in place.
        labels2d: ``(h, w)`` integer codes indexing ``lut`` (0 = leave the pixel alone).
        alpha: opacity 0..1.
        lut: ``(n, 3)`` float32 colours per code.

    Returns:
        ``rgb``.
    """
    on = labels2d > 0
    if alpha > 0 and on.any():
        rgb[on] = (1.0 - alpha) * rgb[on] + alpha * lut[labels2d[on]]
    return rgb


def render_plane(
    gray: np.ndarray,
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    overlay: str = "none",
    opacity: float = 0.5,
    crosshair: tuple[int | None, int | None] | None = None,
    crosshair_color: tuple[int, int, int] = (255, 255, 255),
    crosshair_alpha: float = 0.5,
    heat: np.ndarray | None = None,
) -> np.ndarray:
    """Compose one displayed plane: grey image, overlay, crosshair lines.

    Args:
        gray: ``(h, w)`` uint8 windowed intensities.
        gt: ``(h, w)`` uint8 ground-truth labels 0..3, or None.
        pred: ``(h, w)`` uint8 predicted labels 0..3, or None.
        overlay: ``"none"``; ``"ground truth"`` or ``"prediction"`` (classes filled at ``opacity``);
            ``"both"`` (ground-truth outlines solid, prediction outlines dotted, in the class colours);
            ``"errors"`` (false positives, false negatives and wrong-class voxels filled in the error
            colours, see ``tumorlib.viz.colors.error_map``); ``"uncertainty"`` (``heat`` as a heat map,
            ``heat_blend``).
        opacity: overlay opacity 0..1 (outlines are drawn at ``max(opacity, 0.8)``, so they stay visible).
        crosshair: ``(row, col)`` of the horizontal and vertical lines, either may be None; None for none.
        crosshair_color: RGB of the lines.
        crosshair_alpha: opacity of the lines.
        heat: ``(h, w)`` values in [0, 1] (normalised entropy) for the ``"uncertainty"`` overlay, or None.

    Returns:
        ``(h, w, 3)`` uint8 RGB.

    Raises:
        ValueError: for an unknown overlay, or an overlay whose masks are missing.
    """
    from tumorlib.viz.colors import error_map

    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    if overlay == "none":
        pass
    elif overlay in ("ground truth", "prediction"):
        labels = gt if overlay == "ground truth" else pred
        if labels is None:
            raise ValueError(f"overlay {overlay!r} needs a {overlay} mask, none was given")
        blend(rgb, labels, opacity)
    elif overlay == "both":
        if gt is None or pred is None:
            raise ValueError("overlay 'both' needs a ground truth and a prediction")
        line_alpha = max(opacity, 0.8)
        blend(rgb, label_outline(gt), line_alpha)
        pred_line = label_outline(pred)
        h, w = pred_line.shape
        dots = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)
        blend(rgb, np.where(dots, pred_line, 0), line_alpha)
    elif overlay == "errors":
        if gt is None or pred is None:
            raise ValueError("overlay 'errors' needs a ground truth and a prediction")
        blend(rgb, error_map(gt, pred), opacity, _ERROR_LUT)
    elif overlay == "uncertainty":
        if heat is None:
            raise ValueError("overlay 'uncertainty' needs an uncertainty map, none was given")
        heat_blend(rgb, heat, opacity)
    else:
        raise ValueError(f"unknown overlay {overlay!r}; expected none, ground truth, prediction, both, errors "
                         "or uncertainty")
    out = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
    if crosshair is not None:
        draw_crosshair(out, crosshair[0], crosshair[1], crosshair_color, crosshair_alpha)
    return out


def draw_crosshair(
    rgb: np.ndarray,
    row: int | None,
    col: int | None,
    color: tuple[int, int, int] = (255, 255, 255),
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a horizontal line at ``row`` and a vertical line at ``col`` into an RGB image, in place.

    Args:
        rgb: ``(h, w, 3)`` uint8 image, modified in place.
        row: row of the horizontal line, or None (lines outside the image are skipped).
        col: column of the vertical line, or None.
        color: RGB of the lines.
        alpha: opacity of the lines 0..1.

    Returns:
        ``rgb``.
    """
    if alpha <= 0:
        return rgb
    c = np.asarray(color, dtype=np.float32) * alpha
    if row is not None and 0 <= row < rgb.shape[0]:
        rgb[row, :] = (rgb[row, :] * (1 - alpha) + c).astype(np.uint8)
    if col is not None and 0 <= col < rgb.shape[1]:
        rgb[:, col] = (rgb[:, col] * (1 - alpha) + c).astype(np.uint8)
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 image (Pillow, fast zlib level, lossless).

    Args:
        rgb: the image.

    Returns:
        The encoded PNG.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def nearest_index(n: int, out_n: int) -> np.ndarray:
    """Nearest-neighbour source indices that resample ``n`` samples to ``out_n`` (pixel centres aligned).

    Args:
        n: samples along the axis.
        out_n: samples wanted.

    Returns:
        ``out_n`` indices into ``range(n)``.
    """
    return np.minimum(n - 1, ((np.arange(out_n) + 0.5) * n / out_n).astype(np.intp))
