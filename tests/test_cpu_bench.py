"""The CPU benchmark (``tumorlib.benchmarks.cpu``), run tiny."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

import tumorlib.benchmarks.cpu as cpu_bench
import tumorlib.inference.engines as engines_module
import tumorlib.inference.openvino_model as openvino_model
from tumorlib.app.cli import main
from tumorlib.benchmarks.cpu import INFER_COLUMNS, benchmark_cpu, cpu_name, format_cpu_table
from tumorlib.core.device import CPU_BF16_ENV

TINY = dict(train_patch=(16, 16, 16), train_features=(4, 8, 16), train_batch=1, train_steps=1, train_warmup=0,
            compile=False, volume=(16, 32, 32), infer_patch=(16, 16, 16), infer_features=(4, 8, 16), repeats=2,
            tta_repeats=1)
COLUMNS = [c for c, _, _ in INFER_COLUMNS]


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
    measured = [c for c in COLUMNS if "skipped" not in rows[c]]
    assert infer["repeats"] == 2 and infer["order"] == measured * 2  # interleaved: A, B, ..., A, B, ...
    for column in measured:
        row = rows[column]
        assert len(row["runs"]) == 2 and row["seconds"] == row["seconds_min"] == min(row["runs"])
        assert row["seconds_min"] <= row["seconds_median"] and row["setup_s"] >= 0 and row["first_call_s"] > 0
        assert row["threads"] >= 1
    assert rows["float32 eager"]["threads"] == torch.get_num_threads()
    assert infer["tta_flips"] == 8 and infer["tta_order"] == measured
    assert infer["tta_rows"]["float32 eager"]["seconds"] > 0 and infer["tta_rows"]["bf16 autocast"]["runs"]
    assert rows["bf16 autocast"]["labels_equal_pct"] > 50.0
    if result["openvino"]:
        assert rows["OpenVINO f32"]["max_abs_logit_diff"] < 1e-3
        assert "openvino bf16" in rows["OpenVINO bf16"]["engine"]
    table = format_cpu_table(result)
    assert "bf16 native: no" in table
    lines = table.splitlines()
    assert lines[2].startswith("| what | float32 eager | bf16 autocast | bf16 + torch.compile | OpenVINO f32")
    assert "patches/s" in lines[4] and "16x32x32 case" in lines[5] and "min of 2 warm runs" in lines[5]
    assert lines[4].split(" | ")[3] == "-"  # the compiled column was not measured
    assert "median of 2 warm runs" in lines[6] and "8-flip TTA, min of 1 warm run," in lines[7]
    assert "first call" in lines[8] and " + " in lines[8].split(" | ")[1] and lines[9].startswith("| threads |")
    assert f"{torch.get_num_threads()} torch threads" in lines[0]


def test_cpu_benchmark_without_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = benchmark_cpu(**TINY, train=False)
    assert result["openvino"] is None and "train" not in result
    assert "not installed" in result["infer"]["rows"]["OpenVINO bf16"]["skipped"]
    table = format_cpu_table(result)
    assert "no OpenVINO" in table and table.splitlines()[4].endswith("| - | - |")
    assert result["openvino_threads"] is None and result["openvino_bf16"] is None
    assert "not installed" in result["infer"]["tta_rows"]["OpenVINO f32"]["skipped"]
    assert all(line.endswith("| - | - |") for line in table.splitlines()[4:9])


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_warm_up_then_interleaved_repeats(monkeypatch):
    """Every engine is built and called once, then the timed runs go A, B, C, D, A, B, C, D, ...: a fake
    clock that only the engines advance gives the exact minimum, median and first call."""
    clock, calls = _FakeClock(), []
    costs = {"float32 eager": 4.0, "bf16 autocast": 2.0, "OpenVINO f32": 3.0, "OpenVINO bf16": 1.0}
    shape = [3, 1, 2]  # a timed run's cost, by repeat: min 1x, median 2x

    class FakeEngine:
        threads = 7

        def __init__(self, column: str) -> None:
            self.column = column
            clock.now += 10.0  # set-up

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            n = calls.count(self.column)
            clock.now += 100.0 if n == 0 else costs[self.column] * shape[(n - 1) % 3]
            calls.append(self.column)
            return torch.zeros(x.shape[0], 3, *x.shape[2:])

        def describe(self) -> str:
            return f"fake {self.column}"

    def make_engine(model, engine, device, precision, patch_size, batch_size):
        return FakeEngine(next(c for c, e, p in INFER_COLUMNS if (e, p) == (engine, precision)))

    monkeypatch.setattr(engines_module, "make_engine", make_engine)
    monkeypatch.setattr(openvino_model, "openvino_available", lambda: True)
    monkeypatch.setattr(cpu_bench, "time", clock)
    monkeypatch.setattr(cpu_bench, "_openvino_bf16", lambda: True)
    monkeypatch.setitem(sys.modules, "openvino", SimpleNamespace(__version__="2099.1-fake"))
    result = benchmark_cpu(**{**TINY, "repeats": 3, "tta_repeats": 1}, train=False, infer_sw_batch=9)
    infer = result["infer"]
    assert infer["windows"] == 9  # one call per run of the case
    assert calls == COLUMNS + COLUMNS * 3 + [c for c in COLUMNS for _ in range(8)]  # warm-up, runs, TTA
    assert infer["order"] == COLUMNS * 3 and infer["tta_order"] == COLUMNS
    for column, cost in costs.items():
        row = infer["rows"][column]
        assert row["setup_s"] == 10.0 and row["first_call_s"] == 100.0  # not in the runs
        assert row["runs"] == [3 * cost, cost, 2 * cost]
        assert row["seconds"] == row["seconds_min"] == cost and row["seconds_median"] == 2 * cost
        assert row["threads"] == 7
    assert infer["tta_rows"]["OpenVINO bf16"]["runs"] == [sum(1.0 * shape[(n - 1) % 3] for n in range(4, 12))]
    assert result["openvino_threads"] == 7 and result["openvino_bf16"] is True
    lines = format_cpu_table(result).splitlines()
    assert "7 OpenVINO threads" in lines[0] and "OpenVINO lists BF16: yes" in lines[0]
    assert lines[4].endswith("| 4.0 | 2.0 | - | 3.0 | 1.0 |") and lines[5].endswith("| 8.0 | 4.0 | - | 6.0 | 2.0 |")
    assert lines[7].endswith("| 10.0 + 100.0 | 10.0 + 100.0 | - | 10.0 + 100.0 | 10.0 + 100.0 |")
    assert lines[8] == "| threads | 7 | 7 | - | 7 | 7 |"


def test_bench_cpu_command_writes_the_new_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "cpu.json"
    assert main(["bench", "--cpu", "--cpu-skip", "train", "--cpu-volume", "16,32,32", "--cpu-infer-patch",
                 "16,16,16", "--cpu-infer-features", "4,8,16", "--cpu-repeats", "2", "--cpu-no-tta",
                 "--cpu-sw-batch", "3", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["infer"]["rows"]["float32 eager"]
    assert {"seconds", "seconds_min", "seconds_median", "runs", "setup_s", "first_call_s", "threads"} <= set(row)
    assert len(row["runs"]) == 2 and "tta_rows" not in result["infer"] and result["infer"]["sw_batch_size"] == 3
    assert "min of 2 warm runs" in capsys.readouterr().out


def test_cpu_name_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\n")
    assert cpu_name(str(info)) == "Test CPU @ 2.0GHz"
    assert cpu_name(str(tmp_path / "missing"))
