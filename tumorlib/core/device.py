"""The one device rule and the one precision rule.

Every command, notebook and benchmark asks these two functions instead of deciding for itself:

- ``resolve_device``: the device asked for (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``), or,
  for None / ``"auto"``, CUDA GPU ``local_rank`` when one is visible, else the CPU. CUDA asked for where
  there is none is a one-line error.
- ``auto_amp_dtype``: the autocast dtype a device computes fast. On CUDA: bf16 on cards with native bf16
  (compute capability 8.0 and up: A100, H100, L4, RTX 30xx/40xx; and ROCm), fp16 with a GradScaler on
  older cards (T4, V100, P100), whose bf16 ``torch.cuda.is_bf16_supported()`` reports as supported only
  by emulation. On the CPU: bf16 where it computes bf16 natively (``cpu_bf16_support``), else float32.
  Elsewhere float32.

``cpu_bf16_support`` probes whether the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16 in the CPU
flags), without guessing from the model name; ``TUMORLIB_CPU_BF16=0`` (or ``1``) forces the answer.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["AMP_DTYPES", "FORK_UNSAFE_MODULES", "PRECISION_NAMES", "auto_amp_dtype", "cpu_bf16_support",
           "cpu_signature", "precision_name", "process_context", "resolve_device"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16", None: "fp32"}
CPU_BF16_ENV = "TUMORLIB_CPU_BF16"
#: Libraries whose thread pools do not survive a ``fork``: once one is imported in this process (OpenVINO's
#: engine, ``--engine auto``), worker processes start by ``forkserver`` instead (a child forked from a
#: process with a running OpenVINO pool can crash, SIGSEGV).
FORK_UNSAFE_MODULES: tuple[str, ...] = ("openvino",)


def process_context() -> Any:
    """The ``multiprocessing`` context tumorlib starts worker processes with (cache build, DataLoader).

    The platform's default (``fork`` on Linux: fast, nothing re-imported), except after a library of
    ``FORK_UNSAFE_MODULES`` was loaded in this process, where ``forkserver`` starts workers from a clean
    server process instead (``spawn`` where there is no ``forkserver``, on Windows).
    """
    import multiprocessing
    import sys

    if any(name in sys.modules for name in FORK_UNSAFE_MODULES):
        methods = multiprocessing.get_all_start_methods()
        return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return multiprocessing.get_context()
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The device to run on.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or None / ``"auto"`` (CUDA when
            available, else the CPU).
        local_rank: the GPU index used when ``device`` is automatic or ``"cuda"`` without an index.

    Returns:
        The device.

    Raises:
        ValueError: an unknown device name, or CUDA asked for where it is not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name (use cpu, cuda, cuda:N or auto)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {dev} asked for, but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def _cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def _probe_cpu_bf16(cpuinfo: str) -> tuple[bool, str]:
    flags = _cpu_flags(cpuinfo)
    found = [f for f in _BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU computes bf16 natively ({', '.join(found)})"
    if flags:
        return False, "CPU without native bf16 (no amx_bf16 or avx512_bf16 flag)"
    return False, "CPU bf16 support unknown (no CPU flags readable)"


def cpu_bf16_support(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, with the reason.

    Args:
        cpuinfo: the file listing the CPU flags (Linux's ``/proc/cpuinfo``; elsewhere absent, so False).

    Returns:
        ``(supported, reason)``; ``TUMORLIB_CPU_BF16=0`` or ``1`` overrides the probe.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{CPU_BF16_ENV}={forced}"
    return _probe_cpu_bf16(str(cpuinfo))


def cpu_signature(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """What a CPU speed measurement holds for: the CPU model, its bf16 flags and the thread counts.

    Args:
        cpuinfo: Linux's CPU listing (its first ``model name``); elsewhere ``platform.processor()`` or
            ``platform.machine()`` names the CPU.

    Returns:
        ``{"model", "bf16_flags", "torch_threads", "cpu_count"}``; equal signatures: the same kind of CPU.
    """
    model = ""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = _cpu_flags(cpuinfo)
    return {"model": model or platform.processor() or platform.machine(),
            "bf16_flags": [f for f in _BF16_FLAGS if f in flags],
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def auto_amp_dtype(device: str | torch.device | None = None) -> tuple[str | None, str]:
    """The autocast dtype that ``amp_dtype=auto`` means on ``device``, with the reason.

    Args:
        device: the device (None: ``resolve_device()``).

    Returns:
        ``("bfloat16" | "float16" | None, reason)``; None means float32.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        if torch.version.hip:
            return "bfloat16", "ROCm GPU: bf16, no GradScaler needed"
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major = torch.cuda.get_device_properties(index).major
        if major >= 8:
            return "bfloat16", "bf16 native on this GPU: no GradScaler needed, same range as fp32"
        return "float16", f"GPU of compute capability {major}.x has no native bf16: fp16 with a GradScaler"
    if dev.type == "cpu":
        native, why = cpu_bf16_support()
        if native:
            return "bfloat16", f"bf16 on the CPU: {why}"
        return None, f"float32 on the CPU: {why}"
    return None, f"float32 on {dev.type}"


def precision_name(dtype: str | torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for an autocast dtype name, a ``torch.dtype`` or None."""
    if isinstance(dtype, torch.dtype):
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype)
    return PRECISION_NAMES.get(dtype, "fp32")

