"""Tests for tumorlib.benchmarks.gpu and tumorlib.training.engine: automatic settings, the Trainer, the benchmark on the CPU.

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

from tumorlib.core.config import get_config
from tumorlib.data.gpu_patches import resident_nbytes
from tumorlib.training.engine import Trainer
from tumorlib.training.settings import TrainSettings, reference_settings
from tumorlib.benchmarks.gpu import (
    auto_settings,
    benchmark_throughput,
    compare_losses,
    default_variant,
    format_throughput,
)

CI = get_config("ci", num_workers=0)


def _batch(seed=0, b=2):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 4, *CI.patch_size, generator=gen)
    mask = (torch.rand(b, 3, *CI.patch_size, generator=gen) > 0.8).float()
    return image, mask


# --------------------------------------------------------------------------- automatic choices

def test_auto_settings_on_cpu(tiny_cache):
    s = auto_settings("cpu", CI)
    assert s["amp_dtype"] is None and not s["grad_scaler"]
    assert not s["compile"] and s["compile_mode"] is None
    assert not s["gpu_resident"] and s["resident_bytes"] is None
    assert not s["pin_memory"] and not s["non_blocking"] and not s["cudnn_benchmark"] and not s["channels_last"]
    assert s["num_workers"] == 0 and not s["persistent_workers"]
    assert set(s["reasons"]) == {"amp_dtype", "compile", "cudnn_benchmark", "data_placement"}
    with_cache = auto_settings("cpu", CI, tiny_cache, [1, 2])
    assert with_cache["resident_bytes"] == resident_nbytes(tiny_cache, [1, 2]) > 0
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
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a, **k: types.SimpleNamespace(major=state["capability"][0]))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (state["free"], 80 * 2**30))
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(sys, "platform", "linux")
    return state


def test_auto_settings_on_cuda(fake_cuda, tiny_cache):
    CI = get_config("ci", num_workers=0, amp_dtype="auto")  # the ci preset asks for float32: here auto's choice
    s = auto_settings("cuda", CI, tiny_cache)
    assert s["amp_dtype"] == "bfloat16" and not s["grad_scaler"]
    assert s["compile"] and s["compile_mode"] == "default"
    assert s["gpu_resident"] and s["pin_memory"] and s["non_blocking"] and s["cudnn_benchmark"]
    assert not s["channels_last"]  # measured slower with InstanceNorm
    v = default_variant(s)
    assert v.name == "default" and v.data == "device" and v.compile and v.amp_dtype == "bfloat16"
    assert v.describe() == "bf16, compile(default), device data"

    fake_cuda["capability"] = (7, 5)  # a T4: bf16 only emulated (is_bf16_supported still says True), fp16 needs the scaler
    s = auto_settings("cuda", CI)
    assert s["amp_dtype"] == "float16" and s["grad_scaler"]
    fake_cuda["free"] = resident_nbytes(tiny_cache)  # data would take all the free memory: DataLoader
    assert not auto_settings("cuda", CI, tiny_cache)["gpu_resident"]
    assert default_variant(auto_settings("cuda", CI, tiny_cache)).data == "loader"
    fake_cuda["capability"] = (6, 1)
    assert not auto_settings("cuda", CI)["compile"]
    assert auto_settings("cuda", get_config("ci", amp=False))["amp_dtype"] is None
    assert reference_settings("cuda") == TrainSettings("reference", amp_dtype="float16", grad_scaler=True)


def test_variants():
    assert reference_settings("cpu").amp_dtype is None and not reference_settings("cpu").grad_scaler
    assert reference_settings("cuda").describe() == "fp16+GradScaler, eager, DataLoader"
    v = default_variant(auto_settings("cpu", CI), name="gpu-path", data="device", amp_dtype="bfloat16")
    assert v.name == "gpu-path" and v.data == "device" and v.torch_amp_dtype is torch.bfloat16
    assert v.to_dict()["description"] == "bf16, eager, device data"
    with pytest.raises(ValueError, match="amp_dtype"):
        TrainSettings("x", amp_dtype="float8")
    with pytest.raises(ValueError, match="data"):
        TrainSettings("x", data="disk")


# --------------------------------------------------------------------------- the step and the loss check

def test_trainer_steps_learn_and_accumulation_is_a_mean():
    """Behaviour of one optimizer step: the loss it reports is the mean over its patches, accumulating a
    batch twice steps exactly like that batch once (gradients are averaged, not summed), steps lower the loss."""
    image, mask = _batch()
    a = Trainer(CI, TrainSettings("a"), "cpu")
    init = {k: v.clone() for k, v in a.model.state_dict().items()}
    whole = a.train_step([(image, mask)])
    assert whole.patches == 2 and torch.isclose(whole.loss.double(), whole.loss_sum / 2)
    b = Trainer(CI, TrainSettings("b"), "cpu", init)
    twice = b.train_step([(image, mask), (image, mask)])
    assert twice.patches == 4 and torch.equal(twice.loss, whole.loss)
    for name, p in a.model.state_dict().items():
        assert torch.allclose(p, b.model.state_dict()[name], rtol=0, atol=1e-7), name
    # float16/uint8 inputs (as the dataset gives them) are cast like the loop casts them
    c = Trainer(CI, TrainSettings("c"), "cpu", init)
    assert torch.allclose(c([(image.half(), mask.to(torch.uint8))]), whole.loss, rtol=1e-3)
    first = float(whole.loss)
    for _ in range(8):
        last = float(a([(image, mask)]))
    assert last < first


def test_trainer_checkpoint_round_trip(tmp_path):
    """save_checkpoint then load_state_dict into a fresh Trainer continues bit for bit."""
    batches = [_batch(s) for s in range(3)]
    a = Trainer(CI, TrainSettings("a"), "cpu", total_steps=10, warmup_steps=2)
    a.train_step([batches[0]])
    a.save_checkpoint(tmp_path / "last.pth", epoch=1)
    b = Trainer(CI.replace(seed=5), TrainSettings("b"), "cpu", total_steps=10, warmup_steps=2)
    b.load_state_dict(torch.load(tmp_path / "last.pth", weights_only=True))
    for batch in batches[1:]:
        assert torch.equal(a([batch]), b([batch]))
    assert a.scheduler.last_epoch == b.scheduler.last_epoch == 3


def test_compile_failure_falls_back_to_eager(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no working compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: Broken())
    image, mask = _batch()
    eager = Trainer(CI, TrainSettings("eager"), "cpu")
    init = {k: v.clone() for k, v in eager.model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        step = Trainer(CI, TrainSettings("c", compile=True), "cpu", init)
        loss = step([(image, mask)])
    assert "no working compiler" in step.compile_error and step.net is step.model
    assert torch.equal(loss, eager([(image, mask)]))
    step([(image, mask)])  # later steps run eager without a warning


def test_compare_losses_by_hand():
    batches = [_batch(s) for s in range(3)]
    a = Trainer(CI, TrainSettings("a"), "cpu")
    init = {k: v.clone() for k, v in a.model.state_dict().items()}
    b = Trainer(CI, TrainSettings("b"), "cpu")
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


def test_benchmark_on_cpu_ci(tiny_cache):
    r = benchmark_throughput(CI, tiny_cache, device="cpu", steps=2, warmup=1, loss_steps=2, inference_repeats=1)
    assert r["device"] == "cpu" and r["preset"] == "ci" and r["baseline"] == "reference"
    assert r["candidate"] == "default" and set(r["variants"]) == {"reference", "default"}
    for row in r["variants"].values():
        _positive_numbers(row, ["step_patches_per_s", "e2e_patches_per_s", "inference_s"])
        assert row["step_peak_memory_gib"] is None and row["e2e_peak_memory_gib"] is None  # CPU: not measured
        assert row["compile_error"] is None and row["data"] == "loader"
        assert row["volume_shape"] == list(CI.synth_shape) and row["windows_per_volume"] == 8
    assert r["peak_memory_source"] is None and r["process_max_rss_gib"] > 0
    _positive_numbers(r["ratios"], ["step_patches_per_s", "e2e_patches_per_s", "inference_speedup"])
    assert r["ratios"]["step_peak_memory"] is None
    # on the CPU both are float32 eager: identical losses from the same weights and batches
    assert r["loss_check"]["pairs"] == {"default_vs_reference": {"max_abs_diff": 0.0, "max_rel_diff": 0.0}}
    assert r["targets_met"] is None
    json.dumps(r)  # JSON-ready
    text = format_throughput(r, {"train_step_patches_per_s": 3.0, "train_patches_per_s": 2.0,
                                 "train_amp_dtype": None, "train_compile": False})
    assert "reference" in text and "default / reference" in text and "train.py" in text and "same settings" in text


def test_benchmark_forcing_the_gpu_paths_on_cpu(tiny_cache):
    """fp16 + GradScaler against bf16 + device-resident patches + torch.compile (tracing backend)."""
    reference = TrainSettings("reference", amp_dtype="float16", grad_scaler=True)
    default = TrainSettings("default", amp_dtype="bfloat16", compile=True, compile_backend="eager", data="device")
    small = CI.replace(patch_size=(16, 16, 32))  # CPU autocast kernels are slow: keep the patch small
    try:
        r = benchmark_throughput(small, tiny_cache, device="cpu", steps=1, warmup=1, loss_steps=2,
                                 variants=[reference, default], inference_repeats=1, volume_shape=(16, 16, 32))
    except FloatingPointError:
        # fp16 forced onto the CPU overflowed once in a few full-suite runs (never alone): this test checks the
        # machinery of the GPU paths, not fp16's range on CPU kernels, so one other seed is allowed
        r = benchmark_throughput(small.replace(seed=small.seed + 1), tiny_cache, device="cpu", steps=1, warmup=1,
                                 loss_steps=2, variants=[reference, default], inference_repeats=1,
                                 volume_shape=(16, 16, 32))
    d = r["variants"]["default"]
    assert d["data"] == "device" and d["resident_gib"] > 0 and d["resident_load_s"] > 0
    assert d["compile_error"] is None and d["inference_compile_error"] is None
    assert d["windows_per_volume"] == 1
    for row in r["variants"].values():
        _positive_numbers(row, ["step_patches_per_s", "e2e_patches_per_s", "inference_s"])
    check = r["loss_check"]
    assert list(check["losses"]) == ["float32", "reference", "default"]  # the float32 baseline is added
    assert set(check["pairs"]) == {"reference_vs_float32", "default_vs_float32", "default_vs_reference"}
    for pair in check["pairs"].values():  # low precision changes the loss a little, not its behaviour
        assert 0 < pair["max_rel_diff"] < 0.05
    assert "bf16, compile(default), device data" in format_throughput(r)


def test_cli_bench_train(tiny_data, tmp_path, capsys):
    from tumorlib.app.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--preset", "ci", "--data", str(tiny_data), "--cache", str(tmp_path / "cache"),
                 "--out", str(out), "--train", "--device", "cpu", "--no-cold", "--no-build", "--repeats", "1",
                 "--volumes", "1", "--patches", "4", "--train-steps", "1", "--train-warmup", "1",
                 "--loss-steps", "1", "--num_workers", "0", "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["train_patches_per_s"] > 0 and result["train_step_patches_per_s"] > 0  # bench_train's keys
    t = result["throughput"]
    assert t["variants"]["default"]["e2e_patches_per_s"] > 0 and t["ratios"]["e2e_patches_per_s"] > 0
    assert t["loss_check"]["steps"] == 1
    assert "default / reference" in capsys.readouterr().out
