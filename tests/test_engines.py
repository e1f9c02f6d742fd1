"""Inference engines (``tumorlib.inference.engines``): torch, OpenVINO, auto, the converted-model cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tumorlib.core.device import CPU_BF16_ENV
from tumorlib.inference import engines, openvino_model
from tumorlib.inference.engines import make_engine, resolve_engine
from tumorlib.inference.openvino_model import openvino_cache_dir
from tumorlib.inference.sliding_window import sliding_window_inference
from tumorlib.nn.checkpoint import atomic_torch_save
from tumorlib.nn.unet import UNet3D

from constant_runs import tiny_checkpoint, tiny_unet

PATCH = (16, 16, 16)
HAS_OPENVINO = openvino_model.openvino_available()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed "
                                    "(pip install 'tumorlib[openvino]')")


@pytest.fixture
def no_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError


def test_torch_engine_is_the_model_in_float32():
    model = tiny_unet()
    engine = make_engine(model, "torch", "cpu", "float32", PATCH, batch_size=2)
    x = torch.randn(3, 4, *PATCH)
    with torch.no_grad():
        expected = model(x)
    assert engine.name == "torch" and engine.precision == "fp32" and engine.threads == torch.get_num_threads()
    torch.testing.assert_close(engine(x), expected)


@pytest.mark.parametrize("forced, precision", [("0", "fp32"), ("1", "bf16")])
def test_torch_engine_auto_precision_follows_the_cpu_probe(monkeypatch, forced, precision):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    engine = make_engine(tiny_unet(), "torch", "cpu", "auto", PATCH)
    assert engine.precision == precision
    out = engine(torch.randn(1, 4, *PATCH))
    assert out.dtype == torch.float32 and out.shape == (1, 3, *PATCH)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("tensorrt", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        make_engine(tiny_unet(), "torch", "cpu", "half", PATCH)
    with pytest.raises(ValueError, match="CUDA only"):
        make_engine(tiny_unet(), "torch", "cpu", "float16", PATCH)


def test_openvino_asked_for_on_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_engine("openvino", "cuda")
    assert resolve_engine("auto", "cuda") == "torch"


def test_without_openvino_auto_is_torch_and_openvino_names_the_install(no_openvino):
    assert not openvino_model.openvino_available()
    assert resolve_engine("auto", "cpu") == "torch"
    engine = make_engine(tiny_unet(), "auto", "cpu", "float32", PATCH)
    assert engine.name == "torch"
    with pytest.raises(ValueError, match=r"pip install .*openvino"):
        make_engine(tiny_unet(), "openvino", "cpu", "float32", PATCH)


@needs_openvino
def test_auto_is_openvino_on_the_cpu_when_installed():
    assert resolve_engine("auto", "cpu") == "openvino"


_SIGNAL_AFTER_ENGINES = """
import gc, os, signal, sys
import torch
from tumorlib.inference.engines import make_engine
from tumorlib.nn.unet import UNet3D
model = UNet3D(4, 3, (4, 8, 16)).eval()
first = make_engine(model, "openvino", "cpu", "float32", (16, 16, 16), batch_size=1)
second = make_engine(model, "openvino", "cpu", "float32", (16, 16, 16), batch_size=2)
del first; gc.collect()  # freed in the order made, not the reverse
del second; gc.collect()
signal.signal(signal.SIGUSR1, lambda *args: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive")
"""


@pytest.mark.slow  # subprocesses (or a signal): seconds each
@needs_openvino
def test_engines_freed_in_any_order_leave_signal_handlers_working():
    """Two OpenVINO Cores freed in the order made left a freed signal stack: the next Python signal handler
    (Ctrl-C, a child process ending) was a SIGSEGV. Engines share the process's one Core."""
    assert openvino_model.openvino_core() is openvino_model.openvino_core()
    result = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_ENGINES], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.split() == ["handled", "alive"]


@needs_openvino
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_openvino_matches_torch_for_any_batch(n):
    model = tiny_unet()
    engine = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=2)
    x = torch.randn(n, 4, *PATCH)
    with torch.no_grad():
        expected = model(x)
    out = engine(x)
    assert engine.name == "openvino" and engine.precision == "fp32" and engine.cache is None
    assert engine.threads >= 1  # the compiled model's INFERENCE_NUM_THREADS
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert (out - expected).abs().max() < 1e-3
    with pytest.raises(ValueError, match="compiled for windows"):
        engine(torch.randn(1, 4, 8, 16, 16))


@needs_openvino
def test_openvino_bf16_is_close_and_works_in_the_sliding_window(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    model = tiny_unet()
    engine = make_engine(model, "openvino", "cpu", "auto", PATCH, batch_size=3)
    assert engine.precision == "bf16"
    image = torch.randn(1, 4, 20, 24, 30)
    got = sliding_window_inference(image, engine, PATCH, overlap=0.5, batch_size=3)
    ref = sliding_window_inference(image, make_engine(model, "torch", "cpu", "float32", PATCH), PATCH,
                                   overlap=0.5, batch_size=3)
    assert got.shape == ref.shape == (1, 3, 20, 24, 30)
    assert (got - ref).abs().max() < 0.1


@needs_openvino
def test_openvino_cache_is_kept_reused_and_rebuilt(tmp_path, monkeypatch):
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    engine = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=2, checkpoint=ckpt)
    folder = openvino_cache_dir(ckpt)
    assert engine.cache == folder == tmp_path / "checkpoints" / "best_model.openvino"
    assert sorted(p.name for p in folder.iterdir()) == ["compiled", "model.bin", "model.xml", "source.json"]
    assert any((folder / "compiled").iterdir())  # OpenVINO's CACHE_DIR: the compiled model, for later runs
    source = json.loads((folder / "source.json").read_text())
    assert source["patch_size"] == list(PATCH) and source["checkpoint_record"]["blake2b"]
    x = torch.randn(2, 4, *PATCH)
    first = engine(x)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache matches")

    monkeypatch.setattr(openvino_model, "convert_openvino", no_conversion)
    again = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=3, checkpoint=ckpt)
    torch.testing.assert_close(again(x), first)  # the same IR serves another batch size
    monkeypatch.undo()

    other = tiny_unet(seed=1)
    atomic_torch_save({"model": other.state_dict(), "config": {}}, ckpt)  # the checkpoint changes
    rebuilt = make_engine(other, "openvino", "cpu", "float32", PATCH, batch_size=2, checkpoint=ckpt)
    with torch.no_grad():
        expected = other(x)
    assert (rebuilt(x) - expected).abs().max() < 1e-3
    assert json.loads((folder / "source.json").read_text())["checkpoint_record"] != source["checkpoint_record"]


@needs_openvino
def test_openvino_cache_never_replaces_foreign_files(tmp_path):
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    folder = openvino_cache_dir(ckpt)
    folder.mkdir()
    (folder / "model.xml").write_text("someone else's model")
    with pytest.warns(UserWarning, match="did not write"):
        engine = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=1, checkpoint=ckpt)
    assert engine.cache is None
    assert (folder / "model.xml").read_text() == "someone else's model"
    assert not (folder / "source.json").exists()
    assert engine(torch.randn(1, 4, *PATCH)).shape == (1, 3, *PATCH)


@needs_openvino
def test_openvino_interrupted_cache_is_rebuilt(tmp_path):
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)
    make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=1, checkpoint=ckpt)
    folder = openvino_cache_dir(ckpt)
    (folder / "model.bin").write_bytes(b"truncated")  # a damaged file of ours
    engine = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=1, checkpoint=ckpt)
    assert engine.cache == folder
    x = torch.randn(1, 4, *PATCH)
    with torch.no_grad():
        assert (engine(x) - model(x)).abs().max() < 1e-3


@needs_openvino
def test_openvino_cache_in_a_read_only_folder_converts_in_memory(tmp_path, monkeypatch):
    model = tiny_unet()
    ckpt = tiny_checkpoint(tmp_path, model)

    def read_only(*args, **kwargs):
        raise PermissionError(f"cannot write {tmp_path}: its folder is read-only")

    monkeypatch.setattr(openvino_model, "_write_cache", read_only)
    with pytest.warns(UserWarning, match="converted in memory"):
        engine = make_engine(model, "openvino", "cpu", "float32", PATCH, batch_size=1, checkpoint=ckpt)
    assert engine.cache is None and engine(torch.randn(1, 4, *PATCH)).shape == (1, 3, *PATCH)
