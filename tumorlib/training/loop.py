"""The training loop: AdamW, warmup + cosine, accumulation, AMP, clipping, checkpoints, history, DDP.

``train(config, data_dir, cache_dir, out_dir)`` builds the cache if needed, splits the volumes, trains a
``UNet3D`` on tumour-centred patches and validates every epoch. Fixed tumour-centred validation patches
overstate Dice, so with ``val_volume_every`` > 0 the model is selected on whole validation volumes
(sliding window, decoded labels, mean of WT/TC/ET Dice: the numbers ``evaluate`` reports) at the first,
every N-th and the last epoch; with 0 on the patches' mean Dice. Training is handed that *validator*,
``validator(model, epoch) -> float``, by ``tumorlib.app.workflows.train`` (``tumorlib train``, the notebooks).
The run folder ``out_dir`` (``RUN``)::

    RUN/config.json                 the config (a run is reproduced from its folder)
    RUN/splits.json                 train / val / test volume ids
    RUN/history.csv                 one row per epoch (``HISTORY_COLUMNS``)
    RUN/checkpoints/last.pth        everything needed to resume, written atomically every epoch
    RUN/checkpoints/best_model.pth  the weights of the best ``val_volume_dice`` (or ``val_dice_mean``)
    RUN/training_curves.png         loss, mean Dice, per-class Dice

Design choices from the reference design: ``0.5 * weighted Dice + 0.5 * focal BCE`` (overlap and a dense per-voxel
signal), batch 2 with 2 accumulation steps (effective 4) because a 64x160x160 patch fills a GPU, a linear
warmup before the cosine decay, gradient clipping at 1.0. The step is ``tumorlib.training.engine.Trainer``; on
a GPU it runs tumorlib's default (bf16 autocast where supported, else fp16 with a ``GradScaler``;
``torch.compile`` with a fallback to eager; cuDNN autotuning; the cache resident on the GPU when it fits),
each a config field with ``auto`` as default; a CPU trains eager, in bf16 where it computes bf16 natively.

``fit`` runs ``TrainingLoop``, whose named steps follow nnU-Net's trainer: ``on_train_start`` (settings,
loaders, the ``Trainer``, resume, the run folder), then per epoch ``on_epoch_start``, ``train_epoch``
(one ``train_step`` per optimizer step), ``validation_epoch`` with ``on_validation_epoch_end`` (the
whole-volume score), ``on_epoch_end`` (best model, ``last.pth``, ``history.csv``, the time limit), and
``on_train_end`` (the last ``history.csv`` and ``training_curves.png``). The run folder's checks live in
``tumorlib.training.run_folder``, the history and its figure in ``tumorlib.training.history``.

On the CPU a run killed at any point and resumed (``resume=True``) ends with the same history as an
uninterrupted one: patches are a function of (seed, epoch, index) and ``last.pth`` holds the model,
optimizer, scheduler, scaler and random states. Under ``torchrun`` the same function trains with
DistributedDataParallel; each rank draws distinct patches and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from tumorlib.core.config import Config, runtime_fields, workspace
from tumorlib.core.safety import folder_lock
from tumorlib.data.resolve import make_datasets, resolve_cache
from tumorlib.nn.checkpoint import BEST_NAME, LAST_NAME, atomic_torch_save, get_rng_state, load_checkpoint, set_rng_state
from tumorlib.nn.unet import count_parameters
from tumorlib.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed, select_device
from tumorlib.training.engine import Trainer
from tumorlib.training.settings import resolve_settings, resolved_config
from tumorlib.training.epochs import fits_time_limit, group_sizes, make_loader, step_groups, train_batches
from tumorlib.training.history import HISTORY_COLUMNS, plot_training_curves, write_history
from tumorlib.training.validator import Validator, ValidatorFactory, check_validator
from tumorlib.training.run_folder import (check_resumable, config_diff, discard_previous_runs, explain_interrupt,
                                         prepare_run_folder, stop_reason)

__all__ = ["RESUME_IGNORED_FIELDS", "TrainingLoop", "fit", "train"]

#: Fields that may differ when resuming (marked runtime in ``Config``): speed or later stages only.
RESUME_IGNORED_FIELDS = runtime_fields()


# --------------------------------------------------------------------------- loop

class TrainingLoop:
    """One training run, step by named step (see the module docstring); ``run()`` returns the history.

    Args: see ``fit``.
    """

    def __init__(self, config: Config, train_dataset: Dataset, val_dataset: Dataset, run_dir: str | os.PathLike,
                 *, resume: bool = False, progress: bool = True, device: str | torch.device | None = None,
                 info: DistInfo | None = None, stop_after_epoch: int | None = None,
                 on_epoch_end: Callable[[int, dict[str, float]], None] | None = None, overwrite: bool = False,
                 splits: dict[str, list[int]] | None = None, validator: Validator | None = None) -> None:
        check_validator(config, validator)
        self.config, self.train_dataset, self.val_dataset = config, train_dataset, val_dataset
        self.resume, self.overwrite, self.splits, self.validator = resume, overwrite, splits, validator
        self.user_epoch_end = on_epoch_end
        self.info = info or DistInfo()
        self.device = select_device(device, self.info.local_rank)
        self.run_dir = Path(run_dir).expanduser().resolve()
        ckpt_dir = self.run_dir / "checkpoints"
        self.last_path, self.best_path = ckpt_dir / LAST_NAME, ckpt_dir / BEST_NAME
        self.show = progress and self.info.is_main
        self.stop_after_epoch = stop_after_epoch
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf
        self.start_epoch = 0
        self.prev: Path | None = None

    # ----------------------------------------------------------------- start

    def on_train_start(self) -> None:
        """Resolve the speed settings, build loaders and ``Trainer``, resume, then prepare the run folder."""
        from tumorlib.core.progress import tqdm

        config, info, device = self.config, self.info, self.device
        self.settings, _ = resolve_settings(config, device, getattr(self.train_dataset, "cache_dir", None),
                                            getattr(self.train_dataset, "volume_ids", None))
        self.config = config = resolved_config(config, self.settings)
        self.train_loader, self.epoch_source = train_batches(self.train_dataset, config, self.settings, info, device)
        self.val_loader = make_loader(self.val_dataset, config, info, config.batch_size, self.settings.pin_memory)
        self.groups = group_sizes(len(self.train_loader), config.accumulation_steps)
        self.steps_per_epoch = len(self.groups)
        self.trainer = Trainer(config, self.settings, device, info=info,
                               total_steps=config.epochs * self.steps_per_epoch,
                               warmup_steps=min(config.warmup_epochs, config.epochs) * self.steps_per_epoch)
        self.model = self.trainer.model
        self._load_last()
        if info.is_main:
            self.prev = prepare_run_folder(self.run_dir, config, self.splits, resumed=self.start_epoch > 0,
                                           overwrite=self.overwrite, show=self.show)
        if self.show:
            world = f" x {info.world_size} ranks" if info.enabled else ""
            print(f"training UNet3D {tuple(config.features)} ({count_parameters(self.model):,} parameters) on "
                  f"{device}{world}, {self.settings.describe()}; {len(self.train_dataset)} patches "
                  f"{tuple(config.patch_size)} an epoch, batch {config.batch_size} x {config.accumulation_steps} "
                  f"accumulation, {self.steps_per_epoch} optimizer steps an epoch", flush=True)
        self.last_epoch = (config.epochs if self.stop_after_epoch is None
                           else min(config.epochs, self.stop_after_epoch))
        self.limit_s = (config.time_limit_h or 0) * 3600.0
        self.loop_start = time.perf_counter()
        self.bar = tqdm(total=self.last_epoch, initial=self.start_epoch, desc="training", unit="epoch",
                        disable=not self.show)

    def _load_last(self) -> None:
        """Continue from ``last.pth`` when resuming (refused when its config differs)."""
        if self.resume and self.last_path.is_file():
            ckpt = load_checkpoint(self.last_path, map_location=self.device)
            diff = config_diff(ckpt["config"], self.config)
            if diff:
                raise ValueError(f"cannot resume {self.last_path}: it was trained with another config ("
                                 + "; ".join(diff) + "); use the same settings or another --out folder")
            self.trainer.load_state_dict(ckpt)
            set_rng_state(ckpt["rng"])
            self.history = [dict(r) for r in ckpt["history"]]
            self.best_score = float(ckpt["best_dice"])
            self.start_epoch = int(ckpt["epoch"])
            if self.show:
                print(f"resuming {self.run_dir} after epoch {self.start_epoch}/{self.config.epochs}", flush=True)
        elif self.resume:  # a folder holding a run without last.pth is refused, an empty one started
            check_resumable(self.run_dir, self.last_path, self.show)

    # ----------------------------------------------------------------- one epoch

    def on_epoch_start(self, epoch: int) -> None:
        """Draw the epoch's patches (``set_epoch``), put the model in train mode, start the clock."""
        self.epoch_t0 = time.perf_counter()
        self.epoch_source.set_epoch(epoch)
        self.model.train()

    def train_step(self, epoch: int, step_index: int, micro_batches: list[Any]) -> Any:
        """One optimizer step; a non-finite loss stops the run, saying what the run folder kept."""
        try:
            return self.trainer.train_step(micro_batches)
        except FloatingPointError as err:
            raise FloatingPointError(
                f"{err} at epoch {epoch + 1}, optimizer step {step_index + 1}: the run stopped; "
                f"{stop_reason(micro_batches, self.history, self.last_path, self.prev)}") from None

    def train_epoch(self, epoch: int) -> tuple[float, float, float, float]:
        """All optimizer steps of one epoch.

        Returns:
            ``(mean training loss, patches, learning rate used, seconds)`` summed over the ranks.
        """
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, patches
        lr_used = self.trainer.optimizer.param_groups[0]["lr"]
        shown = self.epoch_t0
        for step_index, micro_batches in enumerate(step_groups(self.train_loader, self.groups)):
            step = self.train_step(epoch, step_index, micro_batches)
            loss_sum[0] += step.loss_sum
            loss_sum[1] += step.patches
            lr_used = step.lr
            if self.show and time.perf_counter() - shown > 1.0:  # one refresh a second at most
                shown = time.perf_counter()
                self.bar.set_postfix_str(f"epoch {epoch + 1} step {step_index + 1}/{self.steps_per_epoch} "
                                         f"loss {step.last_loss.item():.4f}")
        all_reduce_sum(loss_sum, self.info)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_s = time.perf_counter() - self.epoch_t0
        return (loss_sum[0] / loss_sum[1].clamp_min(1)).item(), loss_sum[1].item(), lr_used, train_s

    def validation_epoch(self, epoch: int) -> dict[str, float]:
        """Loss and Dice on the validation patches, then ``on_validation_epoch_end``."""
        metrics = self.trainer.validation_step(self.val_loader)
        if not math.isfinite(metrics["val_loss"]):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}; "
                                     f"{stop_reason(None, self.history, self.last_path, self.prev)}")
        self.on_validation_epoch_end(epoch, metrics)
        return metrics

    def on_validation_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Add ``val_volume_dice``: the validator's whole-volume score on the epochs that select the model
        (the first, every ``val_volume_every``-th and the last; NaN on the others and when it is off).
        Every rank computes it (same weights, same number), so no rank waits on another."""
        every, number = self.config.val_volume_every, epoch + 1
        chosen = every and (number == 1 or number % every == 0 or number == self.config.epochs)
        metrics["val_volume_dice"] = float(self.validator(self.model, number)) if chosen else math.nan

    def on_epoch_end(self, epoch: int, row: dict[str, float], metrics: dict[str, float]) -> bool:
        """Keep the best model, write ``last.pth`` and ``history.csv``, report; True when time runs out."""
        from tumorlib.core.progress import tqdm

        config = self.config
        self.history.append(row)
        score = row["val_volume_dice"] if config.val_volume_every else row["val_dice_mean"]
        improved = math.isfinite(score) and score > self.best_score
        if improved:
            self.best_score = score
        if self.info.is_main:
            self._save(epoch, metrics, improved)
            if self.show:
                tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs}  train {row['train_loss']:.4f}  "
                           f"val {row['val_loss']:.4f}  dice {row['val_dice_mean']:.3f} (NCR {row['val_dice_ncr']:.3f} "
                           f"ED {row['val_dice_ed']:.3f} ET {row['val_dice_et']:.3f}, WT {metrics['val_dice_wt']:.3f})"
                           + (f"  volumes {score:.3f}" if math.isfinite(row["val_volume_dice"]) else "")
                           + f"  lr {row['lr']:.2e}  {row['epoch_s']:.1f} s{'  *best' if improved else ''}")
            if self.user_epoch_end is not None:
                self.user_epoch_end(epoch + 1, {**row, "val_dice_wt": metrics["val_dice_wt"]})
        self.bar.set_postfix_str(f"loss {row['train_loss']:.4f} dice {row['val_dice_mean']:.3f} "
                                 f"best {self.best_score:.3f}", refresh=False)
        self.bar.update(1)
        return self._out_of_time(epoch)

    def _save(self, epoch: int, metrics: dict[str, float], improved: bool) -> None:
        config = self.config
        if improved:
            atomic_torch_save({"model": self.model.state_dict(), "epoch": epoch + 1, "config": config.to_dict(),
                               "metrics": dict(metrics)}, self.best_path)
            discard_previous_runs(self.run_dir)  # the new run has a model now: the runs moved aside can go
            self.prev = None
        self.trainer.save_checkpoint(self.last_path, epoch=epoch + 1, history=self.history,
                                     best_dice=self.best_score, rng=get_rng_state(), config=config.to_dict(),
                                     metrics=dict(metrics))
        write_history(self.history, self.run_dir / "history.csv")

    def _out_of_time(self, epoch: int) -> bool:
        """Whether the next epoch would pass ``time_limit_h`` (all ranks stop when one is late)."""
        from tumorlib.core.progress import tqdm

        if self.limit_s > 0 and epoch + 1 < self.last_epoch:
            fits = fits_time_limit(time.perf_counter() - self.loop_start, epoch + 1 - self.start_epoch, self.limit_s)
            late = torch.tensor([0.0 if fits else 1.0], device=self.device)
            all_reduce_sum(late, self.info)
        else:
            late = torch.zeros(1)
        if late.item() > 0 and self.show:
            tqdm.write(f"time limit of {self.config.time_limit_h:g} h: stopped after epoch {epoch + 1}/"
                       f"{self.config.epochs} (the next would not end in time); {self.last_path} is saved: run "
                       f"again with this run folder in place (or `tumorlib train --out {self.run_dir} --resume`) "
                       "to continue")
        barrier(self.info)
        return late.item() > 0

    # ----------------------------------------------------------------- end

    def on_train_end(self) -> pd.DataFrame:
        """Close the bar; rank 0 writes the last ``history.csv`` and ``training_curves.png``."""
        self.bar.close()
        frame = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        if self.info.is_main and self.history:
            write_history(self.history, self.run_dir / "history.csv")
            plot_training_curves(frame, self.run_dir / "training_curves.png")  # pyplot-free: nothing to close
        return frame

    def run(self) -> pd.DataFrame:
        """The whole run: ``on_train_start``, the epochs, ``on_train_end``.

        Returns:
            The history (``HISTORY_COLUMNS``).
        """
        self.on_train_start()
        with self.trainer.backend_flags(), explain_interrupt(self.last_path, self.config.epochs, self.prev):
            for epoch in range(self.start_epoch, self.last_epoch):
                self.on_epoch_start(epoch)
                skipped = self.trainer.skipped_steps
                train_loss, patches, lr_used, train_s = self.train_epoch(epoch)
                metrics = self.validation_epoch(epoch)
                epoch_s = time.perf_counter() - self.epoch_t0
                row = {"epoch": epoch + 1, "lr": lr_used, "train_loss": train_loss,
                       **{k: metrics[k] for k in HISTORY_COLUMNS if k.startswith("val_")},
                       "epoch_s": epoch_s, "patches_per_s": patches / max(train_s, 1e-9),
                       "skipped_steps": self.trainer.skipped_steps - skipped}
                if self.on_epoch_end(epoch, row, metrics):
                    break
        return self.on_train_end()


def fit(config: Config, train_dataset: Dataset, val_dataset: Dataset, run_dir: str | os.PathLike, *,
        resume: bool = False, progress: bool = True, device: str | torch.device | None = None,
        info: DistInfo | None = None, stop_after_epoch: int | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None, overwrite: bool = False,
        splits: dict[str, list[int]] | None = None, validator: Validator | None = None) -> pd.DataFrame:
    """Train on given datasets and write the run folder (``train`` prepares the datasets and calls this).

    The speed fields of ``config`` (``amp_dtype``, ``compile``, ``cudnn_benchmark``, ``data_placement``,
    ``pin_memory``) are resolved for the device first (``resolve_settings``); ``config.json`` and the
    checkpoints record the resolved values.

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
            schedule still spans ``config.epochs``. ``config.time_limit_h`` stops the loop the same way
            after the last epoch that fits (``fits_time_limit``), with one line saying how to resume.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` on rank 0 after each epoch's files are written.
        overwrite: a new run (not resumed) over a finished one moves the old files into
            ``RUN/previous-<time>/`` and deletes them once the new run has its first ``best_model.pth``;
            False refuses.
        splits: the volume split, written as ``RUN/splits.json`` (a resumed run must have the same).
        validator: ``validator(model, epoch) -> score`` on whole volumes, needed when
            ``config.val_volume_every`` > 0 (``tumorlib.evaluation.validation.VolumeValidator``).

    Returns:
        The history (``HISTORY_COLUMNS``, one row per finished epoch, resumed epochs included).

    Raises:
        ValueError: resuming a run made with another config or split (names the differing fields);
            ``val_volume_every`` > 0 without a validator.
        FileExistsError: ``run_dir`` holds a finished run and neither ``resume`` nor ``overwrite`` is set.
        FloatingPointError: a non-finite training or validation loss; ``last.pth`` keeps the last good epoch
            (the message says whether the input held NaN).
    """
    return TrainingLoop(config, train_dataset, val_dataset, run_dir, resume=resume, progress=progress,
                        device=device, info=info, stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end,
                        overwrite=overwrite, splits=splits, validator=validator).run()


def train(config: Config, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True, *,
          device: str | torch.device | None = None, stop_after_epoch: int | None = None,
          on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
          overwrite: bool = False, validator: ValidatorFactory | None = None) -> pd.DataFrame:
    """Train the config's ``UNet3D`` on the cached volumes and write the run folder.

    Launched by ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (NCCL on GPUs,
    gloo on CPU); rank 0 builds the cache and writes every file, holding the run folder's writer lock
    (``safety.folder_lock``) for the whole run. ``tumorlib.app.workflows.train`` calls this with the
    whole-volume validator.

    Args:
        config: the run's config.
        data_dir: Kaggle-format data; None: the workspace's (embedded synthetic set by default).
        cache_dir: the ``.npy`` cache; None: the workspace's. Built when missing.
        out_dir: the run folder ``RUN``; None: the workspace's ``run_dir``.
        resume, progress, device, stop_after_epoch, on_epoch_end, overwrite: as for ``fit``.
        validator: builds the whole-volume validator from ``(config, cache_dir, validation ids)`` once the
            split is known (e.g. ``VolumeValidator``); needed when ``config.val_volume_every`` > 0.

    Returns:
        The history as a DataFrame (``HISTORY_COLUMNS``).

    Raises:
        ValueError: resuming with another config or split (nothing in ``RUN`` is changed); bad data;
            ``val_volume_every`` > 0 without a validator (before any work).
        FileExistsError: ``RUN`` holds a finished run and neither ``resume`` nor ``overwrite`` is set.
        FolderBusyError: another training writes into ``RUN`` (names its PID).
        FloatingPointError: a non-finite loss (the last good checkpoint is kept).
    """
    check_validator(config, validator)
    dev = select_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(dev)
    try:
        if info.is_main:
            cache = resolve_cache(config, data_dir, cache_dir, progress=progress)
        barrier(info)
        if not info.is_main:
            cache = resolve_cache(config, data_dir, cache_dir, progress=False)
        train_ds, val_ds, splits = make_datasets(config, cache)
        built = validator(config, val_ds.cache_dir, val_ds.volume_ids) if validator is not None else None
        run = Path(out_dir).expanduser().resolve() if out_dir is not None else workspace(config).run_dir
        with folder_lock(run, "training run") if info.is_main else contextlib.nullcontext():
            return fit(config, train_ds, val_ds, run, resume=resume, progress=progress, device=dev, info=info,
                       stop_after_epoch=stop_after_epoch, on_epoch_end=on_epoch_end, overwrite=overwrite,
                       splits=splits, validator=built)
    finally:
        cleanup_distributed(info)
