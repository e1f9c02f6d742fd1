"""How fast ``ThreePlaneViewer`` redraws: one slider step on a phantom or a given volume.

The phantom comes from ``tumorlib.data.synthetic`` (the embedded dataset's generator), the viewer
from ``tumorlib.viz.viewer``. Run it as ``python -m tumorlib.benchmarks.viewer`` (``--help``: shape, steps,
overlay, and ``--affine kaggle`` for the radiological display of the BraTS2020 geometry).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

import numpy as np

from tumorlib.viz.render import PLANES
from tumorlib.viz.viewer import ThreePlaneViewer

__all__ = ["benchmark_viewer"]


def _benchmark_volume(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom of the embedded dataset, its ground truth and a prediction shifted by 3 voxels."""
    from tumorlib.data.synthetic import make_phantom

    image, mask = make_phantom(shape, seed=seed)
    return image, mask, np.roll(mask, 3, axis=-1)


def _benchmark_uncertainty(shape: Sequence[int], gt: Any | None) -> np.ndarray:
    """A smooth [0, 1] map, highest on the tumour's border (where a model is least sure)."""
    from scipy import ndimage

    tumour = np.zeros(tuple(shape), np.float32) if gt is None else (np.asarray(gt) != 0).reshape(
        (-1, *shape)).any(axis=0).astype(np.float32)
    smooth = ndimage.gaussian_filter(tumour, 2.0)
    return np.clip(4.0 * smooth * (1.0 - smooth), 0.0, 1.0).astype(np.float32)


def benchmark_viewer(
    shape: Sequence[int] = (155, 240, 240),
    steps: int = 20,
    overlay: str = "both",
    image: Any | None = None,
    gt: Any | None = None,
    pred: Any | None = None,
    seed: int = 0,
    quiet: bool = False,
    uncertainty: Any | None = None,
    affine: Any | None = None,
) -> dict[str, float]:
    """Time one slider step of ``ThreePlaneViewer`` (compose 3 panels + PNG encode + widget update).

    Each of the three sliders is moved ``steps`` times by one slice; the time of each redraw is taken from
    inside the widget callback, i.e. what the kernel spends per step (the browser's round trip is extra).

    Args:
        shape: ``(D, H, W)`` of the generated test volume (ignored when ``image`` is given).
        steps: steps per slider.
        overlay: overlay shown during the benchmark.
        image: optional ``(4, D, H, W)`` volume to use instead of the generated one.
        gt: optional ground truth for ``image``.
        pred: optional prediction for ``image``.
        seed: seed of the generated volume.
        quiet: do not print the result.
        uncertainty: optional ``(D, H, W)`` map in [0, 1] for ``overlay="uncertainty"``; None there: a
            smooth map around the ground-truth tumour's border (``_benchmark_uncertainty``).
        affine: the viewer's ``affine`` (radiological display); None: the planes as stored.

    Returns:
        ``{"axial_ms", "coronal_ms", "sagittal_ms"}`` median milliseconds per step, ``"mean_ms"`` over all
        steps, ``"max_ms"``, ``"first_render_ms"`` (construction with windowing) and ``"steps"``.
    """
    if image is None:
        image, gt, pred = _benchmark_volume(tuple(int(s) for s in shape), seed)  # type: ignore[arg-type]
    if overlay in ("both", "errors") and (gt is None or pred is None):
        overlay = "ground truth" if gt is not None else "none"
    if overlay == "uncertainty" and uncertainty is None:
        uncertainty = _benchmark_uncertainty(np.asarray(image).shape[1:], gt)
    start = time.perf_counter()
    viewer = ThreePlaneViewer(image, gt=gt, pred=pred, overlay=overlay, uncertainty=uncertainty, affine=affine)
    first = (time.perf_counter() - start) * 1000.0
    result: dict[str, float] = {"first_render_ms": first}
    all_ms: list[float] = []
    for plane, _ in PLANES:
        slider = viewer.sliders[plane]
        times = []
        for i in range(steps):
            target = slider.value + 1 if slider.value < slider.max else slider.min
            slider.value = target
            times.append(viewer.last_redraw_ms)
        result[f"{plane}_ms"] = float(np.median(times))
        all_ms += times
    result["mean_ms"] = float(np.mean(all_ms))
    result["max_ms"] = float(np.max(all_ms))
    result["steps"] = float(len(all_ms))
    if not quiet:
        shp = viewer.shape
        shown = "" if affine is None else ", radiological"
        print(f"ThreePlaneViewer redraw on {shp[0]}x{shp[1]}x{shp[2]} ({overlay}{shown}): "
              + ", ".join(f"{p} {result[f'{p}_ms']:.1f} ms" for p, _ in PLANES)
              + f"; mean {result['mean_ms']:.1f} ms, max {result['max_ms']:.1f} ms per step")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m tumorlib.benchmarks.viewer``: print the redraw time per slider step."""
    from tumorlib.viz.orientation import kaggle_affine
    from tumorlib.viz.viewer import OVERLAYS

    parser = argparse.ArgumentParser(prog="python -m tumorlib.benchmarks.viewer",
                                     description="Time one slider step of ThreePlaneViewer on a phantom.")
    parser.add_argument("--shape", type=int, nargs=3, default=(155, 240, 240), metavar=("D", "H", "W"),
                        help="phantom size (default 155 240 240)")
    parser.add_argument("--steps", type=int, default=20, help="steps per slider (default 20)")
    parser.add_argument("--overlay", default="both", choices=[v for _, v in OVERLAYS], help="default both")
    parser.add_argument("--affine", default="none", choices=("none", "kaggle"),
                        help="kaggle: radiological display of the BraTS2020 geometry; none: as stored (default)")
    args = parser.parse_args(argv)
    benchmark_viewer(tuple(args.shape), steps=args.steps, overlay=args.overlay,
                     affine=kaggle_affine() if args.affine == "kaggle" else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
