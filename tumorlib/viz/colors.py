"""One colour scheme for the three tumour classes, the error colours, and the helpers that paint them.

The class colours come from the Okabe-Ito palette, chosen to stay distinguishable with the common
colour-vision deficiencies and on a grey MRI background: necrosis vermillion, edema bluish green,
enhancing yellow. False positives are magenta, false negatives cyan, and voxels that are tumour in both
but of a different class are white.

Masks arrive in two forms, both accepted everywhere:

- class channels ``(3, ...)``: binary (probabilities are refused: only the run knows whether its outputs
  are classes or regions) in the order necrosis,
  edema, enhancing, as ``tumorlib.data.load_volume`` returns them;
- a label map ``(...)`` of integers 0 background, 1 necrosis, 2 edema, 3 enhancing (BraTS label 4 is
  read as enhancing too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorlib.core.brats import CLASS_NAMES, MODALITIES, channels_to_classes
from tumorlib.core.colors import CLASS_COLORS, rgb01

__all__ = [
    "overlay_legend_html",
    "CLASS_COLORS",
    "ERROR_COLORS",
    "ERROR_NAMES",
    "add_class_legend",
    "check_image",
    "class_legend_handles",
    "error_legend_handles",
    "error_map",
    "rgb01",
    "to_label_map",
    "to_numpy",
]


#: Names of the error categories drawn by the viewer's "errors" overlay, in ``error_map`` code order 1..3.
ERROR_NAMES: tuple[str, ...] = ("false positive", "false negative", "wrong class")

#: RGB in 0..255 per error category: magenta, cyan, white.
ERROR_COLORS: tuple[tuple[int, int, int], ...] = ((255, 0, 255), (0, 255, 255), (255, 255, 255))


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU first.

    Args:
        x: array-like or ``torch.Tensor``.

    Returns:
        ``np.ndarray`` view or copy of ``x``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as a ``(4, D, H, W)`` numpy array in ``MODALITIES`` order, else ValueError.

    Args:
        image: array-like or ``torch.Tensor``.
        name: what the error message calls it.

    Returns:
        The image as ``np.ndarray``.

    Raises:
        ValueError: not four channels of a 3D volume (names ``name`` and the shape).
    """
    arr = to_numpy(image)
    if arr.ndim != 4 or arr.shape[0] != len(MODALITIES):
        raise ValueError(f"{name} of shape {arr.shape}: expected (4, D, H, W) in T1, T1ce, T2, FLAIR order")
    return arr


def to_label_map(mask: Any, spatial_ndim: int | None = None) -> np.ndarray:
    """Turn a mask into a label map 0 background, 1 necrosis, 2 edema, 3 enhancing.

    Args:
        mask: class channels ``(3, *spatial)`` (binary or boolean; probabilities are refused: decode them with
            the run's rule, ``tumorlib.core.regions.Decoder``) or a label map ``(*spatial)`` with values in {0, 1, 2, 3} or BraTS labels {0, 1, 2, 4}.
        spatial_ndim: number of spatial axes expected (3 for a volume, 2 for a slice); ``None`` guesses:
            a leading axis of length 3 with 3 or more axes in total means class channels.

    Returns:
        ``(*spatial)`` uint8 label map; where binary channels overlap, enhancing wins over necrosis over edema.

    Raises:
        ValueError: if the shape or the label values cannot be read as a mask.
    """
    arr = to_numpy(mask)
    channels = arr.ndim >= 3 and arr.shape[0] == 3
    if spatial_ndim is not None:
        if arr.ndim == spatial_ndim + 1:
            channels = True
        elif arr.ndim == spatial_ndim:
            channels = False
        else:
            raise ValueError(
                f"mask of shape {arr.shape}: expected (3, {spatial_ndim} spatial axes) class channels "
                f"or a {spatial_ndim}-D label map"
            )
    if channels:
        if arr.shape[0] != 3:
            raise ValueError(f"mask of shape {arr.shape}: class channels must be 3 (necrosis, edema, enhancing)")
        if arr.dtype.kind == "f" and np.any((arr != 0) & (arr != 1)):
            raise ValueError(f"mask of shape {arr.shape} holds probabilities: decode them with the run's rule first "
                             "(tumorlib.core.regions.Decoder.of(config).channels(prob)); a figure never "
                             "guesses whether the outputs are classes or regions")
        return channels_to_classes(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"label map of shape {arr.shape} holds non-integer values")
    labels = arr.astype(np.int64, copy=False)
    bad = ~np.isin(labels, (0, 1, 2, 3, 4))
    if bad.any():
        raise ValueError(
            f"label map of shape {arr.shape} holds value {int(labels[bad].flat[0])}; "
            "expected 0 background, 1 necrosis, 2 edema, 3 or 4 enhancing"
        )
    out = labels.astype(np.uint8)
    out[out == 4] = 3
    return out


def error_map(gt_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Classify each voxel of a prediction against the ground truth.

    Args:
        gt_labels: ``(*spatial)`` label map of the ground truth (see ``to_label_map``).
        pred_labels: ``(*spatial)`` label map of the prediction, same shape.

    Returns:
        ``(*spatial)`` uint8: 0 correct (both background or same class), 1 false positive (tumour predicted
        on background), 2 false negative (tumour missed), 3 wrong class (tumour in both, classes differ).

    Raises:
        ValueError: if the shapes differ.
    """
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"ground truth {gt_labels.shape} and prediction {pred_labels.shape} differ in shape")
    out = np.zeros(gt_labels.shape, dtype=np.uint8)
    gt_on = gt_labels > 0
    pred_on = pred_labels > 0
    out[pred_on & ~gt_on] = 1
    out[gt_on & ~pred_on] = 2
    out[gt_on & pred_on & (gt_labels != pred_labels)] = 3
    return out



def class_legend_handles(alpha: float = 1.0) -> list[Any]:
    """Matplotlib legend handles for the three classes (filled patches in the class colours).

    Args:
        alpha: opacity of the patches.

    Returns:
        list of three ``matplotlib.patches.Patch``, necrosis, edema, enhancing.
    """
    from matplotlib.patches import Patch

    return [Patch(facecolor=rgb01(c), edgecolor="none", alpha=alpha, label=n) for n, c in zip(CLASS_NAMES, CLASS_COLORS)]


def error_legend_handles() -> list[Any]:
    """Matplotlib legend handles for the error categories of ``error_map`` (FP, FN, wrong class).

    Returns:
        list of three ``matplotlib.patches.Patch``.
    """
    from matplotlib.patches import Patch

    return [Patch(facecolor=rgb01(c), edgecolor="0.3", label=n) for n, c in zip(ERROR_NAMES, ERROR_COLORS)]


def add_class_legend(target: Any, errors: bool = False, loc: str | None = None, **kwargs: Any) -> Any:
    """Add the class legend (and optionally the error legend) to a figure or an axes.

    Args:
        target: ``matplotlib.figure.Figure`` (legend placed below the panels) or ``matplotlib.axes.Axes``.
        errors: also list the error colours (false positive, false negative, wrong class).
        loc: legend location; default ``"outside lower center"`` for a figure (below the panels, needs the
            figure's constrained layout, which all tumorlib figures use) and ``"best"`` for an axes.
        **kwargs: passed to ``legend``.

    Returns:
        the ``matplotlib.legend.Legend``.
    """
    handles = class_legend_handles() + (error_legend_handles() if errors else [])
    kwargs.setdefault("frameon", False)
    if hasattr(target, "add_subplot"):  # a Figure
        kwargs.setdefault("ncol", len(handles))
        if loc is None:
            loc = "outside lower center" if target.get_layout_engine() is not None else "lower center"
        return target.legend(handles=handles, loc=loc, **kwargs)
    return target.legend(handles=handles, loc=loc or "best", **kwargs)


def _swatch(rgb: Sequence[int], label: str, style: str = "") -> str:
    return (f'<span class="tumorlib-swatch" style="background: rgb({rgb[0]},{rgb[1]},{rgb[2]});{style}"></span>'
            f"{label}")


def overlay_legend_html(overlay: str) -> str:
    """The HTML legend of a viewer overlay: class colours, error colours or the uncertainty heat scale.

    Args:
        overlay: ``none``, ``ground truth``, ``prediction``, ``both``, ``errors`` or ``uncertainty``.

    Returns:
        HTML (empty for ``none``).
    """
    if overlay == "none":
        return ""
    if overlay == "errors":
        return "".join(_swatch(c, n) for n, c in zip(ERROR_NAMES, ERROR_COLORS))
    if overlay == "uncertainty":
        scale = ('<span class="tumorlib-swatch" style="width: 6em; background: linear-gradient(to right, '
                 'rgb(89,0,0), rgb(255,0,0), rgb(255,255,0), rgb(255,255,255));"></span>')
        return f"entropy 0 {scale} 1 (normalised; grey: certain)"
    legend = "".join(_swatch(c, n) for n, c in zip(CLASS_NAMES, CLASS_COLORS))
    if overlay == "both":
        legend += " &nbsp; (solid outline: ground truth, dotted outline: prediction)"
    return legend
