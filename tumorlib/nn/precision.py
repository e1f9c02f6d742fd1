"""Running a network under autocast: the context for an autocast dtype, and the automatic dtype of a device
(``tumorlib.core.device.auto_amp_dtype``, the one precision rule) as a ``torch.dtype``."""

from __future__ import annotations

import contextlib

import torch

from tumorlib.core.device import AMP_DTYPES, auto_amp_dtype

__all__ = ["amp_dtype", "autocast"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``; a null context for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The automatic autocast dtype of ``device`` as a ``torch.dtype`` (``auto_amp_dtype``).

    Args:
        device: the device the network runs on.
        enabled: ``config.amp``; False always gives None.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (float32).
    """
    if not enabled:
        return None
    name, _ = auto_amp_dtype(device)
    return None if name is None else AMP_DTYPES[name]
