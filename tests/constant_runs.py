"""A run folder for tests: config.json, checkpoints/best_model.pth and optionally splits.json, with a model
whose head can give constant logits (so its predictions are known)."""

from __future__ import annotations

import json

import torch

from tumorlib.core.config import get_config
from tumorlib.nn.checkpoint import atomic_torch_save
from tumorlib.nn.unet import UNet3D, model_from_config


def make_run(folder, bias=None, config=None, splits=None, **overrides):
    """The run folder ``folder``: ``config`` (default the ci preset with ``overrides``), seed-0 weights, and
    with ``bias`` the head zeroed so every voxel gets the logits ``bias``; ``splits`` -> splits.json."""
    config = config or get_config("ci", **overrides)
    torch.manual_seed(0)
    model = model_from_config(config)
    if bias is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    atomic_torch_save({"model": model.state_dict(), "epoch": 1, "config": config.to_dict()},
                      folder / "checkpoints" / "best_model.pth")
    if splits is not None:
        (folder / "splits.json").write_text(json.dumps(splits))
    return folder


def tiny_unet(seed: int = 0) -> UNet3D:
    """A 4-8-16 UNet3D in eval mode with seed-``seed`` weights (engine tests)."""
    torch.manual_seed(seed)
    return UNet3D(4, 3, (4, 8, 16)).eval()


def tiny_checkpoint(tmp_path, model: UNet3D):
    """``tmp_path/checkpoints/best_model.pth`` holding ``model`` (what the OpenVINO cache sits beside)."""
    path = tmp_path / "checkpoints" / "best_model.pth"
    atomic_torch_save({"model": model.state_dict(), "config": {"features": [4, 8, 16]}}, path)
    return path
