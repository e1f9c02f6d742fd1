"""A trained run: loading its model and predicting whole volumes with it.

A run folder is what ``tumorlib.training.loop.train`` writes: ``RUN/config.json``, ``RUN/splits.json`` and
``RUN/checkpoints/best_model.pth``. ``load_run`` gives its model and config; ``predict_volume`` runs the
sliding window over one normalised volume; ``predict_cached_volume`` predicts one cached volume. The
notebooks' bootstrap (``ensure_run``: the preset's run, trained first when missing) is
``tumorlib.app.workflows``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tumorlib.core.config import Config, load_config
from tumorlib.core.device import resolve_device
from tumorlib.nn.precision import amp_dtype, autocast
from tumorlib.inference.sliding_window import sliding_window_inference

__all__ = [
    "ENSEMBLE_FIELDS",
    "RunEnsemble",
    "load_runs","load_run", "make_predictor", "predict_cached_volume", "predict_volume"]

def load_run(run_dir: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[torch.nn.Module, Config]:
    """The trained model of a run folder, in eval mode, and the run's config.

    Args:
        run_dir: a folder written by ``tumorlib.training.loop.train`` (``config.json`` and
            ``checkpoints/best_model.pth``).
        device: where to put the model; None: CUDA when available, else CPU (``resolve_device``).

    Returns:
        ``(model, config)`` with the config read from ``RUN/config.json``.

    Raises:
        FileNotFoundError: the folder, its config or its checkpoint is missing (names the path).
        ValueError: the checkpoint was trained with another model configuration than ``config.json``
            says, or its weights do not fit the model (names both files).
    """
    from tumorlib.nn.checkpoint import BEST_NAME, load_model

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train one with `tumorlib train`")
    config_path = run / "config.json"
    config = load_config(config_path)
    return load_model(run / "checkpoints" / BEST_NAME, resolve_device(device), config=config,
                      config_path=config_path)


class RunEnsemble(torch.nn.Module):
    """Several runs' models whose probabilities ``predict_volume`` averages (``load_runs``)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)


#: Config fields the runs of an ensemble must share (the input they read and the outputs they give).
ENSEMBLE_FIELDS = ("kaggle_channel_order", "in_channels", "num_classes", "patch_size", "cache_hw", "cache_margin")


def load_runs(run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
              device: str | torch.device | None = "cpu") -> tuple[torch.nn.Module, Config]:
    """One run (``load_run``) or an ensemble of several whose probabilities are averaged.

    Args:
        run_dirs: a run folder or a list of them.
        device: as for ``load_run``.

    Returns:
        ``(model, config)``: for several runs a ``RunEnsemble`` and the first run's config (sliding
        window, threshold).

    Raises:
        ValueError: a run whose ``ENSEMBLE_FIELDS`` differ from the first run's (names it and the field).
        FileNotFoundError: see ``load_run``.
    """
    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if len(dirs) == 1:
        return load_run(dirs[0], device)
    loaded = [load_run(d, device) for d in dirs]
    first = loaded[0][1]
    for run, (_, config) in zip(dirs[1:], loaded[1:]):
        for name in ENSEMBLE_FIELDS:
            if getattr(config, name) != getattr(first, name):
                raise ValueError(f"run {run}: {name} {getattr(config, name)!r} differs from "
                                 f"{getattr(first, name)!r} of run {dirs[0]}; an ensemble needs runs that share "
                                 f"{', '.join(ENSEMBLE_FIELDS)}")
    return RunEnsemble([model for model, _ in loaded]).eval(), first


def make_predictor(model: torch.nn.Module, amp: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a model for ``sliding_window_inference``: no gradients, autocast on CUDA.

    Args:
        model: maps (N, C, d, h, w) to (N, K, d, h, w) logits.
        amp: run under bf16 autocast (fp16 where bf16 is unsupported) on CUDA; ignored on the CPU.

    Returns:
        ``predictor(x) -> logits`` as float32.
    """
    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(x.device, amp_dtype(x.device, amp)):
            return model(x).float()

    return predictor


def predict_volume(model: torch.nn.Module, image: np.ndarray | torch.Tensor, config: Config,
                   device: str | torch.device | None = None, tta: bool = False, amp: bool = True,
                   progress: bool = False) -> torch.Tensor:
    """Sigmoid probabilities of one whole (normalised) volume by sliding window.

    Args:
        model: the trained network (on ``device``).
        image: (C, D, H, W) normalised image (e.g. a cached volume, float16 or float32).
        config: the run's config (``patch_size``, ``sw_overlap``, ``sw_blend``, ``sw_batch_size``).
        device: where the windows run; None: the model's device.
        tta: average over the 8 flips of (D, H, W).
        amp: autocast on CUDA.
        progress: tqdm bar over the windows.

    Returns:
        (K, D, H, W) float32 probabilities on ``device`` (logits are blended, then the sigmoid; for an
        ensemble of runs from ``load_runs``, the mean of the members' probabilities).

    Raises:
        ValueError: the image does not have ``config.in_channels`` channels.
    """
    if image.shape[0] != config.in_channels:
        raise ValueError(f"image has {image.shape[0]} channels, the model expects {config.in_channels} "
                         f"(shape {tuple(image.shape)})")
    members = getattr(model, "members", None)  # an ensemble of runs (load_runs): the mean probability
    if members is not None:
        probs = [predict_volume(m, image, config, device, tta=tta, amp=amp, progress=progress) for m in members]
        return torch.stack(probs).mean(dim=0)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(image, torch.Tensor):
        x = image.to(dev, torch.float32)[None]
    else:  # a read-only memory map from the cache: copy it once, as float32
        x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(dev)
    logits = sliding_window_inference(x, make_predictor(model, amp), config.patch_size,
                                      overlap=config.sw_overlap, blend=config.sw_blend,
                                      batch_size=config.sw_batch_size, device=dev, tta=tta,
                                      progress=progress)
    return torch.sigmoid_(logits[0])


def predict_cached_volume(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike, volume_id: int,
                          device: str | torch.device | None = "cpu",
                          tta: bool = False) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
    """One cached volume, its ground truth and the model's prediction.

    Args:
        model: the trained network.
        config: the run's config (sliding-window settings, ``threshold``).
        cache_dir: the cache.
        volume_id: the volume.
        device: where the windows run.
        tta: average over the 8 flips.

    Returns:
        ``(image, gt, prob, pred)``: image (4, D, H, W) float32, gt (3, D, H, W) uint8, prob (3, D, H, W)
        float32 tensor of sigmoid probabilities, pred (3, D, H, W) uint8 disjoint class channels of the
        decoded labels (``tumorlib.core.brats.decode_to_channels`` at ``config.threshold``: what ``predict``
        writes and ``evaluate`` scores).
    """
    from tumorlib.core.brats import decode_to_channels
    from tumorlib.data.cache import load_cached_volume

    image, gt = load_cached_volume(cache_dir, volume_id)
    image = np.array(image, dtype=np.float32)  # copies out of the read-only memory map
    gt = np.array(gt)
    prob = predict_volume(model, image, config, device=device, tta=tta)
    pred = decode_to_channels(prob, config.threshold)
    return image, gt, prob, pred
