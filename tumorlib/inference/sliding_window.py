"""Full-volume inference: sliding windows with Gaussian blending and flip test-time augmentation (the
conversion of sigmoid outputs to BraTS labels is ``tumorlib.core.regions.Decoder``).

``sliding_window_inference`` computes what MONAI's function of the same name computes with
``overlap=overlap, mode=blend, sigma_scale=0.125, padding_mode="constant", cval=0`` (the tests compare
the two):

- along each spatial axis, windows start every ``int(patch * (1 - overlap))`` voxels (at least 1) and
  the last window is flush with the end of the volume; an axis exactly as long as the patch has one
  window;
- an axis shorter than the patch is zero-padded (half before, the rest after) and cropped back;
- each window's prediction is weighted by the importance map and the sum is divided by the summed
  weights. ``"constant"``: all ones. ``"gaussian"``: per axis ``exp(-x**2 / (2 sigma**2))`` with ``x``
  measured from the patch centre ``(n - 1) / 2`` and ``sigma = 0.125 n``; the product over axes, not
  rescaled, clamped below at 1e-3 so the borders of the volume keep a non-zero weight.

Windows are cut on the image's device (put the image where the model is); the blended output and the
weight sum live on ``device`` (CPU keeps GPU memory bounded for big volumes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from tumorlib.data.patches import SPATIAL_FLIP_AXES

__all__ = [
    "FLIP_AXES",
    "importance_map",
    "mirrored_predictions",
    "sliding_window_inference",
    "window_starts",
    "with_flips",
]

#: The 8 combinations of flips of the spatial axes (2, 3, 4) of a (B, C, D, H, W) tensor, for TTA.
FLIP_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for r in range(len(SPATIAL_FLIP_AXES) + 1)
    for axes in itertools.combinations(tuple(a + 2 for a in SPATIAL_FLIP_AXES), r))

Predictor = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis.

    Args:
        size: length of the (padded) axis, >= ``patch``.
        patch: window length.
        overlap: fraction of a window shared with the next, in [0, 1).

    Returns:
        Starts ``0, step, 2 step, ...`` with ``step = max(int(patch * (1 - overlap)), 1)``, and a last
        start ``size - patch`` so the last window ends with the axis.

    Raises:
        ValueError: ``size < patch`` or ``overlap`` outside [0, 1).
    """
    if size < patch:
        raise ValueError(f"axis of length {size} is shorter than the window {patch}; pad it first")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    if size == patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    return list(range(0, size - patch, step)) + [size - patch]


def importance_map(patch_size: Sequence[int], blend: str = "gaussian",
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Per-voxel weight of a window's prediction.

    Args:
        patch_size: (d, h, w) window size.
        blend: ``"gaussian"`` (centre-weighted, sigma = 0.125 x side) or ``"constant"`` (all ones).
        device: where to create the map (default CPU).

    Returns:
        (d, h, w) float32 weights; the Gaussian is the product of the per-axis curves (peak 1, or just
        below 1 on even sides), clamped below at 1e-3.

    Raises:
        ValueError: an unknown ``blend``.
    """
    device = torch.device(device or "cpu")
    if blend == "constant":
        return torch.ones(tuple(patch_size), dtype=torch.float32, device=device)
    if blend != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    weights = None
    for axis, n in enumerate(patch_size):
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        sigma = 0.125 * n
        curve = torch.exp(x**2 / (-2 * sigma**2))
        shape = [1] * len(patch_size)
        shape[axis] = n
        curve = curve.reshape(shape)
        weights = curve if weights is None else weights * curve
    return weights.clamp_(min=1e-3)


def mirrored_predictions(predictor: Predictor, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The predictions of ``predictor`` on the 8 mirrorings of ``x``, each mirrored back.

    Args:
        predictor: maps a (B, C, D, H, W) tensor to (B, K, D, H, W) outputs.
        x: (B, C, D, H, W) input.

    Yields:
        (B, K, D, H, W) float32 outputs, one per entry of ``FLIP_AXES`` (the identity first), in the
        frame of ``x``: flip, predict, flip back.
    """
    for axes in FLIP_AXES:
        xi = torch.flip(x, axes) if axes else x
        yi = predictor(xi).float()
        yield torch.flip(yi, axes) if axes else yi


def with_flips(predictor: Predictor) -> Predictor:
    """A predictor that averages ``predictor`` over the 8 flips of the spatial axes.

    Args:
        predictor: maps a (B, C, D, H, W) tensor to (B, K, D, H, W) outputs.

    Returns:
        ``flipped(x)``: the mean of ``mirrored_predictions(predictor, x)``, float32.
    """

    def flipped(x: torch.Tensor) -> torch.Tensor:
        total = None
        for yi in mirrored_predictions(predictor, x):
            total = yi if total is None else total + yi
        return total / len(FLIP_AXES)

    return flipped


@torch.no_grad()
def _pad_to_window(image: torch.Tensor, patch_size: tuple[int, ...]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pad the axes shorter than the window: half before, the rest after (as MONAI); the pads per axis."""
    spatial = tuple(image.shape[2:])
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch_size)]
    if any(a or b for a, b in pads):
        image = F.pad(image, [v for a_b in reversed(pads) for v in a_b])
    return image, pads


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Predictor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    tta: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Predict a whole volume window by window and blend the overlapping predictions.

    Args:
        image: (B, C, D, H, W) input on the device the predictor runs on.
        predictor: maps a (N, C, d, h, w) batch of windows to (N, K, d, h, w) outputs (logits or
            probabilities; any float dtype, e.g. bf16 under autocast), with (d, h, w) = ``patch_size``.
        patch_size: (d, h, w) window size.
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
        blend: ``"gaussian"`` or ``"constant"`` (see ``importance_map``).
        batch_size: windows per predictor call.
        device: where the blended output is accumulated and returned (default: the image's device).
        tta: average each window's prediction over the 8 combinations of flips of (D, H, W).
        progress: show a tqdm bar over the predictor calls.

    Returns:
        (B, K, D, H, W) float32 blended predictions on ``device``.

    Raises:
        ValueError: ``image`` is not 5-D, ``patch_size`` does not have 3 sides, a bad ``overlap`` or
            ``blend``, or the predictor returns windows of another spatial size.
    """
    if image.ndim != 5:
        raise ValueError(f"image must be (B, C, D, H, W), got shape {tuple(image.shape)}")
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ValueError(f"patch_size must be 3 positive sides (d, h, w), got {patch_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else image.device
    sw_device = image.device
    if tta:
        predictor = with_flips(predictor)

    spatial = tuple(image.shape[2:])
    image, pads = _pad_to_window(image, patch_size)
    padded = tuple(image.shape[2:])

    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch_size)]
    windows = list(itertools.product(*starts))
    weight = importance_map(patch_size, blend, sw_device)
    weight_out = weight.to(device)
    # the summed weights depend on the window grid only: build them once
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    for z, y, x in windows:
        weight_sum[z:z + patch_size[0], y:y + patch_size[1], x:x + patch_size[2]] += weight_out

    n_batch = image.shape[0]
    jobs = [(b, w) for b in range(n_batch) for w in windows]
    output: torch.Tensor | None = None
    calls = range(0, len(jobs), batch_size)
    from tumorlib.core.progress import tqdm

    for first in tqdm(calls, desc="windows", disable=not progress, leave=False):
        chunk = jobs[first:first + batch_size]
        batch = torch.stack([image[b, :, z:z + patch_size[0], y:y + patch_size[1], x:x + patch_size[2]]
                             for b, (z, y, x) in chunk])
        pred = predictor(batch)
        if pred.ndim != 5 or pred.shape[0] != len(chunk) or tuple(pred.shape[2:]) != patch_size:
            raise ValueError(f"predictor returned shape {tuple(pred.shape)} for windows of shape "
                             f"{tuple(batch.shape)}; expected ({len(chunk)}, K, *{patch_size})")
        pred = (pred.float() * weight).to(device)
        if output is None:
            output = torch.zeros((n_batch, pred.shape[1], *padded), dtype=torch.float32, device=device)
        for p, (b, (z, y, x)) in zip(pred, chunk):
            output[b, :, z:z + patch_size[0], y:y + patch_size[1], x:x + patch_size[2]] += p
    assert output is not None
    output /= weight_sum
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))
    return output[(slice(None), slice(None), *crop)]
