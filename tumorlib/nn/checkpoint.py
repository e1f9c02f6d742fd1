"""Checkpoints of a training run: atomic writes, RNG states, and loading a trained model back.

Every checkpoint loads with ``torch.load(path, weights_only=True)``: the config is stored as a plain dict
(``Config.to_dict()``) and the random-number-generator states as tensors, never as pickled objects.

``RUN/checkpoints/last.pth`` (written every epoch) holds ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (epochs finished), ``history`` (list of row dicts), ``best_dice``, ``rng`` and
``config``; ``RUN/checkpoints/best_model.pth`` holds ``model``, ``epoch``, ``metrics`` and ``config``.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorlib.core.config import Config
from tumorlib.nn.unet import UNet3D, model_from_config
from tumorlib.core.safety import atomic_open

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "MODEL_FIELDS",
    "TRAINED_FIELDS",
    "atomic_torch_save",
    "get_rng_state",
    "load_checkpoint",
    "load_model",
    "set_rng_state",
]

BEST_NAME = "best_model.pth"
LAST_NAME = "last.pth"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into memory, then write the bytes atomically (``safety.atomic_open``) over ``path``.

    A process killed mid-write, or a full disk, leaves the previous file intact. Serialising first means a
    write error is Python's own ``OSError`` (torch's writer would report ``enforce fail``), so a full
    disk reads ``disk full while writing <path>``.

    Args:
        obj: what to save (dicts of tensors and plain values).
        path: the destination; its folder is created.

    Returns:
        The path written.

    Raises:
        DiskFullError: no space left (names ``path``); the previous file is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
    return path


def get_rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python random states, as tensors (``weights_only``-loadable).

    Returns:
        Dict with ``torch`` (uint8 tensor), ``cuda`` (list of uint8 tensors, empty without CUDA),
        ``numpy`` (int64 tensor of the MT19937 key followed by pos, has_gauss, and the cached gaussian as
        a separate float64 tensor ``numpy_gauss``) and ``python`` (int64 tensor: version, 625 state words,
        then gauss_next flag and value in ``python_gauss``).
    """
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np.concatenate([np_state[1].astype(np.int64),
                                                  np.array([np_state[2], np_state[3]], dtype=np.int64)])),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_words], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if py_gauss is None else 1.0, py_gauss or 0.0], dtype=torch.float64),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by ``get_rng_state`` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])
    words = state["numpy"].numpy()
    np.random.set_state(("MT19937", words[:624].astype(np.uint32), int(words[624]), int(words[625]),
                         float(state["numpy_gauss"][0])))
    py = state["python"].tolist()
    flag, value = state["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(w) for w in py[1:]), value if flag else None))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a tumorlib checkpoint with ``weights_only=True``.

    Args:
        path: ``best_model.pth``, ``last.pth``, or a run folder (its ``checkpoints/best_model.pth``).
        map_location: where tensors go.

    Returns:
        The checkpoint dict (``model``, ``config``, ``epoch`` and the file's other keys).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a tumorlib checkpoint, or its weights hold NaN or inf (names the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / BEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"{path}: cannot be read as a tumorlib checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a tumorlib checkpoint (needs the keys 'model' and 'config')")
    weights = ckpt["model"] if isinstance(ckpt["model"], dict) else {}
    for key, value in weights.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: the weights hold NaN or inf values ({key}); the checkpoint is damaged: "
                             "restore it, or train again")
    return ckpt


#: The config fields that fix the network's shape.
MODEL_FIELDS = ("in_channels", "num_classes", "features")
#: What the weights were trained to read and output: a config.json that says otherwise would predict wrongly
#: (channels in another order, classes read as regions, another window) without any error.
TRAINED_FIELDS = ("kaggle_channel_order", "targets", "patch_size")


def _same(value: Any) -> Any:
    """A config value as compared across JSON and Python (tuples and lists alike)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", config: Config | None = None,
               config_path: str | os.PathLike | None = None) -> tuple[UNet3D, Config]:
    """The trained ``UNet3D`` of a checkpoint, in eval mode, with the config it is built from.

    Args:
        path: a checkpoint file or a run folder (uses ``RUN/checkpoints/best_model.pth``).
        device: where to put the model.
        config: build the model from this config (e.g. ``RUN/config.json``); its ``MODEL_FIELDS`` and
            ``TRAINED_FIELDS`` must match the checkpoint's (a field the checkpoint does not record is not
            compared). None: the config stored in the checkpoint.
        config_path: where ``config`` was read from (named in errors).

    Returns:
        ``(model, config)``.

    Raises:
        FileNotFoundError, ValueError: see ``load_checkpoint``; with ``config``: model fields that differ
            from the checkpoint's; weights that do not fit the model (names both files).
    """
    ckpt = load_checkpoint(path)
    where = Path(path) / "checkpoints" / BEST_NAME if Path(path).is_dir() else Path(path)
    described = Path(config_path) if config_path is not None else where
    if config is None:
        config = Config.from_dict(ckpt["config"])
    else:
        saved, now = ckpt.get("config") or {}, config.to_dict()
        diffs = [f"{k}={saved.get(k)!r} in the checkpoint but {now[k]!r} in {described.name}"
                 for k in (*MODEL_FIELDS, *TRAINED_FIELDS) if k in saved and _same(saved[k]) != _same(now[k])]
        if diffs:
            raise ValueError(f"{where} does not match {described}: " + "; ".join(diffs))
    model = model_from_config(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise ValueError(f"{where}: weights do not fit the model described by {described} "
                         f"({' '.join(first)})") from err
    return model.to(device).eval(), config
