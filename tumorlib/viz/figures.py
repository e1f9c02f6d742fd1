"""Static matplotlib figures of the data for the notebooks: sample slice, class fractions, intensity
histograms, the cache crop (three views: ``tumorlib.viz.views``; results: ``tumorlib.viz.results``).

Every function returns a ``matplotlib.figure.Figure`` created without pyplot, so nothing accumulates in
pyplot's figure list and nothing opens a window: in a notebook, show it as the last expression of a cell
(or with ``IPython.display.display``), save it with ``fig.savefig(path)``. Colours come from
``tumorlib.viz.colors`` so each class looks the same in every figure and in the viewer.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from tumorlib.core.brats import CLASS_NAMES, MODALITIES
from tumorlib.viz.colors import CLASS_COLORS, add_class_legend, check_image, rgb01, to_label_map
from tumorlib.viz.notebook_figure import new_figure
from tumorlib.viz.orientation import direction_labels, volume_transform
from tumorlib.viz.render import brain_mask, intensity_window, render_plane, to_uint8

__all__ = [
    "class_fractions",
    "modality_index",
    "plot_cache_crop",
    "plot_class_fractions",
    "plot_intensity_histograms",
    "plot_sample_slice",
    "tumor_slice",
]

_CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "necrosis": ("necrosis", "ncr", "net", "necrotic", "ncr_net"),
    "edema": ("edema", "ed", "oedema"),
    "enhancing": ("enhancing", "et", "enhancing_tumor"),
}


def modality_index(modality: str | int) -> int:
    """Channel index of a modality name (case-insensitive: t1, t1ce, t2, flair) or pass an int through.

    Args:
        modality: name or channel index 0..3.

    Returns:
        channel index into ``image`` (4, D, H, W).

    Raises:
        ValueError: for an unknown name or an index outside 0..3.
    """
    if isinstance(modality, (int, np.integer)):
        if not 0 <= int(modality) < len(MODALITIES):
            raise ValueError(f"modality index {modality} outside 0..{len(MODALITIES) - 1}")
        return int(modality)
    names = [m.lower() for m in MODALITIES]
    key = str(modality).lower()
    if key not in names:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return names.index(key)


def tumor_slice(mask: Any, image: Any | None = None) -> int:
    """Axial slice with the most tumour voxels (any class).

    Args:
        mask: ``(3, D, H, W)`` class channels or ``(D, H, W)`` label map.
        image: optional ``(4, D, H, W)``; with no tumour, the slice with the most brain voxels is taken.

    Returns:
        slice index z; the middle slice when neither tumour nor image help.
    """
    labels = to_label_map(mask, spatial_ndim=3)
    counts = (labels > 0).sum(axis=(1, 2))
    if counts.max() > 0:
        return int(np.argmax(counts))
    if image is not None:
        brain = brain_mask(image).sum(axis=(1, 2))
        if brain.max() > 0:
            return int(np.argmax(brain))
    return labels.shape[0] // 2


def class_fractions(image: Any, mask: Any) -> dict[str, float]:
    """Fraction of brain voxels in each class.

    Args:
        image: ``(4, D, H, W)``; brain = nonzero in any channel.
        mask: ``(3, D, H, W)`` class channels or ``(D, H, W)`` label map.

    Returns:
        ``{"necrosis": f, "edema": f, "enhancing": f}``, fractions in 0..1 (0 for an empty brain).
    """
    brain = brain_mask(check_image(image))
    labels = to_label_map(mask, spatial_ndim=3)
    if labels.shape != brain.shape:
        raise ValueError(f"mask {labels.shape} and image {brain.shape} differ in spatial shape")
    n = int(brain.sum())
    return {
        name: (float(np.count_nonzero((labels == i + 1) & brain)) / n if n else 0.0)
        for i, name in enumerate(CLASS_NAMES)
    }


# ----------------------------------------------------------------------------------------------- 01


def plot_sample_slice(
    image: Any,
    mask: Any,
    slice_index: int | None = None,
    title: str | None = None,
    overlay_modality: str | int = "flair",
    opacity: float = 0.5,
    affine: Any | None = None,
) -> Any:
    """Four modalities, the three class masks and an overlay at one axial slice.

    Args:
        image: ``(4, D, H, W)`` in T1, T1ce, T2, FLAIR order.
        mask: ``(3, D, H, W)`` class channels (necrosis, edema, enhancing) or ``(D, H, W)`` label map.
        slice_index: axial slice z; default: the slice with the most tumour voxels (``tumor_slice``).
        title: figure title; default ``"axial slice z"``.
        overlay_modality: modality under the overlay panel.
        opacity: overlay opacity 0..1.
        affine: (4, 4) NIfTI affine of the volume's (H, W, D) array (``tumorlib.viz.orientation.kaggle_affine``
            for a Kaggle volume): the slice in radiological display (anterior up, the patient's left on the
            right) with the direction of each edge written on every panel; ``slice_index`` then counts along
            the axis the axial plane cuts. None: ``volume[:, z]`` as stored, no labels.

    Returns:
        ``matplotlib.figure.Figure`` with 2 x 4 panels: T1, T1ce, T2, FLAIR; necrosis, edema, enhancing,
        overlay; class legend underneath.

    Raises:
        ValueError: for mismatched shapes, a slice index outside the volume, or an affine with no display
            orientation.
    """
    img = check_image(image)
    labels = to_label_map(mask, spatial_ndim=3)
    if labels.shape != img.shape[1:]:
        raise ValueError(f"mask {labels.shape} and image {img.shape[1:]} differ in spatial shape")
    transform = volume_transform(affine, labels.shape)
    cut = transform.axis("axial")
    z = (tumor_slice(np.moveaxis(labels, cut, 0), np.moveaxis(img, cut + 1, 1)) if slice_index is None
         else int(slice_index))
    if not 0 <= z < labels.shape[cut]:
        raise ValueError(f"slice_index {z} outside 0..{labels.shape[cut] - 1}")
    fig = new_figure((12.0, 6.6))
    axes = fig.subplots(2, 4)
    plane = transform.plane(img, "axial", z)
    brain = brain_mask(plane)
    grays = [to_uint8(plane[c], intensity_window(img[c]), brain) for c in range(len(MODALITIES))]
    for c, name in enumerate(MODALITIES):
        axes[0, c].imshow(grays[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, c].set_title(name)
    lab = transform.plane(labels, "axial", z)
    for i, name in enumerate(CLASS_NAMES):
        rgb = np.zeros(lab.shape + (3,), dtype=np.uint8)
        rgb[lab == i + 1] = CLASS_COLORS[i]
        axes[1, i].imshow(rgb, interpolation="nearest")
        axes[1, i].set_title(f"{name} ({int(np.count_nonzero(lab == i + 1))} px)")
    m = modality_index(overlay_modality)
    axes[1, 3].imshow(render_plane(grays[m], gt=lab, overlay="ground truth", opacity=opacity), interpolation="nearest")
    axes[1, 3].set_title(f"overlay on {MODALITIES[m]}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if affine is not None:
            direction_labels(ax, transform, "axial")
    fig.suptitle(title if title is not None else f"axial slice {z}")
    add_class_legend(fig)
    return fig


def _class_columns(df: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for col in df.columns:
        tokens = [t for t in re.split(r"[^a-z0-9]+", str(col).lower()) if t]
        joined = "_".join(tokens)
        for name, aliases in _CLASS_ALIASES.items():
            if name in found:
                continue
            if joined in aliases or any(t in aliases for t in tokens):
                found[name] = col
                break
    return found


def plot_class_fractions(
    df: Any,
    title: str | None = "Class voxel fractions over brain voxels",
    reference: Mapping[str, float] | None = None,
    percent: bool | None = None,
) -> Any:
    """Bar chart of per-class voxel fractions (mean over volumes, std as error bar, one dot per volume).

    Args:
        df: ``pandas.DataFrame`` (or a mapping of columns) with one row per volume and one column per
            class; columns are found by name, case-insensitive, as a word of the column name:
            necrosis / ncr / net, edema / ed, enhancing / et (e.g. ``necrosis``, ``frac_ed``,
            ``et_fraction``). A single row gives plain bars.
        title: axes title, or None.
        reference: optional ``{class name: fraction}`` drawn as black ticks (e.g. the reference design's quoted
            ``{"necrosis": 0.03, "edema": 0.15, "enhancing": 0.01}``).
        percent: values are fractions (0..1) to show as percent (True) or already percent (False);
            default: fractions when no value exceeds 1.

    Returns:
        ``matplotlib.figure.Figure`` with one axes.

    Raises:
        ValueError: if no class column is found.
    """
    import pandas as pd

    frame = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
    cols = _class_columns(frame)
    if not cols:
        raise ValueError(
            f"no class columns among {list(frame.columns)}; expected names like necrosis/ncr, edema/ed, enhancing/et"
        )
    names = [n for n in CLASS_NAMES if n in cols]
    values = frame[[cols[n] for n in names]].astype(float).to_numpy()
    if percent is None:
        percent = bool(np.nanmax(values) <= 1.0) if values.size else True
    scale = 100.0 if percent else 1.0
    values = values * scale
    fig = new_figure((6.0, 4.0))
    ax = fig.subplots()
    x = np.arange(len(names))
    colors = [rgb01(CLASS_COLORS[CLASS_NAMES.index(n)]) for n in names]
    means = np.nanmean(values, axis=0)
    stds = np.nanstd(values, axis=0) if len(values) > 1 else None
    ax.bar(x, means, yerr=stds, color=colors, edgecolor="0.2", capsize=4, width=0.6, zorder=2)
    if len(values) > 1:
        rng = np.random.default_rng(0)
        for i in range(len(names)):
            jitter = rng.uniform(-0.15, 0.15, size=len(values))
            ax.scatter(x[i] + jitter, values[:, i], s=12, color="0.15", alpha=0.6, zorder=3, linewidths=0)
    if reference:
        for i, n in enumerate(names):
            if n in reference:
                ax.hlines(reference[n] * scale, x[i] - 0.35, x[i] + 0.35, colors="k", linestyles="--", zorder=4)
        ax.plot([], [], "k--", label="reference")
        ax.legend(frameon=False)
    for i in range(len(names)):
        ax.annotate(f"{means[i]:.2f}%", (x[i], means[i]), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, names)
    ax.set_ylabel("% of brain voxels")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title + (f" (n={len(values)})" if len(values) > 1 else ""))
    return fig


def plot_intensity_histograms(
    image_or_list: Any,
    bins: int = 100,
    labels: Sequence[str] | None = None,
    masks: Any | None = None,
    log: bool = False,
    title: str | None = "Intensity histograms over brain voxels",
) -> Any:
    """Per-modality intensity histograms over brain voxels (nonzero in any channel).

    Args:
        image_or_list: one ``(4, D, H, W)`` image or a sequence of them (one line per volume).
        bins: number of bins, shared by all volumes of a modality.
        labels: legend label per volume (shown for up to 10 volumes).
        masks: optional ``(3, D, H, W)`` mask (or a sequence matching the images): adds one line per tumour
            class (all volumes pooled) in the class colours, so the class contrasts show.
        log: logarithmic y axis.
        title: figure title, or None.

    Returns:
        ``matplotlib.figure.Figure`` with one panel per modality; y is a density, so volumes of different
        sizes compare.

    Raises:
        ValueError: for images of the wrong shape, or masks not matching the images.
    """
    if isinstance(image_or_list, (list, tuple)):
        images = [check_image(im, f"image {i}") for i, im in enumerate(image_or_list)]
    else:
        images = [check_image(image_or_list)]
    if not images:
        raise ValueError("no images given")
    mask_list: list[np.ndarray] | None = None
    if masks is not None:
        mask_list = [to_label_map(m, spatial_ndim=3) for m in (masks if isinstance(masks, (list, tuple)) else [masks])]
        if len(mask_list) != len(images):
            raise ValueError(f"{len(mask_list)} masks for {len(images)} images")
        for i, (im, m) in enumerate(zip(images, mask_list)):
            if m.shape != im.shape[1:]:
                raise ValueError(f"mask {i} {m.shape} and image {i} {im.shape[1:]} differ in spatial shape")
    brains = [brain_mask(im) for im in images]
    fig = new_figure((13.0, 3.4))
    axes = fig.subplots(1, len(MODALITIES))
    single = len(images) == 1
    for c, name in enumerate(MODALITIES):
        ax = axes[c]
        vals = [im[c][b] for im, b in zip(images, brains)]
        nonempty = [v for v in vals if v.size]
        if not nonempty:
            ax.set_title(f"{name} (no brain voxels)")
            continue
        lo = min(float(v.min()) for v in nonempty)
        hi = max(float(v.max()) for v in nonempty)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for i, v in enumerate(vals):
            if not v.size:
                continue
            label = labels[i] if labels is not None and i < len(labels) else ("brain" if single else None)
            ax.hist(v, bins=edges, density=True, histtype="step" if not single else "stepfilled",
                    color="0.35" if single else None, alpha=0.8 if single else 0.7, label=label, linewidth=1.0)
        if mask_list is not None:
            for k, cname in enumerate(CLASS_NAMES):
                cv = np.concatenate([im[c][m == k + 1] for im, m in zip(images, mask_list)])
                if cv.size:
                    ax.hist(cv, bins=edges, density=True, histtype="step", linewidth=1.6,
                            color=rgb01(CLASS_COLORS[k]), label=cname)
        if log:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("intensity")
        if c == 0:
            ax.set_ylabel("density")
    handles, hl = axes[0].get_legend_handles_labels()
    if handles and len(handles) <= 13:
        axes[0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title + ("" if single else f" ({len(images)} volumes)"))
    return fig


# ----------------------------------------------------------------------------------------------- 02


def plot_cache_crop(raw_image: Any, cached_image: Any, cached_mask: Any, entry: Mapping[str, Any],
                    volume_id: int | str, modality: str | int = "flair") -> Any:
    """One volume before and after caching: the stored slice with the crop box, the cached slice with
    the tumour outline, through the middle of the tumour.

    Args:
        raw_image: ``(4, D, H, W)`` as read from the HDF5 slices (``tumorlib.data.load_volume``).
        cached_image: ``(4, D', H', W')`` from the cache (``load_cached_volume``).
        cached_mask: ``(3, D', H', W')`` class channels from the cache.
        entry: the volume's cache index entry (``crop_box``, ``shape``, ``tumor_coords``).
        volume_id: the volume's id, for the title.
        modality: the channel shown (name or index).

    Returns:
        ``matplotlib.figure.Figure`` with two panels.
    """
    from matplotlib.patches import Rectangle

    m = modality_index(modality)
    z = int(np.median([c[0] for c in entry["tumor_coords"]]))  # a slice through the tumour (cache frame)
    (z0, _), (y0, y1), (x0, x1) = entry["crop_box"]
    fig = new_figure((9.0, 4.0))
    axes = fig.subplots(1, 2)
    axes[0].imshow(np.asarray(raw_image)[m, z0 + z], cmap="gray")
    axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="tab:orange", lw=2))
    axes[0].set_title(f"volume {volume_id}: HDF5 {MODALITIES[m]}, slice {z0 + z}, crop box")
    axes[1].imshow(np.asarray(cached_image)[m, z].astype(np.float32), cmap="gray")
    axes[1].contour(np.asarray(cached_mask)[:, z].any(axis=0), levels=[0.5], colors="tab:red", linewidths=1)
    axes[1].set_title(f"cache: z-scored, {entry['shape'][1]}x{entry['shape'][2]}, tumour outline")
    return fig
