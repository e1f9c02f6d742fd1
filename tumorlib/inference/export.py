"""Exporting a trained run's model for deployment: ONNX or OpenVINO IR, with its input contract.

``export_model(run_dir, "onnx", out_dir)`` writes ``out_dir/model.onnx`` (input ``image``, output
``logits``, any batch size) and ``export_model(run_dir, "openvino", out_dir)`` writes
``out_dir/model.xml`` + ``model.bin`` (float32 IR, batch 1: ``model.reshape`` changes it). Beside them
``contract.json`` says what the model expects and returns:

- input: float32 ``(1, 4, D, H, W)`` with ``(D, H, W)`` the run's patch size, channels in
  ``tumorlib.core.brats.CANONICAL_ORDER`` (T1, T1ce, T2, FLAIR), each channel z-scored over the brain voxels
  (nonzero in any channel) with 0 outside the brain (``tumorlib.data.cache.normalize_volume``); a whole
  volume is predicted window by window (the run's sliding-window settings are listed);
- output: ``(1, 3, D, H, W)`` logits, a sigmoid per channel: with the run's ``targets`` ``classes`` of
  necrosis/NET, edema, enhancing (the decoding rule of ``tumorlib.core.regions.Decoder`` gives
  BraTS labels 0, 1, 2, 4), with ``regions`` of WT, TC, ET (the same ``Decoder``, ``targets='regions'``);
  ``output.targets`` and ``output.channels`` say which;
- the tumorlib version and the checkpoint's fingerprint (size, mtime, blake2b).

The ONNX file is written by torch's TorchScript exporter (``dynamo=False``), which needs the ``onnx``
package (a dependency of tumorlib) and nothing else; running the exported model needs ``onnxruntime`` (the
``onnx`` extra). Where ``onnx`` is missing, the export stops before writing anything, in one line naming
the extra.

Every file is written atomically. An output folder that is an input of the export (the run folder, its
checkpoints folder, a file of the run) is refused; one holding files tumorlib did not write, or an
earlier export, is refused unless ``overwrite``, and even then only tumorlib's own files are replaced.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tumorlib.core.brats import (BRATS_LABELS, CANONICAL_ORDER, CLASS_KEYS, CLASS_NAMES, CLASS_PRECEDENCE,
                                 MODALITY_NAMES, REGION_CLASSES, REGION_KEYS, REGION_NAMES)
from tumorlib.core.regions import targets_of
from tumorlib.core.integrity import file_record, record_problem
from tumorlib.core.safety import OutputIsInputError, atomic_path, atomic_write

__all__ = ["CONTRACT_NAME", "EXPORT_FORMATS", "ONNX_INSTALL", "export_files", "export_model", "import_onnx",
           "read_contract"]

EXPORT_FORMATS = ("onnx", "openvino")
CONTRACT_NAME = "contract.json"
_WRITER = "tumorlib.inference.export"
_ONNX_OPSET = 17
ONNX_INSTALL = "pip install 'tumorlib[onnx]' (or: pip install onnx)"


def _onnx_missing(detail: str) -> ValueError:
    return ValueError(f"export --format onnx needs the 'onnx' package, which is not installed ({detail}): "
                      f"{ONNX_INSTALL}")


def import_onnx() -> Any:
    """The ``onnx`` module, which torch's ONNX exporter needs to write ``model.onnx``.

    Raises:
        ValueError: it is not installed (one line naming the extra to install).
    """
    try:
        import onnx
    except ImportError as err:
        raise _onnx_missing(str(err) or "import failed") from err
    return onnx


def export_files(fmt: str) -> tuple[str, ...]:
    """The files an export of ``fmt`` writes, ``contract.json`` last.

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    return ("model.onnx", CONTRACT_NAME) if fmt == "onnx" else ("model.xml", "model.bin", CONTRACT_NAME)


def read_contract(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``contract.json`` tumorlib wrote in ``out_dir``, or None (absent, unreadable or not tumorlib's)."""
    try:
        contract = json.loads((Path(out_dir) / CONTRACT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(contract, dict) or contract.get("written_by") != _WRITER:
        return None
    return contract if isinstance(contract.get("files", {}), dict) else None  # edited by hand: not a record


def _still_exported(path: Path, record: Any) -> bool:
    """Whether ``path`` is still the file an export's contract recorded (its bytes, not its name)."""
    return (isinstance(record, dict) and path.is_file() and not path.is_symlink()
            and record_problem(path, record, mtime=False, checksum=True) is None)


def _check_out_dir(out: Path, run: Path, inputs: list[Path], names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse an output folder that is an input, or holds files that writing ``names`` must not touch."""
    resolved, home = out.resolve(), run.resolve()
    for inp in inputs:
        if resolved == inp.resolve():
            raise OutputIsInputError(f"--out {out} is an input of the export ({inp}); choose another folder")
    if resolved == home or resolved in home.parents or home / "checkpoints" in (resolved, *resolved.parents):
        raise OutputIsInputError(f"--out {out} is, holds or lies in the checkpoints of the run folder {run}; "
                                 "choose another folder (RUN/export-onnx is fine)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; choose a folder")
    if not out.is_dir():
        return
    contract = read_contract(out)
    records = (contract or {}).get("files", {})
    # a file is the earlier export's only while it is still the bytes the contract recorded, not by its name
    ours = {n for n, r in records.items() if _still_exported(out / n, r)}
    ours |= {CONTRACT_NAME} if contract else set()
    present = sorted(p.name for p in out.iterdir())
    foreign = [n for n in present if n not in ours]
    clash = [n for n in names if n in foreign]
    if clash:
        raise FileExistsError(f"--out {out} holds {', '.join(clash)}, not written by tumorlib: never replaced; "
                              "choose another folder")
    if present and not overwrite:
        what = "an earlier export" if not foreign else f"files tumorlib did not write ({', '.join(foreign[:3])})"
        raise FileExistsError(f"--out {out} holds {what}; choose an empty folder, or pass --overwrite (only "
                              "tumorlib's own export files are replaced)")


def _output_contract(config: Any, patch: list[int]) -> dict[str, Any]:
    """What the 3 output channels are and how they become labels, by the run's ``targets``."""
    targets = targets_of(config)
    labels = dict(zip(CLASS_KEYS, BRATS_LABELS))
    if targets == "classes":
        channels, names = list(CLASS_KEYS), list(CLASS_NAMES)
        decoding = {"threshold": config.threshold, "labels": labels,
                    "rule": "tumour where 1 - prod_c(1 - p_c) > threshold; there the most probable class, "
                            f"exact ties in the order {', '.join(CLASS_PRECEDENCE)}; background 0",
                    "reference": "tumorlib.core.regions.Decoder(targets='classes')"}
    else:
        channels, names = list(REGION_KEYS), list(REGION_NAMES)
        decoding = {"threshold": config.threshold, "labels": labels,
                    "rule": "each region where p > threshold; et = ET, ncr = TC minus ET, ed = WT minus TC "
                            "(an inner region outside its outer one keeps the inner label); background 0",
                    "reference": "tumorlib.core.regions.Decoder(targets='regions')"}
    return {"name": "logits", "dtype": "float32", "shape": [1, int(config.num_classes), *patch],
            "targets": targets, "channels": channels, "channel_names": names,
            "activation": "sigmoid per channel (independent outputs, not a softmax)",
            "decoding": decoding, "regions": {k: list(v) for k, v in REGION_CLASSES.items()}}


def _contract(fmt: str, config: Any, ckpt_path: Path, ckpt: dict[str, Any], files: dict[str, Any]) -> dict:
    from tumorlib import __version__

    patch = [int(p) for p in config.patch_size]
    return {
        "written_by": _WRITER, "format": fmt, "tumorlib": __version__, "files": files,
        "input": {
            "name": "image", "dtype": "float32", "layout": "NCDHW",
            "shape": [1, int(config.in_channels), *patch],
            "batch": "any (dynamic axis 0)" if fmt == "onnx" else "1 (openvino: model.reshape for more)",
            "patch_size": patch, "channel_order": list(CANONICAL_ORDER),
            "channel_names": [MODALITY_NAMES[k] for k in CANONICAL_ORDER],
            "normalisation": {
                "method": "z-score per channel over brain voxels: (x - mean_c) / std_c, population std",
                "brain": "voxels nonzero in any channel (skull-stripped input)", "background": 0.0,
                "zero_std": "a channel with std 0 is only centred", "reference": "tumorlib.data.cache.normalize_volume"},
            "in_plane_size": config.cache_hw,
            "whole_volume": {"method": "sliding window, logits blended, then the sigmoid",
                             "overlap": config.sw_overlap, "blend": config.sw_blend, "gaussian_sigma_scale": 0.125,
                             "reference": "tumorlib.inference.sliding_window.sliding_window_inference"},
        },
        "output": _output_contract(config, patch),
        "model": {"in_channels": config.in_channels, "num_classes": config.num_classes,
                  "features": list(config.features), "preset": getattr(config, "preset", None)},
        "checkpoint": {"file": ckpt_path.name, "record": file_record(ckpt_path, checksum=True),
                       "epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics")},
    }


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> dict[str, Any]:
    with atomic_path(out / "model.onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about shape-dependent padding
        try:
            torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                              opset_version=_ONNX_OPSET, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        except ImportError as err:
            raise _onnx_missing(str(err)) from err
        except RuntimeError as err:  # torch's OnnxExporterError("Module onnx is not installed!")
            if "not installed" not in str(err):
                raise
            raise _onnx_missing(str(err)) from err
    return {"model.onnx": file_record(out / "model.onnx", checksum=True)}


def _write_openvino(model: torch.nn.Module, patch: tuple[int, ...], out: Path) -> dict[str, Any]:
    from tumorlib.inference.openvino_model import convert_openvino, save_openvino

    return save_openvino(convert_openvino(model, patch), out)


def export_model(run_dir: str | os.PathLike, fmt: str = "onnx", out_dir: str | os.PathLike | None = None,
                 overwrite: bool = False) -> Path:
    """Export a run's trained model as ONNX or OpenVINO IR, with ``contract.json`` beside it.

    Args:
        run_dir: a trained run folder (``config.json``, ``checkpoints/best_model.pth``).
        fmt: ``"onnx"`` (``model.onnx``) or ``"openvino"`` (``model.xml`` + ``model.bin``).
        out_dir: the folder to write (created); None: ``RUN/export-<fmt>``.
        overwrite: replace an earlier export (only tumorlib's own files, never another file).

    Returns:
        The path of ``contract.json``.

    Raises:
        FileNotFoundError, ValueError: see ``tumorlib.inference.predictor.load_run``; an unknown format;
            onnx or openvino not installed (one line naming the extra to install).
        OutputIsInputError: ``out_dir`` is the run folder, inside its checkpoints or holds the run.
        FileExistsError: ``out_dir`` holds files (an earlier export without ``overwrite``, or a file of
            another writer under one of the export's names).
    """
    from tumorlib.inference.predictor import load_run
    from tumorlib.nn.checkpoint import BEST_NAME, load_checkpoint

    names = export_files(fmt)
    if fmt == "onnx":
        import_onnx()
    else:
        from tumorlib.inference.openvino_model import import_openvino

        import_openvino()
    run = Path(run_dir).expanduser()
    out = Path(out_dir).expanduser() if out_dir is not None else run / f"export-{fmt}"
    ckpt_path = run / "checkpoints" / BEST_NAME
    _check_out_dir(out, run, [ckpt_path.parent, ckpt_path, run / "config.json"], names, overwrite)
    model, config = load_run(run, device="cpu")
    ckpt = load_checkpoint(ckpt_path)
    patch = tuple(int(p) for p in config.patch_size)
    out.mkdir(parents=True, exist_ok=True)
    old_files = (read_contract(out) or {}).get("files", {})  # an earlier export's, maybe of another format
    known = {n for f in EXPORT_FORMATS for n in export_files(f)} - set(names)
    stale = {n: old_files[n] for n in known if n in old_files and isinstance(old_files[n], dict)}
    if fmt == "onnx":
        files = _write_onnx(model, torch.zeros(1, config.in_channels, *patch), out)
    else:
        files = _write_openvino(model, patch, out)
    contract = _contract(fmt, config, ckpt_path, ckpt, files)
    path = atomic_write(out / CONTRACT_NAME, json.dumps(contract, indent=2, default=str) + "\n")
    for name, record in sorted(stale.items()):  # removed only while they are still the files it wrote
        if _still_exported(out / name, record):
            (out / name).unlink()
    return path
