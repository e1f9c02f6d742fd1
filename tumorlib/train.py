"""The training loop: AdamW, warmup + cosine, accumulation, AMP, clipping, checkpoints, history, DDP.

``train(config, data_dir, cache_dir, out_dir)`` builds the cache if needed, splits the volumes, trains a
``UNet3D`` on tumour-centred patches and validates every epoch. The run folder ``out_dir`` (``RUN``)::

    RUN/config.json                 the config (a run is reproduced from its folder)
    RUN/splits.json                 train / val / test volume ids
    RUN/history.csv                 one row per epoch (``HISTORY_COLUMNS``)
    RUN/checkpoints/last.pth        everything needed to resume, written atomically every epoch
    RUN/checkpoints/best_model.pth  the weights with the best validation mean Dice
    RUN/training_curves.png         loss, mean Dice, per-class Dice

Design choices from the seed: ``0.5 * weighted Dice + 0.5 * focal BCE`` (overlap and a dense per-voxel
signal), batch 2 with 2 accumulation steps (effective 4) because a 64x160x160 patch fills a GPU, a
linear warmup before the cosine decay, gradient clipping at 1.0. Mixed precision runs on CUDA only
(bf16 where the card supports it, else fp16 with a ``GradScaler``); the CPU trains in float32.

On the CPU a run killed at any point and resumed (``resume=True``) ends with the same history as an
uninterrupted one: patches are a function of (seed, epoch, index) and ``last.pth`` holds the model,
optimizer, scheduler, scaler and random states. Under ``torchrun`` the same function trains with
DistributedDataParallel; each rank draws distinct patches and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tumorlib.checkpoint import BEST_NAME, LAST_NAME, atomic_torch_save, get_rng_state, load_checkpoint, set_rng_state
from tumorlib.config import Config, workspace
from tumorlib.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    select_device,
)
from tumorlib.losses import loss_from_config
from tumorlib.model import count_parameters, model_from_config
from tumorlib.schedule import warmup_cosine_scheduler

__all__ = [
    "HISTORY_COLUMNS",
    "RESUME_IGNORED_FIELDS",
    "amp_dtype",
    "fit",
    "forward_backward",
    "make_datasets",
    "optimizer_step",
    "prepare_cache",
    "train",
    "validate",
]

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_dice_mean", "val_dice_ncr", "val_dice_ed",
                   "val_dice_et", "epoch_s", "patches_per_s"]
TIMING_COLUMNS = ["epoch_s", "patches_per_s"]
CLASS_KEYS = ("ncr", "ed", "et")

# Fields that may differ when resuming: they change speed or later stages, not the training itself.
RESUME_IGNORED_FIELDS = frozenset({
    "num_workers", "ram_cache_bytes", "cache_workers", "compile",
    "sw_overlap", "sw_batch_size", "sw_blend", "threshold",
})


# --------------------------------------------------------------------------- data

def prepare_cache(config: Config, data_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The ``.npy`` cache training reads, built first where needed.

    Args:
        config: the run's config (``cache_hw``, ``cache_margin``, ``cache_workers``).
        data_dir: a Kaggle-format folder; None: the workspace's data (``TUMORLIB_DATA`` or the embedded
            synthetic set, generated on first use).
        cache_dir: the cache folder; None: the workspace's (``TUMORLIB_CACHE`` or ``OUT/cache``). A folder
            that already holds a finished cache is used as it is when ``data_dir`` is None.
        progress: tqdm bars while building.

    Returns:
        The cache folder.

    Raises:
        CacheError: the folder holds a cache of other data or settings.
    """
    from tumorlib.data.cache import INDEX_NAME, build_cache, ensure_cache

    ws = workspace(config)
    if data_dir is None:
        if cache_dir is None:
            return Path(ensure_cache(config, ws, progress=progress))
        cache = Path(cache_dir).expanduser().resolve()
        if (cache / INDEX_NAME).is_file():
            return cache
        return Path(ensure_cache(config, dataclasses.replace(ws, cache_dir=cache), progress=progress))
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else ws.cache_dir
    return Path(build_cache(data_dir, cache, workers=config.cache_workers, cache_hw=config.cache_hw,
                            margin=config.cache_margin, progress=progress))


def make_datasets(config: Config, cache_dir: str | os.PathLike) -> tuple[Dataset, Dataset, dict[str, list[int]]]:
    """Training and validation patch datasets over the config's split of the cached volumes.

    Training draws ``samples_per_epoch`` patches an epoch (None: one per training volume); validation is
    a fixed set of ``val_samples`` patches (None: two per validation volume), without augmentation.

    Args:
        config: the run's config.
        cache_dir: a finished cache folder.

    Returns:
        ``(train_dataset, val_dataset, splits)`` with ``splits = {"train": [...], "val": [...], "test": [...]}``.
    """
    from tumorlib.data.cache import cached_volume_ids
    from tumorlib.data.dataset import BraTS3DDataset
    from tumorlib.data.splits import split_volumes

    ids = cached_volume_ids(cache_dir)
    train_ids, val_ids, test_ids = split_volumes(ids, config.val_fraction, config.test_fraction, config.split_seed)
    if not val_ids:
        raise ValueError(f"no validation volumes: val_fraction={config.val_fraction} of {len(ids)} volumes")
    common = dict(patch_size=config.patch_size, tumor_prob=config.tumor_prob, ram_cache_bytes=config.ram_cache_bytes)
    train_ds = BraTS3DDataset(cache_dir, train_ids, augment=config.augment, seed=config.seed,
                              samples_per_epoch=config.samples_per_epoch or len(train_ids), **common)
    val_ds = BraTS3DDataset(cache_dir, val_ids, augment=False, seed=config.seed + 10_007,
                            samples_per_epoch=config.val_samples or 2 * len(val_ids), **common)
    return train_ds, val_ds, {"train": train_ids, "val": val_ids, "test": test_ids}


def _loader(dataset: Dataset, config: Config, info: DistInfo, batch_size: int, pin: bool) -> DataLoader:
    from tumorlib.data.dataset import make_loader

    return make_loader(dataset, config, shuffle=False, batch_size=batch_size, rank=info.rank,
                       world_size=info.world_size, pin_memory=pin)


# --------------------------------------------------------------------------- pieces

def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA cards that support it, else fp16 on CUDA, None (float32) on the CPU.

    Args:
        device: the training device.
        enabled: ``config.amp``; False always gives None.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_backward(net: nn.Module, criterion: nn.Module, image: torch.Tensor, mask: torch.Tensor,
                     dtype: torch.dtype | None, scaler: torch.amp.GradScaler, scale: float = 1.0) -> torch.Tensor:
    """Forward under autocast, the loss in float32, backward of ``scale * loss`` (through the scaler).

    Args:
        net: the network (possibly wrapped by DDP or ``torch.compile``).
        criterion: the loss.
        image: (B, 4, pd, ph, pw) float32 on the device.
        mask: (B, 3, pd, ph, pw) float32 on the device.
        dtype: autocast dtype or None (float32).
        scaler: the ``GradScaler`` (a no-op when disabled).
        scale: loss multiplier, ``1 / micro-batches`` under accumulation.

    Returns:
        The unscaled loss (scalar, detached).
    """
    with _autocast(image.device, dtype):
        logits = net(image)
    loss = criterion(logits.float(), mask)
    scaler.scale(loss * scale).backward()
    return loss.detach()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None, grad_clip: float) -> float:
    """Clip the gradient norm (after unscaling), step the optimizer and the scheduler, zero the gradients.

    Args:
        model: the unwrapped model whose parameters are clipped.
        optimizer: the optimizer.
        scaler: the ``GradScaler`` (skips the step when fp16 gradients overflowed).
        scheduler: stepped once, or None.
        grad_clip: max gradient norm; 0 or less: no clipping.

    Returns:
        The learning rate this step used.
    """
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return lr


def _dice_from_counts(inter: torch.Tensor, psum: torch.Tensor, gsum: torch.Tensor) -> torch.Tensor:
    denom = psum + gsum
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device,
             dtype: torch.dtype | None = None, threshold: float = 0.5,
             info: DistInfo | None = None) -> dict[str, float]:
    """Loss and Dice on validation patches, pooled over all patches (and ranks).

    Dice per class is ``2 |P & G| / (|P| + |G|)`` with ``P = sigmoid(logits) > threshold``, counted over
    every validation voxel at once (1.0 when both are empty); whole tumour (WT) is the union of the three
    channels.

    Args:
        model: the network (switched to eval mode and back to train mode afterwards).
        loader: batches of (image (B, 4, pd, ph, pw), mask (B, 3, pd, ph, pw)).
        criterion: the training loss.
        device: where to compute.
        dtype: autocast dtype or None.
        threshold: probability threshold.
        info: DDP ranks to pool over; None: this process only.

    Returns:
        ``{"val_loss", "val_dice_mean", "val_dice_ncr", "val_dice_ed", "val_dice_et", "val_dice_wt"}``.
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    # loss sum, patches, then per class (3) and WT: intersection, predicted, ground truth
    sums = torch.zeros(2 + 3 * 4, dtype=torch.float64, device=device)
    for image, mask in loader:
        image = image.to(device, torch.float32, non_blocking=True)
        mask = mask.to(device, torch.float32, non_blocking=True)
        with _autocast(device, dtype):
            logits = model(image)
        logits = logits.float()
        sums[0] += criterion(logits, mask).double() * image.shape[0]
        sums[1] += image.shape[0]
        pred = (torch.sigmoid(logits) > threshold).float()
        pred = torch.cat([pred, pred.amax(1, keepdim=True)], 1)
        gt = torch.cat([mask, mask.amax(1, keepdim=True)], 1)
        dims = (0, 2, 3, 4)
        sums[2:6] += (pred * gt).sum(dims).double()
        sums[6:10] += pred.sum(dims).double()
        sums[10:14] += gt.sum(dims).double()
    all_reduce_sum(sums, info)
    model.train(was_training)
    dice = _dice_from_counts(sums[2:6], sums[6:10], sums[10:14]).tolist()
    out = {"val_loss": (sums[0] / sums[1].clamp_min(1)).item(), "val_dice_mean": sum(dice[:3]) / 3}
    out.update({f"val_dice_{k}": d for k, d in zip(CLASS_KEYS + ("wt",), dice)})
    return out


def _config_diff(saved: dict[str, Any], config: Config) -> list[str]:
    now = config.to_dict()
    keys = sorted((set(saved) | set(now)) - RESUME_IGNORED_FIELDS)
    return [f"{k}={saved.get(k)!r} in the checkpoint but {now.get(k)!r} now" for k in keys
            if saved.get(k) != now.get(k)]


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


# --------------------------------------------------------------------------- loop

def fit(config: Config, train_dataset: Dataset, val_dataset: Dataset, run_dir: str | os.PathLike, *,
        resume: bool = False, progress: bool = True, device: str | torch.device | None = None,
        info: DistInfo | None = None, stop_after_epoch: int | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> pd.DataFrame:
    """Train on given datasets and write the run folder (``train`` prepares the datasets and calls this).

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
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` on rank 0 after each epoch's files are written.

    Returns:
        The history (``HISTORY_COLUMNS``, one row per finished epoch, resumed epochs included).

    Raises:
        ValueError: resuming a run made with another config (names the differing fields).
        FloatingPointError: a non-finite training or validation loss; ``last.pth`` keeps the last good epoch.
    """
    from tqdm.auto import tqdm

    info = info or DistInfo()
    device = select_device(device, info.local_rank)
    run = Path(run_dir).expanduser().resolve()
    ckpt_dir = run / "checkpoints"
    last_path, best_path = ckpt_dir / LAST_NAME, ckpt_dir / BEST_NAME
    show = progress and info.is_main

    torch.manual_seed(config.seed)
    model = model_from_config(config).to(device)
    dtype = amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = loss_from_config(config)

    pin = device.type == "cuda"
    train_loader = _loader(train_dataset, config, info, config.batch_size, pin)
    val_loader = _loader(val_dataset, config, info, config.batch_size, pin)
    groups = _group_sizes(len(train_loader), config.accumulation_steps)
    steps_per_epoch = len(groups)
    scheduler = warmup_cosine_scheduler(optimizer, config.epochs * steps_per_epoch,
                                        min(config.warmup_epochs, config.epochs) * steps_per_epoch,
                                        config.min_lr_ratio)

    history: list[dict[str, float]] = []
    best_dice = -math.inf
    start_epoch = 0
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=device)
        diff = _config_diff(ckpt["config"], config)
        if diff:
            raise ValueError(f"cannot resume {last_path}: it was trained with another config ("
                             + "; ".join(diff) + "); use the same settings or another --out folder")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        history = [dict(r) for r in ckpt["history"]]
        best_dice = float(ckpt["best_dice"])
        start_epoch = int(ckpt["epoch"])
        if show:
            print(f"resuming {run} after epoch {start_epoch}/{config.epochs}", flush=True)
    elif resume and show:
        print(f"nothing to resume in {ckpt_dir}: starting a new run", flush=True)

    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        config.save(run / "config.json")
        if start_epoch == 0:
            for stale in (last_path, best_path, run / "history.csv", run / "training_curves.png"):
                stale.unlink(missing_ok=True)

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    if show:
        world = f" x {info.world_size} ranks" if info.enabled else ""
        print(f"training UNet3D {tuple(config.features)} ({count_parameters(model):,} parameters) on {device}{world}, "
              f"{'float32' if dtype is None else str(dtype).replace('torch.', '') + ' autocast'}; "
              f"{len(train_dataset)} patches {tuple(config.patch_size)} an epoch, batch {config.batch_size} x "
              f"{config.accumulation_steps} accumulation, {steps_per_epoch} optimizer steps an epoch", flush=True)

    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        train_dataset.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, patches
        group_index, in_group = 0, 0
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        lr_used = optimizer.param_groups[0]["lr"]
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not show)
        for image, mask in bar:
            image = image.to(device, torch.float32, non_blocking=True)
            mask = mask.to(device, torch.float32, non_blocking=True)
            size = groups[group_index]
            in_group += 1
            last_of_group = in_group == size
            sync = net.no_sync() if info.enabled and not last_of_group else contextlib.nullcontext()
            with sync:
                loss = forward_backward(net, criterion, image, mask, dtype, scaler, 1.0 / size)
            step_loss += loss.double() * image.shape[0]
            loss_sum[1] += image.shape[0]
            if not last_of_group:
                continue
            # one optimizer step: check the loss on every rank at once, so all ranks stop together
            check = all_reduce_sum(step_loss.clone().reshape(1), info)
            if not torch.isfinite(check).all():
                good = history[-1]["epoch"] if history else 0
                raise FloatingPointError(
                    f"non-finite training loss at epoch {epoch + 1}, optimizer step {group_index + 1}: the run "
                    f"stopped; {last_path} keeps the last good epoch ({good}). Lower --lr or turn off --amp")
            loss_sum[0] += step_loss
            step_loss.zero_()
            lr_used = optimizer_step(model, optimizer, scaler, scheduler, config.grad_clip)
            group_index += 1
            in_group = 0
            if show:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_used:.2e}")
        bar.close()
        all_reduce_sum(loss_sum, info)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - t0
        metrics = validate(net, val_loader, criterion, device, dtype, config.threshold, info)
        if not math.isfinite(metrics["val_loss"]):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}; {last_path} keeps the "
                                     "last good epoch")
        epoch_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": lr_used, "train_loss": (loss_sum[0] / loss_sum[1].clamp_min(1)).item(),
               **{k: metrics[k] for k in HISTORY_COLUMNS if k.startswith("val_")},
               "epoch_s": epoch_s, "patches_per_s": loss_sum[1].item() / max(train_s, 1e-9)}
        history.append(row)
        improved = row["val_dice_mean"] > best_dice
        if improved:
            best_dice = row["val_dice_mean"]
        if info.is_main:
            if improved:
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch + 1, "config": config.to_dict(),
                                   "metrics": dict(metrics)}, best_path)
            atomic_torch_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch + 1, "history": history, "best_dice": best_dice, "rng": get_rng_state(),
                "config": config.to_dict(), "metrics": dict(metrics),
            }, last_path)
            _write_history(history, run / "history.csv")
            if show:
                tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
                           f"dice {row['val_dice_mean']:.3f} (NCR {row['val_dice_ncr']:.3f} ED {row['val_dice_ed']:.3f} "
                           f"ET {row['val_dice_et']:.3f}, WT {metrics['val_dice_wt']:.3f})  lr {lr_used:.2e}  "
                           f"{epoch_s:.1f} s{'  *best' if improved else ''}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {**row, "val_dice_wt": metrics["val_dice_wt"]})
        barrier(info)

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    if info.is_main and history:
        _write_history(history, run / "history.csv")
        from tumorlib.viz import plot_training_curves

        plot_training_curves(frame, run / "training_curves.png")  # a pyplot-free Figure: nothing to close
    return frame


def train(config: Config, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True, *,
          device: str | torch.device | None = None, stop_after_epoch: int | None = None,
          on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> pd.DataFrame:
    """Train the config's ``UNet3D`` on the cached volumes and write the run folder.

    Launched by ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (NCCL on GPUs,
    gloo on CPU); rank 0 builds the cache and writes every file.

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

    Returns:
        The history as a DataFrame (``HISTORY_COLUMNS``).

    Raises:
        ValueError: resuming with another config; bad data (the reader's errors).
        FloatingPointError: a non-finite loss (the last good checkpoint is kept).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    info = init_distributed(dev)
    try:
        if info.is_main:
            cache = prepare_cache(config, data_dir, cache_dir, progress=progress)
        barrier(info)
        if not info.is_main:
            cache = prepare_cache(config, data_dir, cache_dir, progress=False)
        train_ds, val_ds, splits = make_datasets(config, cache)
        run = Path(out_dir).expanduser().resolve() if out_dir is not None else workspace(config).run_dir
        if info.is_main:
            run.mkdir(parents=True, exist_ok=True)
            (run / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
        return fit(config, train_ds, val_ds, run, resume=resume, progress=progress, device=dev, info=info,
                   stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end)
    finally:
        cleanup_distributed(info)
