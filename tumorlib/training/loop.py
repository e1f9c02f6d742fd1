"""The training loop: AdamW, warmup + cosine, accumulation, AMP, clipping, checkpoints, history, DDP.

``train(config, data_dir, cache_dir, out_dir)`` builds the cache if needed, splits the volumes, trains a
``UNet3D`` on tumour-centred patches and validates every epoch. Fixed tumour-centred validation patches
overstate Dice, so with ``val_volume_every`` > 0 the model is selected on whole validation volumes
(sliding window, decoded labels, mean of WT/TC/ET Dice: ``tumorlib.evaluation.evaluate.volume_dice``, the numbers
``evaluate`` reports) at the first, every N-th and the last epoch; with 0 on the patches' mean Dice.
The run folder ``out_dir`` (``RUN``)::

    RUN/config.json                 the config (a run is reproduced from its folder)
    RUN/splits.json                 train / val / test volume ids
    RUN/history.csv                 one row per epoch (``HISTORY_COLUMNS``)
    RUN/checkpoints/last.pth        everything needed to resume, written atomically every epoch
    RUN/checkpoints/best_model.pth  the weights with the best selection score (``val_volume_dice`` or
                                    ``val_dice_mean``)
    RUN/training_curves.png         loss, mean Dice, per-class Dice

Design choices from the reference design: ``0.5 * weighted Dice + 0.5 * focal BCE`` (overlap and a dense per-voxel
signal), batch 2 with 2 accumulation steps (effective 4) because a 64x160x160 patch fills a GPU, a
linear warmup before the cosine decay, gradient clipping at 1.0. The step itself is
``tumorlib.training.engine.Trainer``; on a GPU it runs tumorlib's default (bf16 autocast where supported, else fp16
with a ``GradScaler``; ``torch.compile`` with a fallback to eager; cuDNN autotuning; the cache resident on
the GPU when it fits), each a config field with ``auto`` as default; the CPU trains in float32, eager.

On the CPU a run killed at any point and resumed (``resume=True``) ends with the same history as an
uninterrupted one: patches are a function of (seed, epoch, index) and ``last.pth`` holds the model,
optimizer, scheduler, scaler and random states. Under ``torchrun`` the same function trains with
DistributedDataParallel; each rank draws distinct patches and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tumorlib.nn.checkpoint import BEST_NAME, LAST_NAME, atomic_torch_save, get_rng_state, load_checkpoint, set_rng_state
from tumorlib.core.config import Config, resume_fields, runtime_fields, workspace
from tumorlib.data.resolve import make_datasets, resolve_cache
from tumorlib.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed, select_device
from tumorlib.training.engine import (
    TrainSettings,
    Trainer,
    amp_dtype,
    forward_backward,
    optimizer_step,
    resolve_settings,
    validate,
)
from tumorlib.nn.unet import count_parameters
from tumorlib.core.folders import discard_previous, move_aside
from tumorlib.core.safety import atomic_write, folder_lock

__all__ = [
    "HISTORY_COLUMNS",
    "RESUME_IGNORED_FIELDS",
    "RUN_FILES",
    "amp_dtype",
    "fit",
    "fits_time_limit",
    "forward_backward",
    "make_datasets",
    "optimizer_step",
    "resolved_config",
    "train",
    "validate",
]

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_dice_mean", "val_dice_ncr", "val_dice_ed",
                   "val_dice_et", "val_volume_dice", "epoch_s", "patches_per_s"]
TIMING_COLUMNS = ["epoch_s", "patches_per_s"]

#: Fields that may differ when resuming (marked runtime in ``Config``): speed or later stages only.
RESUME_IGNORED_FIELDS = runtime_fields()

#: What makes a finished run (relative to ``RUN``); a new run moves these aside, or refuses, first.
RESULT_FILES = (f"checkpoints/{BEST_NAME}", f"checkpoints/{LAST_NAME}", "history.csv", "training_curves.png")
#: Everything a new run replaces: the results plus the config and splits they belong to.
RUN_FILES = ("config.json", "splits.json", *RESULT_FILES)

# --------------------------------------------------------------------------- pieces

def _loader(dataset: Dataset, config: Config, info: DistInfo, batch_size: int, pin: bool) -> DataLoader:
    from tumorlib.data.dataset import make_loader

    return make_loader(dataset, config, shuffle=False, batch_size=batch_size, rank=info.rank,
                       world_size=info.world_size, pin_memory=pin)


def _train_batches(dataset: Dataset, config: Config, settings: TrainSettings, info: DistInfo,
                   device: torch.device) -> tuple[Any, Any]:
    """``(batches, epoch_setter)``: the DataLoader, or the GPU-resident sampler's loader (same patches)."""
    if settings.data != "device":
        return _loader(dataset, config, info, config.batch_size, settings.pin_memory), dataset
    from tumorlib.data.dataset import BraTS3DDataset
    from tumorlib.data.gpu_patches import DevicePatchSampler

    if not isinstance(dataset, BraTS3DDataset):
        raise ValueError(f"data_placement=device needs a BraTS3DDataset, got {type(dataset).__name__}")
    sampler = DevicePatchSampler(dataset.cache_dir, dataset.volume_ids, patch_size=dataset.patch_size,
                                 tumor_prob=dataset.tumor_prob, augment=dataset.augment, seed=dataset.seed,
                                 samples_per_epoch=dataset.samples_per_epoch, device=device,
                                 intensity_aug=dataset.intensity_aug, tumor_sampling=dataset.tumor_sampling)
    return sampler.loader(config.batch_size, rank=info.rank, world_size=info.world_size), sampler


def resolved_config(config: Config, settings: TrainSettings) -> Config:
    """``config`` with its ``auto`` speed fields replaced by what ``settings`` resolved them to."""
    def on(flag: bool) -> str:
        return "on" if flag else "off"

    return config.replace(amp_dtype=settings.amp_dtype or "float32",
                          compile=(settings.compile_mode or "default") if settings.compile else "off",
                          cudnn_benchmark=on(settings.cudnn_benchmark), data_placement=settings.data,
                          pin_memory=on(settings.pin_memory))


def _config_diff(saved: dict[str, Any], config: Config) -> list[str]:
    now = config.to_dict()
    keys = sorted(resume_fields() & set(saved))  # fields newer than the checkpoint are not compared
    return [f"{k}={saved.get(k)!r} in the checkpoint but {now.get(k)!r} now" for k in keys
            if saved.get(k) != now.get(k)]


def _prepare_run_folder(run: Path, config: Config, splits: dict[str, list[int]] | None, resumed: bool,
                        overwrite: bool) -> Path | None:
    """Check the run folder, move a finished run aside, then write ``config.json`` and ``splits.json``.

    Nothing is written before the checks pass. A resumed run must keep its volumes: a ``splits.json``
    that differs from ``splits`` is refused. A new run over a finished one moves ``RUN_FILES`` into
    ``RUN/previous-<time>/`` (a loadable run folder) with ``overwrite``, else refuses.

    Returns:
        The ``previous-*`` folder holding the earlier run, or None.

    Raises:
        ValueError: resuming with other splits (names the split and the volumes).
        FileExistsError: a finished run is there and neither ``resume`` nor ``overwrite`` was given.
    """
    prev = None
    saved_path = run / "splits.json"
    if resumed:
        if splits is not None and saved_path.is_file():
            saved = json.loads(saved_path.read_text())
            diff = [f"{k}: {sorted(set(saved.get(k, [])) ^ set(v))}" for k, v in splits.items()
                    if sorted(saved.get(k, [])) != sorted(v)]
            if diff:
                raise ValueError(f"cannot resume {run}: {saved_path.name} holds other volumes than the split of "
                                 f"this cache now (differing volumes {'; '.join(diff)}); resume with the same cache "
                                 f"and split settings, or start a new run in another --out folder")
    elif any((run / name).exists() for name in RESULT_FILES):
        prev = move_aside(run, RUN_FILES, overwrite=overwrite, what="training run")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write(run / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    if splits is not None:
        atomic_write(saved_path, json.dumps(splits, indent=1) + "\n")
    return prev


def _stop_reason(micro_batches: Any | None, history: list[dict[str, float]], last_path: Path,
                 prev: Path | None) -> str:
    """What a run stopped by a non-finite loss kept, and the likely cause (bad input or the settings)."""
    if history:
        kept = f"{last_path} keeps the last good epoch ({int(history[-1]['epoch'])})"
    elif prev is not None:
        kept = f"no epoch finished; the previous run is kept whole in {prev}"
    else:
        kept = "no epoch finished, so no checkpoint was written"
    if micro_batches is None:  # validation: its patches were not kept
        hint = "check the validation volumes for NaN, else lower --lr or train in float32 (--amp_dtype float32)"
    elif any(not bool(torch.isfinite(t).all()) for batch in micro_batches for t in batch[:2]):
        hint = "the input patches hold NaN or inf values: check the data and rebuild the cache"
    else:
        hint = "the inputs are finite: lower --lr or train in float32 (--amp_dtype float32)"
    return f"{kept}; {hint}"


@contextlib.contextmanager
def _explain_interrupt(last_path: Path, epochs: int, prev: Path | None) -> Iterator[None]:
    """On Ctrl-C / SIGTERM, attach ``kept`` to the exception: what the run folder holds and how to continue."""
    try:
        yield
    except KeyboardInterrupt as err:
        if last_path.is_file():
            with contextlib.suppress(Exception):
                done = int(torch.load(last_path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
                err.kept = (f"{last_path} keeps epoch {done}/{epochs}; rerun with --resume to continue from it")
        elif prev is not None and prev.exists():
            err.kept = (f"no epoch finished; the previous run is kept whole in {prev}; rerun the same command "
                        f"to start again")
        else:
            err.kept = "no epoch finished, nothing was saved; rerun the same command to start again"
        raise


def _volume_score(trainer: Trainer, config: Config, val_dataset: Dataset, epoch: int, device: torch.device) -> float:
    """Whole-volume validation score (``tumorlib.evaluation.evaluate.volume_dice``) on the epochs that select the model:
    the first, every ``val_volume_every``-th and the last; NaN on the others and when it is off. Every
    rank computes it (same weights, same number), so no rank waits on another."""
    every = config.val_volume_every
    if not every or not (epoch == 1 or epoch % every == 0 or epoch == config.epochs):
        return math.nan
    from tumorlib.evaluation.evaluate import volume_dice

    return volume_dice(trainer.model, config, val_dataset.cache_dir, val_dataset.volume_ids, device,
                       amp=trainer.dtype is not None)


def _write_history(rows: list[dict[str, float]], path: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return frame


def _group_sizes(n_micro: int, accumulation: int) -> list[int]:
    """Micro-batches in each optimizer step: full groups of ``accumulation``, then the remainder."""
    full, rest = divmod(n_micro, accumulation)
    return [accumulation] * full + ([rest] if rest else [])


def _groups(loader: Any, sizes: list[int]) -> Any:
    """The loader's micro-batches collected into the optimizer steps' groups."""
    group: list[Any] = []
    index = 0
    for batch in loader:
        group.append(batch)
        if len(group) == sizes[index]:
            yield group
            group, index = [], index + 1


def fits_time_limit(elapsed_s: float, epochs_done: int, limit_s: float) -> bool:
    """Whether one more epoch fits in the time limit, estimated from the mean epoch time so far.

    Args:
        elapsed_s: seconds since this call's first epoch started.
        epochs_done: epochs finished in those seconds (at least 1).
        limit_s: the limit in seconds; 0 or less: no limit.

    Returns:
        True when ``elapsed_s`` plus the mean epoch time stays within ``limit_s`` (or there is no limit).
    """
    if limit_s <= 0:
        return True
    return elapsed_s + elapsed_s / max(epochs_done, 1) <= limit_s


# --------------------------------------------------------------------------- loop

def fit(config: Config, train_dataset: Dataset, val_dataset: Dataset, run_dir: str | os.PathLike, *,
        resume: bool = False, progress: bool = True, device: str | torch.device | None = None,
        info: DistInfo | None = None, stop_after_epoch: int | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None, overwrite: bool = False,
        splits: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """Train on given datasets and write the run folder (``train`` prepares the datasets and calls this).

    The speed fields of ``config`` (``amp_dtype``, ``compile``, ``cudnn_benchmark``, ``data_placement``,
    ``pin_memory``) are resolved for the device first (``speed.resolve_settings``); ``config.json`` and
    the checkpoints record the resolved values.

    Args:
        config: the run's config (model, optimisation and schedule fields).
        train_dataset: yields (image (4, pd, ph, pw) float16/float32, mask (3, pd, ph, pw)); needs
            ``set_epoch(epoch)`` and returns a deterministic patch per (epoch, index).
        val_dataset: the fixed validation patches (its epoch stays 0).
        run_dir: the run folder (created).
        resume: continue from ``run_dir/checkpoints/last.pth`` when it exists (else start afresh).
        progress: tqdm bar and one line per epoch (rank 0 only).
        device: None: CUDA when available, else CPU.
        info: DDP ranks (from ``init_distributed``); None: one process.
        stop_after_epoch: stop after this epoch number (1-based) as if the run were killed there; the
            schedule still spans ``config.epochs``.
            ``config.time_limit_h`` stops the loop the same way after the last epoch that fits
            (``fits_time_limit``), with one line saying how to resume.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` on rank 0 after each epoch's files are written.
        overwrite: a new run (not resumed) over a finished one moves the old files into
            ``RUN/previous-<time>/`` and deletes them once the new run has its first ``best_model.pth``;
            False refuses.
        splits: the volume split, written as ``RUN/splits.json`` (a resumed run must have the same).

    Returns:
        The history (``HISTORY_COLUMNS``, one row per finished epoch, resumed epochs included).

    Raises:
        ValueError: resuming a run made with another config or split (names the differing fields).
        FileExistsError: ``run_dir`` holds a finished run and neither ``resume`` nor ``overwrite`` is set.
        FloatingPointError: a non-finite training or validation loss; ``last.pth`` keeps the last good epoch
            (the message says whether the input held NaN).
    """
    from tumorlib.core.progress import tqdm

    info = info or DistInfo()
    device = select_device(device, info.local_rank)
    run = Path(run_dir).expanduser().resolve()
    ckpt_dir = run / "checkpoints"
    last_path, best_path = ckpt_dir / LAST_NAME, ckpt_dir / BEST_NAME
    show = progress and info.is_main

    settings, _ = resolve_settings(config, device, getattr(train_dataset, "cache_dir", None),
                                   getattr(train_dataset, "volume_ids", None))
    config = resolved_config(config, settings)
    train_loader, epoch_source = _train_batches(train_dataset, config, settings, info, device)
    val_loader = _loader(val_dataset, config, info, config.batch_size, settings.pin_memory)
    groups = _group_sizes(len(train_loader), config.accumulation_steps)
    steps_per_epoch = len(groups)
    trainer = Trainer(config, settings, device, info=info, total_steps=config.epochs * steps_per_epoch,
                      warmup_steps=min(config.warmup_epochs, config.epochs) * steps_per_epoch)
    model = trainer.model

    history: list[dict[str, float]] = []
    best_dice = -math.inf
    start_epoch = 0
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=device)
        diff = _config_diff(ckpt["config"], config)
        if diff:
            raise ValueError(f"cannot resume {last_path}: it was trained with another config ("
                             + "; ".join(diff) + "); use the same settings or another --out folder")
        trainer.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        history = [dict(r) for r in ckpt["history"]]
        best_dice = float(ckpt["best_dice"])
        start_epoch = int(ckpt["epoch"])
        if show:
            print(f"resuming {run} after epoch {start_epoch}/{config.epochs}", flush=True)
    elif resume and show:
        print(f"nothing to resume in {ckpt_dir}: starting a new run", flush=True)

    prev = None
    if info.is_main:
        prev = _prepare_run_folder(run, config, splits, resumed=start_epoch > 0, overwrite=overwrite)

    if show:
        world = f" x {info.world_size} ranks" if info.enabled else ""
        print(f"training UNet3D {tuple(config.features)} ({count_parameters(model):,} parameters) on {device}{world}, "
              f"{settings.describe()}; "
              f"{len(train_dataset)} patches {tuple(config.patch_size)} an epoch, batch {config.batch_size} x "
              f"{config.accumulation_steps} accumulation, {steps_per_epoch} optimizer steps an epoch", flush=True)

    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    limit_s = (config.time_limit_h or 0) * 3600.0
    loop_start = time.perf_counter()
    epoch_bar = tqdm(total=last_epoch, initial=start_epoch, desc="training", unit="epoch", disable=not show)
    with trainer.backend_flags(), _explain_interrupt(last_path, config.epochs, prev):
        for epoch in range(start_epoch, last_epoch):
            t0 = time.perf_counter()
            epoch_source.set_epoch(epoch)
            model.train()
            loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, patches
            lr_used = trainer.optimizer.param_groups[0]["lr"]
            shown = t0
            for step_index, micro_batches in enumerate(_groups(train_loader, groups)):
                try:
                    step = trainer.train_step(micro_batches)
                except FloatingPointError as err:
                    raise FloatingPointError(f"{err} at epoch {epoch + 1}, optimizer step {step_index + 1}: the run "
                                             f"stopped; {_stop_reason(micro_batches, history, last_path, prev)}") from None
                loss_sum[0] += step.loss_sum
                loss_sum[1] += step.patches
                lr_used = step.lr
                if show and time.perf_counter() - shown > 1.0:  # one refresh a second at most
                    shown = time.perf_counter()
                    epoch_bar.set_postfix_str(f"epoch {epoch + 1} step {step_index + 1}/{steps_per_epoch} "
                                              f"loss {step.last_loss.item():.4f}")
            all_reduce_sum(loss_sum, info)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_s = time.perf_counter() - t0
            metrics = trainer.validation_step(val_loader)
            if not math.isfinite(metrics["val_loss"]):
                raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}; "
                                         f"{_stop_reason(None, history, last_path, prev)}")
            metrics["val_volume_dice"] = _volume_score(trainer, config, val_dataset, epoch + 1, device)
            epoch_s = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "lr": lr_used, "train_loss": (loss_sum[0] / loss_sum[1].clamp_min(1)).item(),
                   **{k: metrics[k] for k in HISTORY_COLUMNS if k.startswith("val_")},
                   "epoch_s": epoch_s, "patches_per_s": loss_sum[1].item() / max(train_s, 1e-9)}
            history.append(row)
            score = row["val_volume_dice"] if config.val_volume_every else row["val_dice_mean"]
            improved = math.isfinite(score) and score > best_dice
            if improved:
                best_dice = score
            if info.is_main:
                if improved:
                    atomic_torch_save({"model": model.state_dict(), "epoch": epoch + 1, "config": config.to_dict(),
                                       "metrics": dict(metrics)}, best_path)
                    discard_previous(prev)  # the new run has a model now: the one moved aside can go
                    prev = None
                trainer.save_checkpoint(last_path, epoch=epoch + 1, history=history, best_dice=best_dice,
                                        rng=get_rng_state(), config=config.to_dict(), metrics=dict(metrics))
                _write_history(history, run / "history.csv")
                if show:
                    tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs}  train {row['train_loss']:.4f}  "
                               f"val {row['val_loss']:.4f}  dice {row['val_dice_mean']:.3f} (NCR {row['val_dice_ncr']:.3f} "
                               f"ED {row['val_dice_ed']:.3f} ET {row['val_dice_et']:.3f}, WT {metrics['val_dice_wt']:.3f})"
                               + (f"  volumes {score:.3f}" if math.isfinite(row["val_volume_dice"]) else "")
                               + f"  lr {lr_used:.2e}  {epoch_s:.1f} s{'  *best' if improved else ''}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, {**row, "val_dice_wt": metrics["val_dice_wt"]})
            epoch_bar.set_postfix_str(f"loss {row['train_loss']:.4f} dice {row['val_dice_mean']:.3f} "
                                      f"best {best_dice:.3f}", refresh=False)
            epoch_bar.update(1)
            if limit_s > 0 and epoch + 1 < last_epoch:  # all ranks stop when one is late
                late = torch.tensor([0.0 if fits_time_limit(time.perf_counter() - loop_start, epoch + 1 - start_epoch,
                                                             limit_s) else 1.0], device=device)
                all_reduce_sum(late, info)
            else:
                late = torch.zeros(1)
            if late.item() > 0:
                if show:
                    tqdm.write(f"time limit of {config.time_limit_h:g} h: stopped after epoch {epoch + 1}/"
                               f"{config.epochs} (the next would not end in time); {last_path} is saved: run "
                               f"again with this run folder in place (or `tumorlib train --out {run} --resume`) "
                               "to continue")
                barrier(info)
                break
            barrier(info)
    epoch_bar.close()

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    if info.is_main and history:
        _write_history(history, run / "history.csv")
        from tumorlib.viz import plot_training_curves

        plot_training_curves(frame, run / "training_curves.png")  # a pyplot-free Figure: nothing to close
    return frame


def train(config: Config, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True, *,
          device: str | torch.device | None = None, stop_after_epoch: int | None = None,
          on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
          overwrite: bool = False) -> pd.DataFrame:
    """Train the config's ``UNet3D`` on the cached volumes and write the run folder.

    Launched by ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (NCCL on GPUs,
    gloo on CPU); rank 0 builds the cache and writes every file, holding the run folder's writer lock
    (``safety.folder_lock``) for the whole run.

    Args:
        config: the run's config.
        data_dir: Kaggle-format data; None: the workspace's (embedded synthetic set by default).
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        out_dir: the run folder ``RUN``; None: the workspace's ``run_dir``.
        resume: continue from ``RUN/checkpoints/last.pth`` (refused if the config differs).
        progress: tqdm bars and per-epoch lines.
        device: None: automatic (CUDA GPU ``LOCAL_RANK`` when available, else CPU).
        stop_after_epoch: stop after this epoch as if killed there (for tests and time-boxed sessions).
        on_epoch_end: ``on_epoch_end(epoch, row)`` after each epoch's files are written (rank 0).
        overwrite: start a new run over a finished one; its files wait in ``RUN/previous-<time>/`` until
            the new run has written its first ``best_model.pth`` (False: refuse).

    Returns:
        The history as a DataFrame (``HISTORY_COLUMNS``).

    Raises:
        ValueError: resuming with another config or split (nothing in ``RUN`` is changed); bad data.
        FileExistsError: ``RUN`` holds a finished run and neither ``resume`` nor ``overwrite`` is set.
        FolderBusyError: another training writes into ``RUN`` (names its PID).
        FloatingPointError: a non-finite loss (the last good checkpoint is kept).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    info = init_distributed(dev)
    try:
        if info.is_main:
            cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
        barrier(info)
        if not info.is_main:
            cache = resolve_cache(config, data_dir, cache_dir, progress=False)
        train_ds, val_ds, splits = make_datasets(config, cache)
        run = Path(out_dir).expanduser().resolve() if out_dir is not None else workspace(config).run_dir
        lock = folder_lock(run, "training run") if info.is_main else contextlib.nullcontext()
        with lock:
            return fit(config, train_ds, val_ds, run, resume=resume, progress=progress, device=dev, info=info,
                       stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end, overwrite=overwrite,
                       splits=splits)
    finally:
        cleanup_distributed(info)
