"""Tests for tumorlib.perf: automatic settings, variants, the training step, the benchmark on the CPU.

The GPU-only choices are checked with CUDA queries patched; the benchmark itself runs on the CPU at
the ``ci`` preset, once with the automatic variants and once forcing the GPU paths (fp16 + GradScaler,
bf16, the device-resident sampler, torch.compile with a tracing-only backend).
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from tumorlib import perf
from tumorlib.config import get_config
from tumorlib.data.cache import build_cache
from tumorlib.data.gpu_patches import resident_nbytes
from tumorlib.perf import (
    TrainStep,
    Variant,
    auto_settings,
    benchmark_throughput,
    compare_losses,
    default_variant,
    format_throughput,
    seed_variant,
)

CI = get_config("ci", num_workers=0)


@pytest.fixture(scope="module")
def ci_cache(tiny_data, tmp_path_factory):
    return build_cache(tiny_data, tmp_path_factory.mktemp("perf") / "cache", workers=1, progress=False)


def _batch(seed=0, b=2):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 4, *CI.patch_size, generator=gen)
    mask = (torch.rand(b, 3, *CI.patch_size, generator=gen) > 0.8).float()
    return image, mask


# --------------------------------------------------------------------------- automatic choices

def test_auto_settings_on_cpu(ci_cache):
    s = auto_settings("cpu", CI)
    assert s["amp_dtype"] is None and not s["grad_scaler"]
    assert not s["compile"] and s["compile_mode"] is None
    assert not s["gpu_resident"] and s["resident_bytes"] is None
    assert not s["pin_memory"] and not s["non_blocking"] and not s["cudnn_benchmark"] and not s["channels_last"]
    assert s["num_workers"] == 0 and not s["persistent_workers"]
    assert set(s["reasons"]) == {"amp_dtype", "compile", "gpu_resident"}
    with_cache = auto_settings("cpu", CI, ci_cache, [1, 2])
    assert with_cache["resident_bytes"] == resident_nbytes(ci_cache, [1, 2]) > 0
    assert not with_cache["gpu_resident"]  # never on the CPU
    forced = auto_settings("cpu", CI, compile_mode="reduce-overhead")
    assert forced["compile"] and forced["compile_mode"] == "reduce-overhead"
    assert not auto_settings("cpu", CI, compile_mode="none")["compile"]
    assert auto_settings("cpu", get_config("ci", num_workers=3))["persistent_workers"]


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA queries answered as by an H100 with 80 GB free (no kernel is launched)."""
    state = {"bf16": True, "free": 80 * 2**30, "capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: state["capability"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (state["free"], 80 * 2**30))
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(sys, "platform", "linux")
    return state


def test_auto_settings_on_cuda(fake_cuda, ci_cache):
    s = auto_settings("cuda", CI, ci_cache)
    assert s["amp_dtype"] == "bfloat16" and not s["grad_scaler"]
    assert s["compile"] and s["compile_mode"] == "default"
    assert s["gpu_resident"] and s["pin_memory"] and s["non_blocking"] and s["cudnn_benchmark"]
    assert not s["channels_last"]  # measured slower with InstanceNorm
    v = default_variant(s)
    assert v.name == "default" and v.data == "device" and v.compile and v.amp_dtype == "bfloat16"
    assert v.describe() == "bf16, compile(default), device data"

    fake_cuda["bf16"] = False  # e.g. a T4: fp16 needs the scaler
    s = auto_settings("cuda", CI)
    assert s["amp_dtype"] == "float16" and s["grad_scaler"]
    fake_cuda["free"] = resident_nbytes(ci_cache)  # data would take all the free memory: DataLoader
    assert not auto_settings("cuda", CI, ci_cache)["gpu_resident"]
    assert default_variant(auto_settings("cuda", CI, ci_cache)).data == "loader"
    fake_cuda["capability"] = (6, 1)
    assert not auto_settings("cuda", CI)["compile"]
    assert auto_settings("cuda", get_config("ci", amp=False))["amp_dtype"] is None
    assert seed_variant("cuda") == Variant("seed", amp_dtype="float16", grad_scaler=True)


def test_variants():
    assert seed_variant("cpu").amp_dtype is None and not seed_variant("cpu").grad_scaler
    assert seed_variant("cuda").describe() == "fp16+GradScaler, eager, DataLoader"
    v = default_variant(auto_settings("cpu", CI), name="gpu-path", data="device", amp_dtype="bfloat16")
    assert v.name == "gpu-path" and v.data == "device" and v.torch_amp_dtype is torch.bfloat16
    assert v.to_dict()["description"] == "bf16, eager, device data"
    with pytest.raises(ValueError, match="amp_dtype"):
        Variant("x", amp_dtype="float8")
    with pytest.raises(ValueError, match="data"):
        Variant("x", data="disk")


# --------------------------------------------------------------------------- the step and the loss check

def test_train_step_matches_train_loop_pieces():
    """One TrainStep equals forward_backward + optimizer_step of tumorlib.train by hand."""
    from tumorlib.losses import loss_from_config
    from tumorlib.model import model_from_config
    from tumorlib.train import forward_backward, optimizer_step

    image, mask = _batch()
    torch.manual_seed(CI.seed)
    model = model_from_config(CI)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=CI.lr, weight_decay=CI.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = forward_backward(model, loss_from_config(CI), image, mask, None, scaler)
    optimizer_step(model, opt, scaler, None, CI.grad_clip)

    step = TrainStep(CI, Variant("fp32"), "cpu", init)
    got = step([(image.half(), mask.to(torch.uint8))])  # casts like the loop: float16/uint8 in, float32 used
    assert torch.allclose(got, loss, rtol=1e-3)  # the half() input rounds the image
    step.reset(init)
    assert torch.equal(step([(image, mask)]), loss)
    for name, p in step.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name


def test_compile_failure_falls_back_to_eager(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no working compiler")

    monkeypatch.setattr(perf, "_compile", lambda model, variant: Broken())
    image, mask = _batch()
    eager = TrainStep(CI, Variant("eager"), "cpu")
    init = {k: v.clone() for k, v in eager.model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        step = TrainStep(CI, Variant("c", compile=True), "cpu", init)
        loss = step([(image, mask)])
    assert "no working compiler" in step.compile_error and step.net is step.model
    assert torch.equal(loss, eager([(image, mask)]))
    step([(image, mask)])  # later steps run eager without a warning


def test_compare_losses_by_hand():
    batches = [_batch(s) for s in range(3)]
    a = TrainStep(CI, Variant("a"), "cpu")
    init = {k: v.clone() for k, v in a.model.state_dict().items()}
    b = TrainStep(CI, Variant("b"), "cpu")
    out = compare_losses(CI, {"a": a, "b": b}, batches, 3, init)
    assert out["steps"] == 3 and len(out["losses"]["a"]) == 3
    assert out["losses"]["a"] == out["losses"]["b"]  # same weights, batches and arithmetic
    assert out["pairs"] == {"b_vs_a": {"max_abs_diff": 0.0, "max_rel_diff": 0.0}}
    assert out["losses"]["a"][2] < out["losses"]["a"][0] + 0.5  # trained, finite
    with pytest.raises(ValueError, match="micro-batches"):
        compare_losses(CI, {"a": a}, batches, 4, init)


# --------------------------------------------------------------------------- the benchmark on the CPU

def _positive_numbers(row, keys):
    for k in keys:
        assert isinstance(row[k], float) and row[k] > 0 and math.isfinite(row[k]), k


def test_benchmark_on_cpu_ci(ci_cache):
    r = benchmark_throughput(CI, ci_cache, device="cpu", steps=2, warmup=1, loss_steps=2, inference_repeats=1)
    assert r["device"] == "cpu" and r["preset"] == "ci" and r["baseline"] == "seed" and r["candidate"] == "default"
    assert set(r["variants"]) == {"seed", "default"}
    for row in r["variants"].values():
        _positive_numbers(row, ["step_patches_per_s", "e2e_patches_per_s", "inference_s"])
        assert row["step_peak_memory_gib"] is None and row["e2e_peak_memory_gib"] is None  # CPU: not measured
        assert row["compile_error"] is None and row["data"] == "loader"
        assert row["volume_shape"] == list(CI.synth_shape) and row["windows_per_volume"] == 8
    assert r["peak_memory_source"] is None and r["process_max_rss_gib"] > 0
    _positive_numbers(r["ratios"], ["step_patches_per_s", "e2e_patches_per_s", "inference_speedup"])
    assert r["ratios"]["step_peak_memory"] is None
    # on the CPU both are float32 eager: identical losses from the same weights and batches
    assert r["loss_check"]["pairs"] == {"default_vs_seed": {"max_abs_diff": 0.0, "max_rel_diff": 0.0}}
    assert r["targets_met"] is None
    json.dumps(r)  # JSON-ready
    text = format_throughput(r, {"train_step_patches_per_s": 3.0, "train_patches_per_s": 2.0,
                                 "train_amp_dtype": None, "train_compile": False})
    assert "seed" in text and "default / seed" in text and "train.py" in text and "same settings" in text


def test_benchmark_forcing_the_gpu_paths_on_cpu(ci_cache):
    """fp16 + GradScaler against bf16 + device-resident patches + torch.compile (tracing backend)."""
    seed = Variant("seed", amp_dtype="float16", grad_scaler=True)
    default = Variant("default", amp_dtype="bfloat16", compile=True, compile_backend="eager", data="device")
    small = CI.replace(patch_size=(16, 16, 32))  # CPU autocast kernels are slow: keep the patch small
    r = benchmark_throughput(small, ci_cache, device="cpu", steps=1, warmup=1, loss_steps=2,
                             variants=[seed, default], inference_repeats=1, volume_shape=(16, 16, 32))
    d = r["variants"]["default"]
    assert d["data"] == "device" and d["resident_gib"] > 0 and d["resident_load_s"] > 0
    assert d["compile_error"] is None and d["inference_compile_error"] is None
    assert d["windows_per_volume"] == 1
    for row in r["variants"].values():
        _positive_numbers(row, ["step_patches_per_s", "e2e_patches_per_s", "inference_s"])
    check = r["loss_check"]
    assert list(check["losses"]) == ["float32", "seed", "default"]  # the float32 reference is added
    assert set(check["pairs"]) == {"seed_vs_float32", "default_vs_float32", "default_vs_seed"}
    for pair in check["pairs"].values():  # low precision changes the loss a little, not its behaviour
        assert 0 < pair["max_rel_diff"] < 0.05
    assert "bf16, compile(default), device data" in format_throughput(r)


def test_cli_bench_train(tiny_data, tmp_path, capsys):
    from tumorlib.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--preset", "ci", "--data", str(tiny_data), "--cache", str(tmp_path / "cache"),
                 "--out", str(out), "--train", "--device", "cpu", "--no-cold", "--no-build", "--repeats", "1",
                 "--volumes", "1", "--patches", "4", "--train-steps", "1", "--train-warmup", "1",
                 "--loss-steps", "1", "--num_workers", "0", "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["train_patches_per_s"] > 0 and result["train_step_patches_per_s"] > 0  # issue 4's keys
    t = result["throughput"]
    assert t["variants"]["default"]["e2e_patches_per_s"] > 0 and t["ratios"]["e2e_patches_per_s"] > 0
    assert t["loss_check"]["steps"] == 1
    assert "default / seed" in capsys.readouterr().out
