"""``--engine auto`` (``tumorlib.inference.engine_choice``): candidates, measurement, the kept choice."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tumorlib.core.device import CPU_BF16_ENV, cpu_signature
from tumorlib.inference import engine_choice, engines
from tumorlib.inference.engine_choice import CHOICE_FILE, engine_candidates
from tumorlib.inference.engines import make_engine
from tumorlib.inference.openvino_model import openvino_available, openvino_cache_dir

from constant_runs import tiny_checkpoint, tiny_unet

PATCH = (16, 16, 16)
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


def _rows(fastest: tuple[str, str], candidates):
    return [{"engine": e, "precision": p, "warm_up_s": 2.0, "seconds": 0.5 if (e, p) == fastest else 1.0}
            for e, p in candidates]


def test_cpu_signature_reads_the_model_name_and_bf16_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16\n")
    sig = cpu_signature(info)
    assert sig["model"] == "AMD EPYC 9R14" and sig["bf16_flags"] == ["avx512_bf16"]
    assert sig["torch_threads"] == torch.get_num_threads()
    assert cpu_signature(tmp_path / "absent")["bf16_flags"] == []


@pytest.mark.parametrize("forced, precision, openvino, expected", [
    ("1", "auto", True, [("openvino", "bfloat16"), ("openvino", "float32"), ("torch", "bfloat16"), ("torch", "float32")]),
    ("0", "auto", True, [("openvino", "float32"), ("torch", "float32")]),
    ("1", "float32", True, [("openvino", "float32"), ("torch", "float32")]),
    ("1", "auto", False, [("torch", "bfloat16"), ("torch", "float32")]),
])
def test_candidates_are_the_allowed_engines_and_precisions(monkeypatch, forced, precision, openvino, expected):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    assert engine_candidates(precision, openvino) == expected


def test_without_openvino_auto_is_torch_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    engine = make_engine(model, "auto", "cpu", "auto", PATCH, checkpoint=ckpt)
    assert engine.name == "torch" and engine.precision == "fp32"
    assert "openvino is not installed" in engine.reason
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("engine: torch fp32") and "openvino is not installed" in out[0]
    assert not openvino_cache_dir(ckpt).exists()  # nothing measured, nothing kept
    assert engine(torch.randn(1, 4, *PATCH)).shape == (1, 3, *PATCH)


@needs_openvino
def test_auto_picks_the_fastest_measured_keeps_it_and_remeasures_on_another_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    calls = []

    def fake_measure(build, candidates, window):
        calls.append(list(candidates))
        build("openvino", "float32", 1)  # converts the model beside the checkpoint, as the real one does
        return _rows(("torch", "bfloat16"), candidates)

    monkeypatch.setattr(engine_choice, "measure_candidates", fake_measure)
    engine = make_engine(model, "auto", "cpu", "auto", PATCH, batch_size=2, checkpoint=ckpt)
    assert (engine.name, engine.precision) == ("torch", "bf16") and len(calls) == 1
    assert "measured now" in engine.reason and "fastest of 4" in engine.reason
    kept = json.loads((openvino_cache_dir(ckpt) / CHOICE_FILE).read_text())
    assert kept["cpu"] == cpu_signature() and kept["chosen"]["engine"] == "torch"
    assert kept["chosen"]["precision"] == "bfloat16" and len(kept["timings"]) == 4

    again = make_engine(model, "auto", "cpu", "auto", PATCH, batch_size=2, checkpoint=ckpt)
    assert (again.name, again.precision) == ("torch", "bf16") and len(calls) == 1  # the kept choice
    assert "kept in engine_choice.json" in again.reason

    kept["cpu"]["model"] = "another CPU"
    (openvino_cache_dir(ckpt) / CHOICE_FILE).write_text(json.dumps(kept))
    make_engine(model, "auto", "cpu", "auto", PATCH, batch_size=2, checkpoint=ckpt)
    assert len(calls) == 2  # another CPU: measured again
    assert json.loads((openvino_cache_dir(ckpt) / CHOICE_FILE).read_text())["cpu"] == cpu_signature()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("engine: torch bf16 (auto: fastest of 4") for line in lines)


@needs_openvino
def test_auto_measures_for_real_and_caches_the_compiled_model(monkeypatch, tmp_path):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    engine = make_engine(model, "auto", "cpu", "auto", PATCH, batch_size=2, checkpoint=ckpt)
    folder = openvino_cache_dir(ckpt)
    kept = json.loads((folder / CHOICE_FILE).read_text())
    assert [(r["engine"], r["precision"]) for r in kept["timings"]] == [("openvino", "float32"), ("torch", "float32")]
    assert all(r["warm_up_s"] > 0 for r in kept["timings"])
    timed = [r for r in kept["timings"] if r["seconds"] is not None]
    best = min(timed, key=lambda r: r["seconds"])
    assert (engine.name, "float32") == (best["engine"], best["precision"])
    assert any((folder / "compiled").iterdir())  # OpenVINO's CACHE_DIR: the compiled blob
    x = torch.randn(3, 4, *PATCH)
    with torch.no_grad():
        expected = model(x)
    assert (engine(x) - expected).abs().max() < 1e-3


def test_on_a_gpu_auto_stays_torch(monkeypatch):
    monkeypatch.setattr(engines, "resolve_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(engine_choice, "measure_candidates", lambda *a, **k: pytest.fail("measured off the CPU"))
    monkeypatch.setattr(engines, "_torch_engine", lambda model, dev, precision: engines.Engine(
        "torch", "fp32", "stub", lambda x: x))
    assert make_engine(tiny_unet(), "auto", "cuda", "float32", PATCH).name == "torch"
