"""The CPU as a first-class device: one precision rule for training and inference, ``--engine`` on
``evaluate`` and ``predict``, ``tumorlib export`` and ``tumorlib bench --cpu``, all without openvino too."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tumorlib.app.cli import main
from tumorlib.core.config import get_config
from tumorlib.core.device import CPU_BF16_ENV
from tumorlib.evaluation.evaluate import evaluate, inference_path
from tumorlib.inference.openvino_model import openvino_available
from tumorlib.inference.predictor import inference_engine, inference_precision
from tumorlib.nn.checkpoint import atomic_torch_save
from tumorlib.nn.unet import model_from_config
from tumorlib.training.settings import pick_amp_dtype, resolve_settings, resolved_config

HAS_OPENVINO = openvino_available()


def _run(folder, config=None):
    config = config or get_config("ci")
    torch.manual_seed(0)
    model = model_from_config(config)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    atomic_torch_save({"model": model.state_dict(), "epoch": 1, "config": config.to_dict()},
                      folder / "checkpoints" / "best_model.pth")
    return folder


@pytest.fixture
def no_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError


def test_ci_preset_is_float32_whatever_the_cpu(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    ci = get_config("ci")
    assert ci.amp_dtype == "float32" and get_config("demo").amp_dtype == "auto"
    assert pick_amp_dtype("cpu", ci)[0] is None
    assert inference_precision(ci) == "float32"
    settings, _ = resolve_settings(ci, "cpu")
    assert settings.amp_dtype is None


@pytest.mark.parametrize("forced, dtype, name", [("0", None, "fp32"), ("1", "bfloat16", "bf16")])
def test_auto_means_the_same_for_training_and_inference_on_the_cpu(monkeypatch, forced, dtype, name):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    demo = get_config("demo")
    assert pick_amp_dtype("cpu", demo)[0] == dtype
    settings, _ = resolve_settings(demo, "cpu")
    assert settings.amp_dtype == dtype
    assert resolved_config(demo, settings).amp_dtype == (dtype or "float32")  # what config.json records
    model = model_from_config(get_config("ci", amp_dtype="auto")).eval()
    engine = inference_engine(model, get_config("ci", amp_dtype="auto"), "torch", "cpu")
    assert engine.precision == name
    assert inference_engine(model, get_config("ci", amp_dtype="bfloat16"), "torch", "cpu").precision == "bf16"
    assert inference_engine(model, get_config("ci", amp_dtype="bfloat16"), "torch", "cpu",
                            amp=False).precision == "fp32"
    assert inference_precision(get_config("ci", amp_dtype="float16"), device="cpu") == "auto"  # a T4 run on a CPU


def test_setup_report_states_the_precision_asked_for(monkeypatch):
    from tumorlib.app.setup_report import describe_setup

    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert "precision fp32 (amp_dtype float32)" in describe_setup(get_config("ci"), device="cpu")
    assert "precision bf16 (auto)" in describe_setup(get_config("demo"), device="cpu")
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert "precision fp32 (auto)" in describe_setup(get_config("demo"), device="cpu")


def test_evaluate_records_the_engine_and_auto_falls_back_without_openvino(tiny_cache, tmp_path, no_openvino):
    run = _run(tmp_path / "run")
    frame = evaluate(run, cache_dir=tiny_cache, split="all", device="cpu", progress=False, engine="auto",
                     out=tmp_path / "m.csv")
    record = json.loads(inference_path(tmp_path / "m.csv").read_text())
    assert record["engine"] == "torch" and record["precision"] == "fp32" and record["asked"] == "auto"
    assert len(frame) == record["volumes"]
    with pytest.raises(ValueError, match="openvino is not installed"):
        evaluate(run, cache_dir=tiny_cache, split="all", device="cpu", progress=False, engine="openvino",
                 out=tmp_path / "n.csv")


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_evaluate_with_openvino_scores_as_torch(tiny_data, tiny_cache, tmp_path):
    run = _run(tmp_path / "run")
    a = evaluate(run, cache_dir=tiny_cache, split="all", device="cpu", progress=False, engine="torch",
                 out=tmp_path / "a.csv")
    assert main(["evaluate", "--run", str(run), "--cache", str(tiny_cache), "--split", "all", "--out",
                 str(tmp_path / "b.csv"), "--device", "cpu", "--engine", "openvino", "--quiet"]) == 0
    b = pd.read_csv(tmp_path / "b.csv")
    assert json.loads(inference_path(tmp_path / "b.csv").read_text())["engine"] == "openvino"
    assert (run / "checkpoints" / "best_model.openvino" / "model.xml").is_file()  # converted once, kept
    np.testing.assert_allclose(a["dice_wt"], b["dice_wt"], atol=1e-3)
    seg = tmp_path / "p.nii.gz"
    assert main(["predict", "--run", str(run), "--data", str(tiny_data), "--volume", "1", "--out", str(seg),
                 "--device", "cpu", "--engine", "openvino", "--quiet"]) == 0 and seg.is_file()


def test_cli_export_onnx(tmp_path, capsys):
    pytest.importorskip("onnx")
    run = _run(tmp_path / "run")
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out)]) == 0
    assert (out / "model.onnx").is_file() and (out / "contract.json").is_file()
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out)]) == 2  # needs --overwrite
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out), "--overwrite"]) == 0


def test_cli_export_openvino_without_openvino_names_the_install(tmp_path, capsys, no_openvino):
    run = _run(tmp_path / "run")
    assert main(["export", "--run", str(run), "--format", "openvino", "--out", str(tmp_path / "x")]) == 2
    assert "pip install" in capsys.readouterr().err


def test_cli_bench_cpu_prints_the_table(capsys, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert main(["bench", "--cpu", "--quiet", "--train-steps", "1", "--train-warmup", "0", "--cpu-no-compile",
                 "--cpu-train-patch", "8,16,16", "--cpu-train-features", "2,4", "--cpu-volume", "8,16,16",
                 "--cpu-infer-patch", "8,16,16", "--cpu-infer-features", "2,4"]) == 0
    out = capsys.readouterr().out
    assert "bf16 native: no" in out and "| what | float32 eager" in out and "patches/s" in out
