"""The device rule and the precision rule (``tumorlib.core.device``): CPU bf16 probe, CUDA branches."""

from __future__ import annotations

import types

import pytest
import torch

from tumorlib.core import device as device_mod
from tumorlib.core.device import CPU_BF16_ENV, auto_amp_dtype, cpu_bf16_support, precision_name, resolve_device

_FLAGS = "fpu vme de pse tsc msr pae mce cx8 sse sse2 avx avx2 avx512f"


def _cpuinfo(tmp_path, extra: str = "") -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {_FLAGS} {extra}\n\n")
    return str(path)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    device_mod._probe_cpu_bf16.cache_clear()
    yield
    device_mod._probe_cpu_bf16.cache_clear()


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_cpu_probe_finds_native_bf16(tmp_path, flag):
    ok, why = cpu_bf16_support(_cpuinfo(tmp_path, flag))
    assert ok and flag in why


def test_cpu_probe_without_flags_is_float32(tmp_path):
    ok, why = cpu_bf16_support(_cpuinfo(tmp_path, "avx512_vnni amx_tile"))
    assert not ok and "no amx_bf16" in why


def test_cpu_probe_unreadable_file(tmp_path):
    ok, why = cpu_bf16_support(tmp_path / "missing")
    assert not ok and "unknown" in why


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True)])
def test_env_forces_the_probe(tmp_path, monkeypatch, value, expected):
    monkeypatch.setenv(CPU_BF16_ENV, value)
    with_flag = _cpuinfo(tmp_path, "amx_bf16")
    assert cpu_bf16_support(with_flag)[0] is expected
    assert cpu_bf16_support(tmp_path / "missing")[0] is expected


def test_env_other_values_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "maybe")
    assert cpu_bf16_support(_cpuinfo(tmp_path, "avx512_bf16"))[0] is True


@pytest.mark.parametrize("value, expected", [("1", "bfloat16"), ("0", None)])
def test_auto_amp_dtype_on_cpu_follows_the_probe(monkeypatch, value, expected):
    monkeypatch.setenv(CPU_BF16_ENV, value)
    dtype, why = auto_amp_dtype("cpu")
    assert dtype == expected
    assert "CPU" in why and CPU_BF16_ENV in why


def test_auto_amp_dtype_on_cpu_reads_the_real_probe(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_bf16_support", lambda: (False, "no flag"))
    assert auto_amp_dtype("cpu") == (None, "float32 on the CPU: no flag")
    monkeypatch.setattr(device_mod, "cpu_bf16_support", lambda: (True, "amx_bf16"))
    assert auto_amp_dtype(torch.device("cpu"))[0] == "bfloat16"


def _fake_cuda(monkeypatch, major: int, bf16_reported: bool = True, hip: str | None = None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_reported)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(major=major, minor=0, name=f"cc{major}"))
    monkeypatch.setattr(torch.version, "hip", hip)


def test_t4_gets_float16_even_when_bf16_is_reported(monkeypatch):
    _fake_cuda(monkeypatch, major=7, bf16_reported=True)  # T4: compute capability 7.5, bf16 only emulated
    dtype, why = auto_amp_dtype("cuda")
    assert dtype == "float16" and "GradScaler" in why


def test_a100_gets_bfloat16(monkeypatch):
    _fake_cuda(monkeypatch, major=8)
    assert auto_amp_dtype("cuda:0")[0] == "bfloat16"
    assert auto_amp_dtype(None)[0] == "bfloat16"  # auto resolves to the visible GPU


def test_rocm_gets_bfloat16(monkeypatch):
    _fake_cuda(monkeypatch, major=9, hip="6.0")
    dtype, why = auto_amp_dtype("cuda")
    assert dtype == "bfloat16" and "ROCm" in why


def test_cuda_branch_ignores_the_cpu_probe(monkeypatch):
    _fake_cuda(monkeypatch, major=7)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert auto_amp_dtype("cuda")[0] == "float16"


def test_resolve_device_rules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("tpu-ish")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device(None, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", local_rank=1) == torch.device("cuda", 3)


def test_precision_names():
    assert precision_name("bfloat16") == "bf16"
    assert precision_name(torch.float16) == "fp16"
    assert precision_name(None) == "fp32"
    assert precision_name(torch.float32) == "fp32"


def test_worker_processes_never_fork_a_process_running_openvino(monkeypatch):
    """``process_context``: the default start method until a fork-unsafe library (OpenVINO) is loaded in
    this process, then ``forkserver``; the cache build and the DataLoader both start workers with it."""
    import multiprocessing
    import sys
    import types

    from tumorlib.core.device import FORK_UNSAFE_MODULES, process_context

    for name in FORK_UNSAFE_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert process_context().get_start_method() == multiprocessing.get_context().get_start_method()
    monkeypatch.setitem(sys.modules, "openvino", types.ModuleType("openvino"))
    assert process_context().get_start_method() in ("forkserver", "spawn")
    from tumorlib.core.config import get_config
    from tumorlib.data.dataset import make_loader

    loader = make_loader(list(range(4)), get_config("ci"), num_workers=1)
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
