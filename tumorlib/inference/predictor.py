"""A trained run: loading its model, predicting whole volumes with it, and the notebooks' bootstrap.

A run folder is what ``tumorlib.training.loop.train`` writes: ``RUN/config.json``, ``RUN/splits.json`` and
``RUN/checkpoints/best_model.pth``. ``load_run`` gives its model and config; ``predict_volume`` runs the
sliding window over one normalised volume. ``ensure_run`` is what notebooks 05 and 06 start with: the
preset's run (trained first when missing, as 04_train trains it), its cache and its test split;
``predict_cached_volume`` predicts one cached volume of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tumorlib.core.config import Config, load_config, workspace
from tumorlib.training.engine import amp_dtype, autocast
from tumorlib.inference.sliding_window import sliding_window_inference

__all__ = ["RunContext", "ensure_run", "load_run", "make_predictor", "predict_cached_volume", "predict_volume"]

_MODEL_FIELDS = ("in_channels", "num_classes", "features")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available; use --device cpu")
    return device


def load_run(run_dir: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[torch.nn.Module, Config]:
    """The trained model of a run folder, in eval mode, and the run's config.

    Args:
        run_dir: a folder written by ``tumorlib.training.loop.train`` (``config.json`` and
            ``checkpoints/best_model.pth``).
        device: where to put the model; None: CUDA when available, else CPU.

    Returns:
        ``(model, config)`` with the config read from ``RUN/config.json``.

    Raises:
        FileNotFoundError: the folder, its config or its checkpoint is missing (names the path).
        ValueError: the checkpoint was trained with another model configuration than ``config.json``
            says, or its weights do not fit the model (names both files).
    """
    from tumorlib.nn.checkpoint import BEST_NAME, load_checkpoint
    from tumorlib.nn.unet import model_from_config

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train one with `tumorlib train`")
    config_path = run / "config.json"
    ckpt_path = run / "checkpoints" / BEST_NAME
    config = load_config(config_path)
    ckpt = load_checkpoint(ckpt_path)
    saved = ckpt.get("config") or {}
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint but {config.to_dict()[k]!r} in {config_path.name}"
             for k in _MODEL_FIELDS if k in saved and saved[k] != config.to_dict()[k]]
    if diffs:
        raise ValueError(f"{ckpt_path} does not match {config_path}: " + "; ".join(diffs))
    model = model_from_config(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise ValueError(f"{ckpt_path}: weights do not fit the model described by {config_path} "
                         f"({' '.join(first)})") from err
    return model.to(_device(device)).eval(), config


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
        (K, D, H, W) float32 probabilities on ``device`` (logits are blended, then the sigmoid).

    Raises:
        ValueError: the image does not have ``config.in_channels`` channels.
    """
    if image.shape[0] != config.in_channels:
        raise ValueError(f"image has {image.shape[0]} channels, the model expects {config.in_channels} "
                         f"(shape {tuple(image.shape)})")
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


@dataclass(frozen=True)
class RunContext:
    """What a notebook needs of a preset's trained run.

    Attributes:
        model: the trained network, in eval mode.
        config: the run's config (``RUN/config.json``).
        run_dir: the run folder.
        cache_dir: the cache it was trained on.
    """

    model: torch.nn.Module
    config: Config
    run_dir: Path
    cache_dir: Path

    def split(self, name: str = "test") -> list[int]:
        """The volume ids of one split of the run (``train``, ``val``, ``test`` or ``all``)."""
        from tumorlib.data.cache import cached_volume_ids
        from tumorlib.evaluation.evaluate import run_split

        return run_split(self.run_dir, self.config, cached_volume_ids(self.cache_dir), name)


def ensure_run(config: Config, device: str | torch.device | None = "cpu", progress: bool = False) -> RunContext:
    """The workspace's run of ``config``, trained first (as 04_train trains it) when it is missing.

    An unfinished run of the same config (``checkpoints/last.pth`` with fewer than ``config.epochs``), in
    the run folder or restored from a previous Kaggle session attached as input
    (``tumorlib.training.resume.prepare_resume``), is trained to its end first (within ``config.time_limit_h``).

    Args:
        config: the preset's config (its workspace names the run and cache folders).
        device: where to put the model.
        progress: progress bars and lines while training or building the cache.

    Returns:
        The ``RunContext``.

    Raises:
        FileNotFoundError, ValueError: see ``load_run``.
    """
    from tumorlib.nn.checkpoint import BEST_NAME
    from tumorlib.data.resolve import resolve_cache

    from tumorlib.training.resume import prepare_resume

    run_dir = workspace(config).run_dir
    check = prepare_resume(config, run_dir)  # restores a previous Kaggle session's run when one is attached
    if check.message:
        print(check.message, flush=True)
    if (check.resume and not check.finished) or not (run_dir / "checkpoints" / BEST_NAME).is_file():
        from tumorlib.training.loop import train

        if not check.resume:
            from tumorlib.core.sources import display_path

            print(f"no trained run in {display_path(run_dir)}: training one with the {config.preset!r} preset "
                  "(as 04_train does)")
        train(config, resume=check.resume, progress=progress)  # never replaces a run of another config
    model, run_config = load_run(run_dir, device=device)
    return RunContext(model, run_config, run_dir, resolve_cache(run_config, progress=progress))


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
