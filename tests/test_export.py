"""Exporting a run's model (``tumorlib.inference.export``): ONNX / OpenVINO files, contract, safe folders."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tumorlib.app.cli import main
from tumorlib.core.brats import CANONICAL_ORDER, CLASS_KEYS
from tumorlib.core.config import get_config
from tumorlib.core.safety import OutputIsInputError
from tumorlib.inference.openvino_model import openvino_core
from tumorlib.inference.export import CONTRACT_NAME, export_model, read_contract
from tumorlib.nn.checkpoint import atomic_torch_save
from tumorlib.nn.unet import model_from_config


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


HAS_ORT = _installed("onnxruntime")
HAS_OPENVINO = _installed("openvino")


@pytest.fixture
def run_dir(tmp_path):
    """A run folder of the ci preset's model with random weights (config.json + best_model.pth)."""
    config = get_config("ci")
    torch.manual_seed(0)
    model = model_from_config(config)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config.save(run / "config.json")
    atomic_torch_save({"model": model.state_dict(), "config": config.to_dict(), "epoch": 3,
                       "metrics": {"dice": 0.5}}, run / "checkpoints" / "best_model.pth")
    return run


def _torch_logits(run, x: np.ndarray) -> np.ndarray:
    from tumorlib.inference.predictor import load_run

    model, _ = load_run(run, device="cpu")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _runtime_logits(out, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx" and HAS_ORT:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"image": x})[0]
    core = openvino_core()
    model = core.read_model(str(out / ("model.xml" if fmt == "openvino" else "model.onnx")))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[compiled.outputs[0]]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_model_matches_torch(run_dir, tmp_path, fmt):
    if not (HAS_OPENVINO or (fmt == "onnx" and HAS_ORT)):
        pytest.skip(f"no runtime for {fmt}: install onnxruntime or openvino (pip install onnxruntime openvino)")
    out = tmp_path / f"export-{fmt}"
    contract_path = export_model(run_dir, fmt, out)
    assert contract_path == out / CONTRACT_NAME
    contract = json.loads(contract_path.read_text())
    config = get_config("ci")
    patch = list(config.patch_size)
    assert contract["input"]["shape"] == [1, 4, *patch]
    assert contract["input"]["channel_order"] == list(CANONICAL_ORDER)
    assert "z-score" in contract["input"]["normalisation"]["method"]
    assert contract["output"]["channels"] == list(CLASS_KEYS)
    assert "sigmoid" in contract["output"]["activation"]
    assert contract["output"]["decoding"]["threshold"] == config.threshold
    assert contract["checkpoint"]["record"]["blake2b"] and contract["checkpoint"]["epoch"] == 3
    assert set(contract["files"]) == ({"model.onnx"} if fmt == "onnx" else {"model.xml", "model.bin"})
    x = np.random.default_rng(0).standard_normal((1, 4, *patch)).astype(np.float32)
    got, expected = _runtime_logits(out, fmt, x), _torch_logits(run_dir, x)
    assert got.shape == expected.shape == (1, 3, *patch)
    assert np.abs(got - expected).max() < 1e-3


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime (pip install 'tumorlib[onnx]')")
def test_onnx_export_takes_any_batch(run_dir, tmp_path):
    out = tmp_path / "e"
    export_model(run_dir, "onnx", out)
    x = np.random.default_rng(1).standard_normal((2, 4, *get_config("ci").patch_size)).astype(np.float32)
    np.testing.assert_allclose(_runtime_logits(out, "onnx", x), _torch_logits(run_dir, x), atol=1e-3)


def test_onnx_is_a_dependency():
    """``export --format onnx`` works on the default install: the package torch's exporter needs is required."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(r.split(">")[0].strip() == "onnx" for r in pyproject["project"]["dependencies"])


def test_onnx_export_without_onnxruntime(run_dir, tmp_path):
    """The export itself needs onnx only: the file checks, names its input and output, and has a batch axis."""
    import onnx

    out = tmp_path / "e"
    export_model(run_dir, "onnx", out)
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    patch = list(get_config("ci").patch_size)
    (image,), (logits,) = model.graph.input, model.graph.output
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (image, logits)]
    assert (image.name, logits.name) == ("image", "logits")
    assert dims == [["batch", 4, *patch], ["batch", 3, *patch]]


def test_onnx_export_without_onnx_names_the_extra(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ValueError, match=r"needs the 'onnx' package.*pip install 'tumorlib\[onnx\]'") as info:
        export_model(run_dir, "onnx", tmp_path / "e")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "e").exists()
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'tumorlib[onnx]'" in err, err
    assert not (tmp_path / "e").exists()


def test_torch_exporter_missing_a_package_names_the_extra(run_dir, tmp_path, monkeypatch):
    """torch's own "Module onnx is not installed!" (its import failing later than ours) becomes the same line."""
    def export(*args, **kwargs):
        raise torch.onnx.errors.OnnxExporterError("Module onnx is not installed!")

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(ValueError, match=r"pip install 'tumorlib\[onnx\]'"):
        export_model(run_dir, "onnx", tmp_path / "e")
    assert not (tmp_path / "e" / "model.onnx").exists()


def test_openvino_export_without_openvino_names_the_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ValueError, match=r"pip install .*openvino"):
        export_model(run_dir, "openvino", tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_unknown_format_is_refused(run_dir, tmp_path):
    with pytest.raises(ValueError, match="export format must be one of"):
        export_model(run_dir, "tflite", tmp_path / "e")


@pytest.mark.parametrize("where", ["run", "checkpoints", "inside_checkpoints", "parent", "checkpoint_file"])
def test_out_dir_that_is_an_input_is_refused(run_dir, where):
    out = {"run": run_dir, "checkpoints": run_dir / "checkpoints",
           "inside_checkpoints": run_dir / "checkpoints" / "export", "parent": run_dir.parent,
           "checkpoint_file": run_dir / "checkpoints" / "best_model.pth"}[where]
    with pytest.raises(OutputIsInputError):
        export_model(run_dir, "onnx", out)


def test_foreign_files_are_never_replaced(run_dir, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        export_model(run_dir, "onnx", out)
    contract = export_model(run_dir, "onnx", out, overwrite=True)  # beside them with --overwrite
    assert (out / "notes.txt").read_text() == "mine" and contract.is_file()
    other = tmp_path / "f"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"someone else's model")
    with pytest.raises(FileExistsError, match="never replaced"):
        export_model(run_dir, "onnx", other, overwrite=True)
    assert (other / "model.onnx").read_bytes() == b"someone else's model"


def test_overwrite_never_replaces_a_model_put_in_place_of_the_exported_one(run_dir, tmp_path):
    out = tmp_path / "e"
    export_model(run_dir, "onnx", out)
    (out / "model.onnx").write_bytes(b"my fine-tuned model")  # the contract still names model.onnx
    with pytest.raises(FileExistsError, match="never replaced"):
        export_model(run_dir, "onnx", out, overwrite=True)
    assert (out / "model.onnx").read_bytes() == b"my fine-tuned model"
    export_model(run_dir, "onnx", tmp_path / "f")
    size = (tmp_path / "f" / "model.onnx").stat().st_size
    (tmp_path / "f" / "model.onnx").write_bytes(b"x" * size)  # another model of the same size: still not ours
    with pytest.raises(FileExistsError, match="never replaced"):
        export_model(run_dir, "onnx", tmp_path / "f", overwrite=True)
    assert (tmp_path / "f" / "model.onnx").read_bytes() == b"x" * size


def test_an_earlier_export_needs_overwrite(run_dir, tmp_path):
    out = tmp_path / "e"
    export_model(run_dir, "onnx", out)
    first = read_contract(out)
    with pytest.raises(FileExistsError, match="earlier export"):
        export_model(run_dir, "onnx", out)
    export_model(run_dir, "onnx", out, overwrite=True)
    assert read_contract(out)["checkpoint"] == first["checkpoint"]
    if HAS_OPENVINO:  # another format replaces the earlier export's own files only
        export_model(run_dir, "openvino", out, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == ["contract.json", "model.bin", "model.xml"]
