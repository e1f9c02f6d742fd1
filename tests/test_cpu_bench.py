"""The CPU benchmark (``tumorlib.benchmarks.cpu``), run tiny."""

from __future__ import annotations

import sys

import pytest

from tumorlib.benchmarks.cpu import benchmark_cpu, cpu_name, format_cpu_table
from tumorlib.core.device import CPU_BF16_ENV

TINY = dict(train_patch=(16, 16, 16), train_features=(4, 8, 16), train_batch=1, train_steps=1, train_warmup=0,
            compile=False, volume=(16, 32, 32), infer_patch=(16, 16, 16), infer_features=(4, 8, 16))


def test_tiny_cpu_benchmark_fills_the_table(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    lines = []
    result = benchmark_cpu(**TINY, log=lines.append)
    assert result["bf16"] is False and CPU_BF16_ENV in result["bf16_reason"]
    assert lines[0].startswith("training, float32 eager:") and any(l.startswith("inference, ") for l in lines)
    train = result["train"]["rows"]
    assert train["float32 eager"]["patches_per_s"] > 0 and train["bf16 autocast"]["patches_per_s"] > 0
    assert "skipped" in train["bf16 + torch.compile"]
    infer = result["infer"]
    assert infer["windows"] == 1 * 3 * 3 and infer["tta"] is False
    rows = infer["rows"]
    assert rows["float32 eager"]["seconds"] > 0 and rows["float32 eager"]["labels_equal_pct"] == 100.0
    assert rows["bf16 autocast"]["labels_equal_pct"] > 50.0
    if result["openvino"]:
        assert rows["OpenVINO f32"]["max_abs_logit_diff"] < 1e-3
        assert "openvino bf16" in rows["OpenVINO bf16"]["engine"]
    table = format_cpu_table(result)
    assert "bf16 native: no" in table
    lines = table.splitlines()
    assert lines[2].startswith("| what | float32 eager | bf16 autocast | bf16 + torch.compile | OpenVINO f32")
    assert "patches/s" in lines[4] and "16x32x32 case" in lines[5]
    assert lines[4].split(" | ")[3] == "-"  # the compiled column was not measured


def test_cpu_benchmark_without_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = benchmark_cpu(**TINY, train=False)
    assert result["openvino"] is None and "train" not in result
    assert "not installed" in result["infer"]["rows"]["OpenVINO bf16"]["skipped"]
    table = format_cpu_table(result)
    assert "no OpenVINO" in table and table.splitlines()[4].endswith("| - | - |")


def test_cpu_name_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\n")
    assert cpu_name(str(info)) == "Test CPU @ 2.0GHz"
    assert cpu_name(str(tmp_path / "missing"))
