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

The converted model of a checkpoint is cached beside it, ``best_model.pth`` ->
``best_model.openvino/{model.xml, model.bin, source.json}``, as float32 IR (the precision is chosen when it
is compiled, so one cache serves both). ``source.json`` holds the checkpoint's fingerprint (size, mtime,
blake2b), the patch size and the records of the two model files; OpenVINO's compiled-model cache
(``CACHE_DIR``) is its ``compiled/`` subfolder, so later runs skip the compilation. A cache that does not match is rebuilt,
each file written atomically. Files in that folder that tumorlib did not write are never replaced: the
model is then converted in memory and a warning says why (as where the folder cannot be written).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorlib.core.device import AMP_DTYPES, auto_amp_dtype, cpu_bf16_support, precision_name, resolve_device
from tumorlib.core.integrity import file_record, record_problem
from tumorlib.core.safety import atomic_write
from tumorlib.inference.engine_choice import choose_engine

__all__ = [
    "CACHE_FILES",
    "ENGINES",
    "OPENVINO_INSTALL",
    "PRECISIONS",
    "Engine",
    "checkpoint_fingerprint",
    "convert_openvino",
    "import_openvino",
    "load_openvino_model",
    "make_engine",
    "openvino_available",
    "openvino_cache_dir",
    "resolve_engine",
    "save_openvino",
]

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
OPENVINO_INSTALL = "pip install 'tumorlib[openvino]' (or: pip install openvino)"
#: The files of a converted-model cache, ``source.json`` last (it says the other two are complete).
CACHE_FILES = ("model.xml", "model.bin", "source.json")
_CACHE_FORMAT = 1
_WRITER = "tumorlib.inference.engines"


def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        ValueError: it is not installed (names the install command).
    """
    try:
        import openvino
    except ImportError as err:
        raise ValueError(f"engine 'openvino' asked for, but openvino is not installed ({err}); "
                         f"install it with {OPENVINO_INSTALL}, or use --engine torch") from err
    return openvino


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and kept until exit.

    Every ``Core`` loads its own CPU plugin, and each plugin swaps in its own signal stack and puts back the
    one it found when it is freed. Two Cores freed in the order they were made leave the thread's signal stack
    pointing at freed memory, and the next Python signal handler (Ctrl-C, a child process ending) kills the
    process with SIGSEGV. One Core, never freed, cannot leave the stacks out of order.
    """
    return import_openvino().Core()


def openvino_available() -> bool:
    """Whether ``openvino`` imports."""
    try:
        import_openvino()
    except ValueError:
        return False
    return True


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


def checkpoint_fingerprint(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Size, modification time and blake2b of a checkpoint file (``tumorlib.core.integrity.file_record``).

    Raises:
        FileNotFoundError: no such file.
    """
    return file_record(checkpoint, checksum=True)


def openvino_cache_dir(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's converted model is kept: ``best_model.pth`` -> ``best_model.openvino``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".openvino")


def convert_openvino(model: torch.nn.Module, patch_size: Sequence[int], in_channels: int | None = None) -> Any:
    """``openvino.convert_model`` of ``model`` for one window of ``patch_size`` (batch 1, static shape).

    Raises:
        ValueError: openvino is not installed.
    """
    ov = import_openvino()
    channels = int(in_channels if in_channels is not None else getattr(model, "in_channels", 4))
    shape = (1, channels, *(int(p) for p in patch_size))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings about shape-dependent padding
            return ov.convert_model(model, example_input=torch.zeros(shape), input=[shape])
    finally:
        model.train(was_training)


def _source(checkpoint: Path, patch_size: Sequence[int]) -> dict[str, Any]:
    from tumorlib import __version__

    return {"format": _CACHE_FORMAT, "written_by": _WRITER, "tumorlib": __version__,
            "checkpoint": checkpoint.name, "checkpoint_record": checkpoint_fingerprint(checkpoint),
            "patch_size": [int(p) for p in patch_size], "ir_precision": "f32"}


def _read_source(folder: Path) -> dict[str, Any] | None:
    try:
        source = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) and source.get("written_by") == _WRITER else None


def _cache_valid(folder: Path, source: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if source is None:
        return False
    same = all(source.get(k) == wanted[k] for k in ("format", "checkpoint", "patch_size", "ir_precision"))
    same = same and {k: source.get("checkpoint_record", {}).get(k) for k in ("size", "blake2b")} == {
        k: wanted["checkpoint_record"][k] for k in ("size", "blake2b")}
    files = source.get("files") or {}
    return same and all(name in files and record_problem(folder / name, files[name], mtime=False) is None
                        for name in CACHE_FILES[:2])


def _foreign_files(folder: Path, source: dict[str, Any] | None) -> list[str]:
    """Cache files present in ``folder`` that tumorlib's ``source.json`` does not vouch for."""
    if not folder.is_dir():
        return [] if not folder.exists() else [folder.name]
    present = [n for n in CACHE_FILES if (folder / n).exists()]
    return [] if source is not None else present


def save_openvino(ov_model: Any, folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Write ``model.xml`` and ``model.bin`` (float32 IR) into ``folder``, each file replaced in one step.

    Both are written into a temporary folder beside them, ``fsync``-ed, then renamed over the old ones, so a
    failure leaves no half-written file under the final names.

    Returns:
        The ``file_record`` (with blake2b) of each file, by name.

    Raises:
        ValueError: openvino is not installed.
    """
    ov = import_openvino()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}-model"
    tmp.mkdir(exist_ok=True)
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        for name in CACHE_FILES[:2]:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, folder / name)
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    return {name: file_record(folder / name, checksum=True) for name in CACHE_FILES[:2]}


def _write_cache(folder: Path, ov_model: Any, wanted: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # claim the folder first (a source.json of ours without file records): a crash from here on leaves a cache
    # that is rebuilt next time, never one mistaken for a stranger's files or for a complete one
    atomic_write(folder / "source.json", json.dumps({**wanted, "files": {}}, indent=2) + "\n")
    files = save_openvino(ov_model, folder)
    atomic_write(folder / "source.json", json.dumps({**wanted, "files": files}, indent=2) + "\n")


def load_openvino_model(model: torch.nn.Module, patch_size: Sequence[int], checkpoint: str | os.PathLike | None,
                        cache_dir: str | os.PathLike | None = None) -> tuple[Any, Path | None]:
    """The converted model: read from the checkpoint's cache when it matches, else converted (and cached).

    Args:
        model: the network, holding the checkpoint's weights.
        patch_size: the window (d, h, w).
        checkpoint: the checkpoint file ``model`` was loaded from; None: convert in memory, no cache.
        cache_dir: the cache folder (None: ``openvino_cache_dir(checkpoint)``).

    Returns:
        ``(openvino.Model, cache folder or None)``.
    """
    if checkpoint is None:
        return convert_openvino(model, patch_size), None
    checkpoint = Path(checkpoint)
    folder = Path(cache_dir) if cache_dir is not None else openvino_cache_dir(checkpoint)
    wanted = _source(checkpoint, patch_size)
    source = _read_source(folder)
    if _cache_valid(folder, source, wanted):
        return openvino_core().read_model(str(folder / "model.xml")), folder
    ov_model = convert_openvino(model, patch_size)
    foreign = _foreign_files(folder, source)
    if foreign:
        warnings.warn(f"{folder} holds files tumorlib did not write ({', '.join(foreign)}): the converted "
                      "model is not cached there (remove them to cache it)", stacklevel=3)
        return ov_model, None
    try:
        _write_cache(folder, ov_model, wanted)
    except OSError as err:  # a read-only run folder (a dataset attached as input), a full disk
        warnings.warn(f"cannot cache the converted model in {folder} ({err}): converted in memory only",
                      stacklevel=3)
        return ov_model, None
    return ov_model, folder


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
                             checkpoint, folder or None, lambda f: _read_source(f) is not None, batch_size)
    if name == "openvino":
        return _openvino_engine(model, patch_size, batch_size, precision, checkpoint, cache_dir)
    return _torch_engine(model, resolve_device(device), precision)
