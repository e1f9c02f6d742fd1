"""Tests for the training loop and its pieces: schedule, checkpoints, validation, resume, DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from tumorlib.nn.checkpoint import atomic_torch_save, get_rng_state, load_checkpoint, load_model, set_rng_state
from tumorlib.core.config import get_config
from tumorlib.training.distributed import DistInfo, select_device
from tumorlib.nn.unet import UNet3D
from tumorlib.nn.schedule import WarmupCosine, lr_schedule, optimizer_steps_per_epoch, warmup_cosine_scheduler
from tumorlib.app.workflows import train
from tumorlib.data.resolve import make_datasets
from tumorlib.nn.precision import amp_dtype
from tumorlib.training.engine import validate
from tumorlib.training.epochs import group_sizes as _group_sizes
from tumorlib.training.epochs import make_loader as _loader
from tumorlib.training.history import HISTORY_COLUMNS, TIMING_COLUMNS
from tumorlib.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=2, warmup_epochs=1, samples_per_epoch=4, val_samples=2, batch_size=2, num_workers=0)


class Patches(Dataset):
    """An in-memory stand-in for ``BraTS3DDataset``: a deterministic patch per (seed, epoch, index).

    The mask is a bright cube in channel 3 of the image, split into the three classes; ``nan_epoch``
    makes every image of that epoch NaN.
    """

    def __init__(self, n: int, size=(16, 32, 32), seed: int = 0, nan_epoch: int | None = None) -> None:
        self.n, self.size, self.seed, self.nan_epoch, self.epoch = n, size, seed, nan_epoch, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, item):
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        rng = np.random.default_rng([self.seed, epoch, index])
        image = rng.normal(size=(4, *self.size)).astype(np.float32) * 0.1
        mask = np.zeros((3, *self.size), np.uint8)
        z, y, x = (int(rng.integers(2, s - 8)) for s in self.size)
        mask[1, z:z + 6, y:y + 6, x:x + 6] = 1
        mask[0, z + 2:z + 4, y + 2:y + 4, x + 2:x + 4] = 1
        mask[1] &= 1 - mask[0]
        mask[2, z + 1:z + 5, y + 1:y + 5, x + 1] = 1
        mask[1] &= 1 - mask[2]
        mask[0] &= 1 - mask[2]
        image[1] += 2.0 * mask[2]
        image[3] += 2.0 * mask.any(0)
        if self.nan_epoch is not None and epoch == self.nan_epoch:
            image[:] = np.nan
        return torch.from_numpy(image).to(torch.float16), torch.from_numpy(mask)


# --------------------------------------------------------------------------- schedule


def test_warmup_cosine_hand_values():
    f = WarmupCosine(total_steps=10, warmup_steps=4, min_ratio=0.01)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)  # first step after the warmup: the peak
    # t = (s - 4) / 5; at s = 6.5 the cosine is at its midpoint; s = 9 is the last step: exactly min
    assert f(9) == pytest.approx(0.01)
    assert f(6) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert f(50) == pytest.approx(0.01)
    values = [f(s) for s in range(4, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing after the warmup
    assert WarmupCosine(3, 0, 0.1)(0) == 1.0 and WarmupCosine(3, 3, 0.1)(2) == 1.0
    with pytest.raises(ValueError):
        WarmupCosine(5, 6)


def test_scheduler_steps_per_optimizer_step_and_ends_at_min():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2e-4)
    sched = warmup_cosine_scheduler(opt, total_steps=8, warmup_steps=2, min_ratio=0.01)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(2e-4)
    assert lrs[-1] == pytest.approx(2e-6)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"total_steps": 8, "warmup_steps": 2, "min_ratio": 0.01}


def test_steps_per_epoch_and_schedule_table():
    assert optimizer_steps_per_epoch(6, 2, 2) == 2  # 3 micro-batches -> 2 + 1
    assert optimizer_steps_per_epoch(8, 2, 1, world_size=2) == 2
    assert optimizer_steps_per_epoch(7, 2, 1, world_size=2) == 2  # 4 patches a rank (padded)
    assert optimizer_steps_per_epoch(1, 2, 4) == 1
    cfg = get_config("full")
    table = lr_schedule(cfg, 10)
    assert len(table) == 500 and list(table.columns) == ["step", "epoch", "lr"]
    assert table.lr.max() == pytest.approx(2e-4) and table.lr.iloc[-1] == pytest.approx(2e-6)
    assert table.lr.idxmax() == 49  # the warmup (5 epochs x 10 steps) ends at the peak


def test_fit_takes_the_optimizer_steps_the_schedule_counts(tmp_path):
    """The steps ``fit`` really takes (scheduler and AdamW counters) equal ``optimizer_steps_per_epoch``."""
    for samples, batch, acc in ((6, 2, 2), (8, 2, 1), (5, 2, 3)):
        cfg = get_config("ci", **{**TINY, "epochs": 1, "samples_per_epoch": samples, "batch_size": batch,
                                  "accumulation_steps": acc})
        run = tmp_path / f"run{samples}_{batch}_{acc}"
        fit(cfg, Patches(samples), Patches(2, seed=1), run, progress=False)
        last = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
        expected = optimizer_steps_per_epoch(samples, batch, acc)
        assert last["scheduler"]["last_epoch"] == expected
        assert all(int(s["step"]) == expected for s in last["optimizer"]["state"].values())


def test_group_sizes():
    assert _group_sizes(5, 2) == [2, 2, 1]
    assert _group_sizes(4, 2) == [2, 2]
    assert _group_sizes(3, 1) == [1, 1, 1]
    assert _group_sizes(1, 4) == [1]


def test_whole_volume_selection_without_a_validator_is_refused(tmp_path):
    from tumorlib.training import loop

    cfg = get_config("ci", **{**TINY, "val_volume_every": 1})
    with pytest.raises(ValueError, match="no validator was given.*tumorlib.app.workflows.train"):
        loop.train(cfg, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="VolumeValidator"):
        fit(cfg, Patches(4), Patches(2, seed=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work


# --------------------------------------------------------------------------- pieces


def test_amp_dtype_and_device_on_cpu(monkeypatch):
    monkeypatch.setenv("TUMORLIB_CPU_BF16", "0")  # a CPU without native bf16: float32
    assert amp_dtype(torch.device("cpu"), True) is None
    monkeypatch.setenv("TUMORLIB_CPU_BF16", "1")  # one with it (AMX or AVX512-BF16): bf16
    assert amp_dtype(torch.device("cpu"), True) is torch.bfloat16
    assert amp_dtype(torch.device("cpu"), False) is None
    if not torch.cuda.is_available():
        assert select_device().type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_rng_state_round_trip(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = get_rng_state()
    path = atomic_torch_save({"rng": state}, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "x.pth"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["x.pth"]
    with pytest.raises(ValueError, match="not a tumorlib checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pth")


class _Oracle(torch.nn.Module):
    """Logits +-20 from the sign of image channels 0..2: predictions chosen by the test."""

    def forward(self, x):
        return torch.where(x[:, :3] > 0, 20.0, -20.0)


class _Fixed(Dataset):
    def __init__(self, items):
        self.items, self.epoch = items, 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, item):
        return self.items[item[1] if isinstance(item, tuple) else item]


def test_validate_hand_computed():
    # two 1x2x2 patches; class 0: pred {a, b}, gt {a} -> dice 2/3; class 1: pred {}, gt {} -> 1;
    # class 2: pred {c}, gt {d} -> 0; WT: pred {a, b, c}, gt {a, d} -> 2 * 1 / 5
    img = torch.full((2, 4, 1, 2, 2), -1.0)
    msk = torch.zeros(2, 3, 1, 2, 2, dtype=torch.uint8)
    img[0, 0, 0, 0, 0] = img[0, 0, 0, 0, 1] = 1  # a = (patch 0, 0, 0), b = (patch 0, 0, 1)
    msk[0, 0, 0, 0, 0] = 1
    img[1, 2, 0, 1, 1] = 1  # c = (patch 1, 1, 1)
    msk[1, 2, 0, 1, 0] = 1  # d = (patch 1, 1, 0)
    ds = _Fixed([(img[i], msk[i]) for i in range(2)])
    cfg = get_config("ci", num_workers=0)
    loader = _loader(ds, cfg, DistInfo(), 2, False)
    crit = torch.nn.Module()
    crit.forward = lambda logits, target: torch.tensor(0.25)
    out = validate(_Oracle(), loader, crit, torch.device("cpu"))
    assert out["val_dice_ncr"] == pytest.approx(2 / 3)
    assert out["val_dice_ed"] == 1.0
    assert out["val_dice_et"] == 0.0
    assert out["val_dice_mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert out["val_dice_wt"] == pytest.approx(2 / 5)
    assert out["val_loss"] == pytest.approx(0.25)


def test_ranks_draw_distinct_patches(ci_cache):
    cfg = get_config("ci", samples_per_epoch=8, num_workers=0)
    train_ds, _, _ = make_datasets(cfg, ci_cache)
    seen = []
    for rank in range(2):
        sampler = _loader(train_ds, cfg, DistInfo(rank=rank, local_rank=rank, world_size=2), 2, False).sampler
        seen.append([i for _, i in sampler])
    assert len(seen[0]) == len(seen[1]) == 4
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(8))
    plans = [train_ds.plan(i, 0) for i in range(8)]
    assert len({(p.volume_id, p.start) for p in plans}) > 1


# --------------------------------------------------------------------------- loop on the stand-in


def test_fit_writes_the_run_folder(tmp_path):
    cfg = get_config("ci", **TINY)
    history = fit(cfg, Patches(4), Patches(2, seed=1), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert list(history.columns) == HISTORY_COLUMNS
    assert history.epoch.tolist() == [1, 2]
    assert pd.read_csv(run / "history.csv").columns.tolist() == HISTORY_COLUMNS
    assert history.lr.tolist() == pytest.approx([cfg.lr, cfg.lr * cfg.min_lr_ratio])  # last step of each epoch
    assert np.isfinite(history[[c for c in HISTORY_COLUMNS if c != "val_volume_dice"]].to_numpy()).all()
    assert history.val_volume_dice.isna().all()  # whole-volume selection is off in ci
    assert ((history.filter(like="val_dice") >= 0) & (history.filter(like="val_dice") <= 1)).all().all()
    for name in ("config.json", "training_curves.png", "checkpoints/best_model.pth", "checkpoints/last.pth"):
        assert (run / name).is_file(), name
    # the auto speed fields are recorded as the CPU resolved them
    resolved = cfg.replace(amp_dtype="float32", compile="off", cudnn_benchmark="off", data_placement="loader",
                           pin_memory="off")
    assert json.loads((run / "config.json").read_text()) == resolved.to_dict()
    last = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert last["epoch"] == 2 and last["config"] == resolved.to_dict()
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "history", "best_dice"} <= set(last)
    best = torch.load(run / "checkpoints" / "best_model.pth", weights_only=True)
    assert best["metrics"]["val_dice_mean"] == pytest.approx(history.val_dice_mean.max())
    model, loaded_cfg = load_model(run)
    assert isinstance(model, UNet3D) and loaded_cfg == resolved and not model.training
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best_model.pth", "last.pth"]


def test_training_learns_the_stand_in(tmp_path):
    cfg = get_config("ci", epochs=4, warmup_epochs=1, samples_per_epoch=16, val_samples=4, lr=3e-3, num_workers=0)
    history = fit(cfg, Patches(16), Patches(4, seed=1), tmp_path / "run", progress=False)
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0] - 0.01
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0] - 0.01
    assert history.val_loss.is_monotonic_decreasing


def test_accumulation_gives_fewer_optimizer_steps(tmp_path):
    cfg = get_config("ci", **{**TINY, "epochs": 1, "samples_per_epoch": 6, "accumulation_steps": 2})
    fit(cfg, Patches(6), Patches(2, seed=1), tmp_path / "run", progress=False)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)
    # 3 micro-batches of 2 -> optimizer steps of 2 + 1 micro-batches
    assert last["scheduler"]["last_epoch"] == 2
    assert all(int(s["step"]) == 2 for s in last["optimizer"]["state"].values())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = get_config("ci", **{**TINY, "epochs": 3})
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at epoch 2.*last good epoch \(1\); "
                                                 r"the input patches hold NaN"):
        fit(cfg, Patches(4, nan_epoch=1), Patches(2, seed=1), run, progress=False)
    last = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUMORLIB_TEST_COMPILE"),
                    reason="torch.compile on the CPU compiles for ~3 minutes; set TUMORLIB_TEST_COMPILE=1")
def test_compiled_training_saves_plain_state_dict(tmp_path):
    cfg = get_config("ci", **{**TINY, "epochs": 1, "compile": "default"})
    history = fit(cfg, Patches(4), Patches(2, seed=1), tmp_path / "run", progress=False)
    assert np.isfinite(history.train_loss).all()
    keys = torch.load(tmp_path / "run" / "checkpoints" / "best_model.pth", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in keys)
    load_model(tmp_path / "run")


def test_resume_with_another_config_is_refused(tmp_path):
    cfg = get_config("ci", **TINY)
    run = tmp_path / "run"
    fit(cfg, Patches(4), Patches(2, seed=1), run, progress=False, stop_after_epoch=1)
    with pytest.raises(ValueError, match=r"cannot resume .*lr=0\.001 in the checkpoint but 0\.002 now"):
        fit(cfg.replace(lr=2e-3), Patches(4), Patches(2, seed=1), run, progress=False, resume=True)
    # fields that do not change training may differ
    history = fit(cfg.replace(num_workers=0, sw_overlap=0.25), Patches(4), Patches(2, seed=1), run,
                  progress=False, resume=True)
    assert history.epoch.tolist() == [1, 2]


# --------------------------------------------------------------------------- real data, ci preset


def _env(threads: int) -> dict[str, str]:
    """This environment for a child process, with the repo importable and ``threads`` torch threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


@pytest.mark.slow  # subprocesses (or a signal): seconds each
def test_resume_after_sigkill_reproduces_the_uninterrupted_history(ci_cache, tmp_path):
    # with whole-volume model selection (epoch 1: the first, 2: every second, 3: the last), so the
    # selection state is resumed too
    cfg = get_config("ci", epochs=3, val_volume_every=2)
    full = train(cfg, cache_dir=ci_cache, out_dir=tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "splits.json").is_file()
    script = textwrap.dedent(f"""
        import os, signal
        from tumorlib.core.config import get_config
        from tumorlib.app.workflows import train

        def kill(epoch, row):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        train(get_config("ci", epochs=3, val_volume_every=2), cache_dir={str(ci_cache)!r},
              out_dir={str(tmp_path / 'cut')!r},
              progress=False, on_epoch_end=kill)
    """)
    # the same thread count as this process: float sums must run in the same order to compare exactly
    proc = subprocess.run([sys.executable, "-c", script], env=_env(torch.get_num_threads()), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert pd.read_csv(tmp_path / "cut" / "history.csv").epoch.tolist() == [1, 2]
    resumed = train(cfg, cache_dir=ci_cache, out_dir=tmp_path / "cut", resume=True, progress=False)
    keep = [c for c in HISTORY_COLUMNS if c not in TIMING_COLUMNS]
    assert full.val_volume_dice.notna().tolist() == [True, True, True]
    pd.testing.assert_frame_equal(resumed[keep], full[keep], check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "history.csv")[keep],
                                  pd.read_csv(tmp_path / "full" / "history.csv")[keep], check_exact=True)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = [torch.load(tmp_path / r / "checkpoints" / "best_model.pth", weights_only=True)["epoch"] for r in ("full", "cut")]
    assert best[0] == best[1]
    # resuming a finished run trains nothing more
    again = train(cfg, cache_dir=ci_cache, out_dir=tmp_path / "cut", resume=True, progress=False)
    pd.testing.assert_frame_equal(again[keep], full[keep])


@pytest.mark.slow  # subprocesses (or a signal): seconds each
def test_ddp_two_gloo_processes_on_cpu(ci_cache, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "tumorlib", "train", "--preset", "ci", "--cache", str(ci_cache), "--out", str(run), "--device", "cpu",
           "--samples_per_epoch", "8", "--val_volume_every", "1"]  # whole-volume selection on both ranks
    proc = subprocess.run(cmd, env=_env(1), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "x 2 ranks" in out
    assert out.count("epoch   1/2") == 1  # rank 0 alone reports (and writes)
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == [1, 2] and np.isfinite(history[HISTORY_COLUMNS].to_numpy()).all()
    names = sorted(p.name for p in run.iterdir() if p.name != ".tumorlib.lock")  # the writer lock stays, empty
    assert names == ["checkpoints", "config.json", "history.csv", "splits.json",
                     "training_curves.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best_model.pth", "last.pth"]
    last = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    # 8 patches / 2 ranks / batch 2 = 2 optimizer steps an epoch on each rank
    assert last["scheduler"]["last_epoch"] == 4


def test_bench_train_on_cpu(ci_cache):
    from tumorlib.benchmarks.training import bench_train, format_train_result

    result = bench_train(get_config("ci"), ci_cache, device="cpu", steps=1, warmup=1)
    assert result["train_device"] == "cpu" and result["train_amp_dtype"] is None
    assert result["train_parameters"] == 353_547 and result["train_patch_size"] == [16, 32, 32]
    assert result["train_step_patches_per_s"] > 0 and result["train_patches_per_s"] > 0
    assert result["train_peak_memory_gib"] is None
    assert "train_patches_per_s" in format_train_result(result)


def test_device_placement_and_compile_fallback_train_as_the_loader(ci_cache, tmp_path, monkeypatch):
    """The GPU paths on the CPU: patches cut from the resident cache and a failed ``torch.compile``
    (falling back to eager on the first step) give the DataLoader's eager history to the last digit."""
    from tumorlib.data.resolve import make_datasets

    cfg = get_config("ci", epochs=2)
    keep = [c for c in HISTORY_COLUMNS if c not in TIMING_COLUMNS]
    histories = {}
    for name, overrides in (("loader", {"data_placement": "loader"}), ("device", {"data_placement": "device"})):
        c = cfg.replace(**overrides)
        train_ds, val_ds, _ = make_datasets(c, ci_cache)
        histories[name] = fit(c, train_ds, val_ds, tmp_path / name, progress=False)
    assert json.loads((tmp_path / "device" / "config.json").read_text())["data_placement"] == "device"

    def broken_compile(module, **kwargs):
        class Broken(torch.nn.Module):
            def forward(self, x):
                raise RuntimeError("no compiler here")
        return Broken()

    monkeypatch.setattr(torch, "compile", broken_compile)
    c = cfg.replace(compile="default")
    train_ds, val_ds, _ = make_datasets(c, ci_cache)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        histories["compile"] = fit(c, train_ds, val_ds, tmp_path / "compile", progress=False)
    for name in ("device", "compile"):
        pd.testing.assert_frame_equal(histories[name][keep], histories["loader"][keep], check_exact=True)


def test_train_and_bench_run_without_tqdm_nibabel_kagglehub(ci_cache, tmp_path):
    """A stock GPU image has torch, numpy, h5py, scipy, pandas and matplotlib only: training and the
    training benchmark must run there (no bars drawn), as scripts/gpu_bench.sh relies on."""
    script = textwrap.dedent(f"""
        import importlib.machinery
        import sys

        class Block:  # the packages look installed but fail to import, as if missing
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tqdm", "nibabel", "kagglehub"):
                    return importlib.machinery.ModuleSpec(name, self)

            def create_module(self, spec):
                return None

            def exec_module(self, module):
                raise ImportError(f"{{module.__name__}} is not installed (blocked for this test)")

        sys.meta_path.insert(0, Block())
        from tumorlib.app.cli import main

        assert main(["train", "--preset", "ci", "--cache", {str(ci_cache)!r}, "--out", {str(tmp_path / 'run')!r},
                     "--device", "cpu", "--epochs", "1"]) == 0
        from tumorlib.benchmarks.training import bench_train

        assert bench_train(__import__("tumorlib").get_config("ci"), {str(ci_cache)!r}, device="cpu", steps=1,
                           warmup=0)["train_patches_per_s"] > 0
        assert not any(m.split(".")[0] in ("tqdm", "nibabel", "kagglehub") for m in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "epoch   1/1" in proc.stdout
    assert pd.read_csv(tmp_path / "run" / "history.csv").epoch.tolist() == [1]


# --------------------------------------------------------------------------- round 3 leftovers


def test_config_diff_refuses_missing_resume_fields_but_not_missing_runtime_fields():
    from tumorlib.core.config import runtime_fields
    from tumorlib.training.run_folder import config_diff

    cfg = get_config("ci")
    saved = cfg.to_dict()
    assert config_diff(saved, cfg) == []
    old = {k: v for k, v in saved.items() if k not in runtime_fields()}  # an old run: runtime fields unknown
    assert config_diff(old, cfg.replace(time_limit_h=2.0)) == []
    del old["kaggle_channel_order"]
    assert config_diff(old, cfg) == ["kaggle_channel_order is not recorded in the checkpoint (an older tumorlib "
                                     "wrote it), ['flair', 't1', 't1ce', 't2'] now"]


def test_superseded_previous_folders_are_cleaned_and_only_those(tmp_path, capsys):
    run = tmp_path / "run"
    ours = [run / "previous-20250101-000000", run / "previous-20250101-000000-1"]
    for prev in ours:  # runs moved aside by runs killed before their first epoch
        (prev / "checkpoints").mkdir(parents=True)
        (prev / "config.json").write_text("{}")
        (prev / "checkpoints" / "best_model.pth").write_bytes(b"old model")
    foreign = [run / "previous-20250101-000001", run / "previous-notes", run / "previous-20250102-000000"]
    (foreign[0] / "checkpoints").mkdir(parents=True)
    (foreign[0] / "checkpoints" / "best_model.pth").write_bytes(b"old model")
    (foreign[0] / "my-notes.txt").write_text("not tumorlib's")
    foreign[1].mkdir()
    (foreign[2]).write_text("a file, not a folder")
    get_config("ci").save(run / "config.json")  # the killed run's own config: no result
    cfg = get_config("ci", **TINY)
    fit(cfg, Patches(4), Patches(2, seed=1), run, progress=True, stop_after_epoch=1)  # no --overwrite needed
    out = capsys.readouterr().out
    assert f"{run} holds only config.json of a run stopped before its first epoch: starting a new run over it" in out
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in foreign) and (foreign[0] / "my-notes.txt").is_file()
    assert (run / "checkpoints" / "best_model.pth").is_file()


def test_moving_a_finished_run_aside_cleans_older_previous_folders(tmp_path):
    from tumorlib.training.run_folder import prepare_run_folder, previous_runs

    run = tmp_path / "run"
    cfg = get_config("ci", **TINY)
    fit(cfg, Patches(4), Patches(2, seed=1), run, progress=False, stop_after_epoch=1)
    old = run / "previous-20250101-000000"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.pth").write_bytes(b"older run")
    assert previous_runs(run) == [old]

    prev = prepare_run_folder(run, cfg, None, resumed=False, overwrite=True)  # what a new run does first
    assert not old.exists() and previous_runs(run) == [prev]
    assert (prev / "checkpoints" / "best_model.pth").is_file()  # the run just replaced is kept
