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
from tumorlib.core.folders import require_folder
from tumorlib.inference.engines import Engine, make_engine
from tumorlib.inference.postprocess import PostProcessing
from tumorlib.inference.sliding_window import sliding_window_inference

__all__ = ["ENSEMBLE_FIELDS", "RunEnsemble", "cache_frame_channels", "engine_record", "inference_engine",
           "inference_precision", "load_run", "load_runs", "make_predictor", "predict_cached_volume", "predict_volume",
           "run_checkpoint"]

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
    require_folder(run, "run folder", "train one with `tumorlib train`")
    config_path = run / "config.json"
    best = run / "checkpoints" / BEST_NAME
    if config_path.is_file() and not best.is_file():
        held = ", ".join(sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()
                                and not p.name.startswith(".") and "previous-" not in p.parts[len(run.parts)]))
        why = ": the run stopped before its first epoch finished" if "history.csv" not in held else ""
        waiting = sorted(run.glob(f"previous-*/checkpoints/{BEST_NAME}"))  # a --overwrite stopped early
        if waiting:
            raise FileNotFoundError(
                f"run folder {run} holds no trained model yet (a `train --overwrite` stopped before its first "
                f"best model{why.replace(': ', ', ')}); the earlier run's model waits in "
                f"{waiting[-1].parent.parent}: evaluate that with --run {waiting[-1].parent.parent}, or finish "
                f"the new run with `tumorlib train --out {run} "
                f"{'--resume' if (run / 'checkpoints' / 'last.pth').is_file() else '--overwrite'}` (which discards "
                "the earlier run once the new one has its first best model)")
        raise FileNotFoundError(f"run folder {run} holds no trained model: checkpoints/{BEST_NAME} is missing "
                                f"(it holds {held}{why}); train it with `tumorlib train --out {run}`")
    config = load_config(config_path)
    return load_model(best, resolve_device(device), config=config,
                      config_path=config_path)


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint ``load_run`` loads: ``RUN/checkpoints/best_model.pth``."""
    from tumorlib.nn.checkpoint import BEST_NAME

    return Path(run_dir).expanduser() / "checkpoints" / BEST_NAME


def inference_precision(config: Config | None, amp: bool = True, device: str | torch.device | None = None) -> str:
    """The precision a run predicts at: its ``amp_dtype``, the rule training follows (auto, float32, bfloat16,
    float16), so ``config.json``'s resolved value is what inference uses too.

    Args:
        config: the run's config (None: ``auto``).
        amp: False (``--no-amp``) or ``config.amp`` False: float32.
        device: where the windows run; ``float16`` (a run trained on an older GPU) means ``auto`` off CUDA.

    Returns:
        ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (for ``make_engine``).
    """
    if not amp or (config is not None and not config.amp):
        return "float32"
    asked = "auto" if config is None else config.amp_dtype
    if asked == "float16" and resolve_device(device).type != "cuda":
        return "auto"
    return asked


class RunEnsemble(torch.nn.Module):
    """Several runs' models whose probabilities ``predict_volume`` averages (``load_runs``)."""

    def __init__(self, members: Sequence[torch.nn.Module], checkpoints: Sequence[Path | None] = ()) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        #: each member's checkpoint (where an OpenVINO conversion of it is kept)
        self.checkpoints = list(checkpoints) or [None] * len(members)


#: Config fields the runs of an ensemble must share (the input they read and the outputs they give).
ENSEMBLE_FIELDS = ("kaggle_channel_order", "in_channels", "num_classes", "targets", "patch_size", "cache_hw",
                   "cache_margin", "split_seed", "val_fraction", "test_fraction")  # the last three: the same test set


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
    return RunEnsemble([model for model, _ in loaded], [run_checkpoint(d) for d in dirs]).eval(), first


def make_predictor(model: torch.nn.Module, amp: bool = True,
                   precision: str = "auto") -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a model for ``sliding_window_inference``: the torch engine on the model's device.

    Args:
        model: maps (N, C, d, h, w) to (N, K, d, h, w) logits.
        amp: False: float32.
        precision: ``auto``, ``float32``, ``bfloat16``, ``float16`` (``inference_precision``).

    Returns:
        ``predictor(x) -> logits`` as float32.
    """
    device = next(model.parameters()).device
    return make_engine(model, "torch", device, precision if amp else "float32")


def inference_engine(model: torch.nn.Module, config: Config, engine: str | Engine = "torch",
                     device: str | torch.device | None = None, amp: bool = True, precision: str | None = None,
                     checkpoint: str | os.PathLike | None = None) -> Engine:
    """The engine a run's windows go through (``tumorlib.inference.engines.make_engine``).

    Args:
        model: the trained network (on ``device``).
        config: the run's config (``patch_size``, ``sw_batch_size``, ``amp_dtype``).
        engine: ``"torch"``, ``"openvino"``, ``"auto"`` (OpenVINO on the CPU when installed), or an ``Engine``
            (returned as it is).
        device: where the windows run; None: the model's device.
        amp: False: float32.
        precision: None: ``inference_precision(config, amp, device)``.
        checkpoint: the checkpoint ``model`` came from (OpenVINO caches its conversion beside it).

    Returns:
        The ``Engine``; ``engine.name`` and ``engine.precision`` say what runs. For a ``RunEnsemble``, a tuple
        of engines, one per member (each converted beside its own checkpoint).
    """
    members = getattr(model, "members", None)
    if isinstance(engine, (Engine, tuple)):
        if members is not None and not (isinstance(engine, tuple) and len(engine) == len(members)):
            raise ValueError(f"an ensemble of {len(members)} runs needs one engine per run (a tuple from "
                             f"inference_engine), got {engine!r}")
        return engine
    if members is not None:
        return tuple(inference_engine(m, config, engine, device, amp, precision, c)
                     for m, c in zip(members, model.checkpoints))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    precision = precision if precision is not None else inference_precision(config, amp, dev)
    return make_engine(model, engine, dev, precision, config.patch_size, config.sw_batch_size,
                       checkpoint=checkpoint)


def engine_record(engine: Engine | tuple[Engine, ...]) -> dict[str, str]:
    """What ran, for the records beside a command's outputs: ``engine``, ``precision``, ``reason`` (an
    ensemble's members share the engine and precision asked; the first member's is recorded)."""
    first = engine[0] if isinstance(engine, tuple) else engine
    return {"engine": first.name, "precision": first.precision, "reason": first.reason}


def predict_volume(model: torch.nn.Module, image: np.ndarray | torch.Tensor, config: Config,
                   device: str | torch.device | None = None, tta: bool = False, amp: bool = True,
                   progress: bool = False, engine: str | Engine = "torch") -> torch.Tensor:
    """Sigmoid probabilities of one whole (normalised) volume by sliding window.

    Args:
        model: the trained network (on ``device``).
        image: (C, D, H, W) normalised image (e.g. a cached volume, float16 or float32).
        config: the run's config (``patch_size``, ``sw_overlap``, ``sw_blend``, ``sw_batch_size``).
        device: where the windows run; None: the model's device.
        tta: average over the 8 flips of (D, H, W).
        amp: autocast at the run's ``amp_dtype`` (``inference_precision``); False: float32.
        progress: tqdm bar over the windows.
        engine: ``"torch"``, ``"openvino"``, ``"auto"`` or an ``Engine`` built once for many volumes
            (``inference_engine``); the sliding window and flip TTA stay around it.

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
        engines = inference_engine(model, config, engine, device, amp)
        probs = [predict_volume(m, image, config, device, tta, amp, progress, e) for m, e in zip(members, engines)]
        return torch.stack(probs).mean(dim=0)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(image, torch.Tensor):
        x = image.to(dev, torch.float32)[None]
    else:  # a read-only memory map from the cache: copy it once, as float32
        x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(dev)
    predictor = inference_engine(model, config, engine, dev, amp)
    logits = sliding_window_inference(x, predictor, config.patch_size,
                                      overlap=config.sw_overlap, blend=config.sw_blend,
                                      batch_size=config.sw_batch_size, device=dev, tta=tta,
                                      progress=progress)
    return torch.sigmoid_(logits[0])


def predict_cached_volume(model: torch.nn.Module, config: Config, cache_dir: str | os.PathLike, volume_id: int,
                          device: str | torch.device | None = "cpu", tta: bool = False,
                          engine: str | Engine = "torch",
                          postprocessing: PostProcessing | None = None,
                          ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
    """One cached volume, its ground truth and the model's prediction.

    Args:
        model: the trained network.
        config: the run's config (sliding-window settings, ``threshold``).
        cache_dir: the cache.
        volume_id: the volume.
        device: where the windows run.
        tta: average over the 8 flips.
        engine: ``"torch"``, ``"openvino"``, ``"auto"`` or an ``Engine`` (see ``predict_volume``).
        postprocessing: the run's rule (``run_postprocessing``), applied at the cached volume's voxel size;
            None: the decoded labels as they are.

    Returns:
        ``(image, gt, prob, pred)``: image (4, D, H, W) float32, gt (3, D, H, W) uint8, prob (3, D, H, W)
        float32 tensor of sigmoid probabilities, pred (3, D, H, W) uint8 disjoint class channels of the
        decoded labels (``tumorlib.core.regions.Decoder`` with the run's ``targets`` at
        ``config.threshold``), post-processed by ``postprocessing``: with the run's rule, what ``predict``
        writes and ``evaluate`` scores.
    """
    from tumorlib.data.cache import load_cache_index, load_cached_volume

    index = load_cache_index(cache_dir)
    image, gt = load_cached_volume(cache_dir, volume_id, index=index, check=True)
    image = np.array(image, dtype=np.float32)  # copies out of the read-only memory map
    gt = np.array(gt)
    prob = predict_volume(model, image, config, device=device, tta=tta, engine=engine)
    return image, gt, prob, cache_frame_channels(prob, config, index, volume_id, postprocessing)


def cache_frame_channels(prob: torch.Tensor | np.ndarray, config: Config, index: dict, volume_id: int,
                         postprocessing: PostProcessing | None = None) -> np.ndarray:
    """A cached volume's probabilities decoded by the run's rule and post-processed at the cache's voxel size.

    Args:
        prob: (3, D, H, W) sigmoid probabilities in the cache's frame.
        config: the run's config (``targets``, ``threshold``).
        index: the cache index (the voxel size).
        volume_id: the volume.
        postprocessing: the run's rule; None: the decoded labels as they are.

    Returns:
        (3, D, H, W) uint8 disjoint class channels (``predict_cached_volume``'s ``pred``).
    """
    from tumorlib.core.brats import channels_to_labels, labels_to_channels
    from tumorlib.core.regions import Decoder
    from tumorlib.data.cache import cache_spacing

    pred = Decoder.of(config).channels(prob)
    if postprocessing is not None and postprocessing.active:
        labels = postprocessing.apply(channels_to_labels(pred), cache_spacing(index, volume_id))
        pred = labels_to_channels(labels)
    return pred
