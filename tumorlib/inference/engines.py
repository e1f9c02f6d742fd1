"""Inference engines: what runs a batch of windows through the trained network.

``make_engine`` returns a callable ``(N, C, d, h, w) float32 tensor -> (N, K, d, h, w) float32 logits``
that ``sliding_window_inference`` takes as its predictor (the sliding window, flip TTA and decoding stay
as they are around it). Engines:

- ``"torch"``: the model itself, without gradients, under autocast at the precision asked for.
- ``"openvino"``: the model converted by ``openvino.convert_model`` and compiled for the CPU with a static
  input shape (``batch_size`` windows of ``patch_size``; a smaller last batch is zero-padded and cropped
  back), ``INFERENCE_PRECISION_HINT`` ``bf16`` where the CPU computes bf16 natively, else ``f32``.
- ``"auto"``: on the CPU, the fastest of the allowed engines and precisions, measured on first use
  (``tumorlib.inference.engine_choice``); torch where openvino is not installed or off the CPU.

Precisions: ``"auto"`` (``tumorlib.core.device.auto_amp_dtype``), ``"float32"``, ``"bfloat16"``,
``"float16"`` (torch on CUDA only).

The converted model and its cache beside the checkpoint: ``tumorlib.inference.openvino_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tumorlib.core.device import AMP_DTYPES, auto_amp_dtype, cpu_bf16_support, precision_name, resolve_device
from tumorlib.inference.engine_choice import choose_engine
from tumorlib.inference.openvino_model import (cache_is_ours, import_openvino, load_openvino_model,
                                               openvino_available, openvino_cache_dir, openvino_core)

__all__ = ["ENGINES", "PRECISIONS", "Engine", "make_engine", "resolve_engine"]

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_engine(engine: str = "auto", device: str | torch.device | None = "cpu") -> str:
    """The engine that ``engine`` means on ``device``: ``"torch"`` or ``"openvino"``.

    Args:
        engine: ``"auto"``, ``"torch"`` or ``"openvino"``.
        device: where the windows run (OpenVINO runs on the CPU only).

    Returns:
        ``"openvino"`` for ``"openvino"``, and for ``"auto"`` on the CPU when openvino is installed (where
        ``make_engine`` then measures which candidate is fastest); else ``"torch"``.

    Raises:
        ValueError: an unknown engine, openvino asked for but not installed, or asked for on a GPU.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    dev = resolve_device(device)
    if engine == "openvino":
        if dev.type != "cpu":
            raise ValueError(f"engine 'openvino' runs on the CPU, but device {dev} was asked for; "
                             "use --device cpu or --engine torch")
        import_openvino()
        return "openvino"
    if engine == "auto" and dev.type == "cpu" and openvino_available():
        return "openvino"
    return "torch"


def _torch_dtype(precision: str, dev: torch.device) -> tuple[torch.dtype | None, str]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        name, why = auto_amp_dtype(dev)
    else:
        name, why = (None if precision == "float32" else precision), f"{precision} asked for"
    if name == "float16" and dev.type != "cuda":
        raise ValueError(f"precision float16 runs on CUDA only, not on {dev}; use bfloat16 or float32")
    return (None if name is None else AMP_DTYPES[name]), why


class Engine:
    """A predictor for ``sliding_window_inference``: ``engine(x)`` gives float32 logits on ``x``'s device.

    Attributes:
        name: ``"torch"`` or ``"openvino"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        reason: why that engine and precision (one line).
        cache: the converted-model folder used (OpenVINO with a checkpoint), else None.
        threads: the CPU threads it computes with (torch: ``torch.get_num_threads()`` when it was made;
            OpenVINO: the compiled model's ``INFERENCE_NUM_THREADS``), None where unknown.
    """

    def __init__(self, name: str, precision: str, reason: str, run: Callable[[torch.Tensor], torch.Tensor],
                 cache: Path | None = None, threads: int | None = None) -> None:
        self.name, self.precision, self.reason, self.cache, self.threads = name, precision, reason, cache, threads
        self._run = run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def describe(self) -> str:
        """``"openvino bf16 (reason)"``: what runs, for logs and result files."""
        return f"{self.name} {self.precision} ({self.reason})"


def _torch_engine(model: torch.nn.Module, dev: torch.device, precision: str) -> Engine:
    dtype, why = _torch_dtype(precision, dev)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if dtype is None:
                return model(x).float()
            with torch.autocast(device_type=dev.type, dtype=dtype):
                return model(x).float()

    threads = torch.get_num_threads() if dev.type == "cpu" else None
    return Engine("torch", precision_name(dtype), why, run, threads=threads)


# --------------------------------------------------------------------------- OpenVINO conversion and cache


def _openvino_hint(precision: str) -> tuple[str, str]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float16":
        raise ValueError("precision float16 is for torch on CUDA; OpenVINO on the CPU takes bfloat16 or float32")
    if precision == "auto":
        native, why = cpu_bf16_support()
        return ("bf16" if native else "f32"), why
    return ("bf16" if precision == "bfloat16" else "f32"), f"{precision} asked for"


def _openvino_engine(model: torch.nn.Module, patch_size: Sequence[int], batch_size: int, precision: str,
                     checkpoint: str | os.PathLike | None, cache_dir: str | os.PathLike | None) -> Engine:
    hint, why = _openvino_hint(precision)
    ov_model, folder = load_openvino_model(model, patch_size, checkpoint, cache_dir)
    channels = int(ov_model.inputs[0].get_partial_shape()[1].get_length())
    shape = (int(batch_size), channels, *(int(p) for p in patch_size))
    ov_model.reshape({0: list(shape)})
    options = {"INFERENCE_PRECISION_HINT": hint}
    if folder is not None and os.access(folder, os.W_OK):  # the compiled-model cache: later runs skip compiling
        options["CACHE_DIR"] = str(folder / "compiled")
    compiled = openvino_core().compile_model(ov_model, "CPU", options)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != shape[1:]:
            raise ValueError(f"the OpenVINO engine was compiled for windows {shape[1:]}, got {tuple(x.shape)}")
        outs = []
        for first in range(0, x.shape[0], shape[0]):
            chunk = x[first:first + shape[0]].detach().to("cpu", torch.float32)
            n = chunk.shape[0]
            batch = np.zeros(shape, np.float32)
            batch[:n] = chunk.numpy()
            result = request.infer({0: batch})[compiled.outputs[0]]
            outs.append(torch.from_numpy(np.array(result[:n], dtype=np.float32)))
        return torch.cat(outs).to(x.device)

    try:
        threads: int | None = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    except (RuntimeError, TypeError, ValueError):  # an OpenVINO without the property (only reported)
        threads = None
    return Engine("openvino", "bf16" if hint == "bf16" else "fp32", why, run, folder, threads)


def make_engine(model: torch.nn.Module, engine: str = "auto", device: str | torch.device | None = "cpu",
                precision: str = "auto", patch_size: Sequence[int] = (64, 160, 160), batch_size: int = 4,
                checkpoint: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None) -> Engine:
    """The predictor that runs windows through ``model`` on the engine asked for.

    Args:
        model: the trained network, in eval mode, on ``device`` (torch engine) or the CPU.
        engine: ``"auto"`` (measured: ``engine_choice.choose_engine``), ``"torch"`` or ``"openvino"``.
        device: where the windows run.
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (torch on CUDA).
        patch_size: the window (d, h, w) (OpenVINO compiles for it).
        batch_size: windows per call (``config.sw_batch_size``; OpenVINO's static batch).
        checkpoint: the checkpoint ``model`` was loaded from; OpenVINO caches its conversion beside it.
        cache_dir: the converted-model folder (None: ``openvino_cache_dir(checkpoint)``).

    Returns:
        The ``Engine`` (a callable: (N, C, d, h, w) float32 -> (N, K, d, h, w) float32 logits).

    Raises:
        ValueError: an unknown engine or precision, or openvino asked for where it is not installed
            (names the install command) or on a GPU.
    """
    name = resolve_engine(engine, device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine == "auto" and resolve_device(device).type == "cpu":  # measured: engine_choice.choose_engine
        folder = Path(cache_dir) if cache_dir is not None else checkpoint and openvino_cache_dir(checkpoint)
        return choose_engine(lambda e, p, b: make_engine(model, e, "cpu", p, patch_size, b, checkpoint, cache_dir),
                             precision, (int(getattr(model, "in_channels", 4)), *patch_size), openvino_available(),
                             checkpoint, folder or None, cache_is_ours, batch_size)
    if name == "openvino":
        return _openvino_engine(model, patch_size, batch_size, precision, checkpoint, cache_dir)
    return _torch_engine(model, resolve_device(device), precision)
