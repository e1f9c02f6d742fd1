"""The rules a config's fields obey: type, range and choices, one table each.

``tumorlib.core.config.Config`` calls ``check_fields`` when it is built, so a bad value fails at
construction with one line naming the field and the value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from tumorlib.core.regions import TARGETS

__all__ = ["AUTO_VALUES", "CHOICES", "RULES", "TUMOR_SAMPLING", "check_fields", "check_number"]

#: Ways to choose the centre of a tumour-centred training patch (``tumorlib.data.dataset``).
TUMOR_SAMPLING: tuple[str, ...] = ("class", "voxel")

AUTO_VALUES = {
    "amp_dtype": ("auto", "bfloat16", "float16", "float32"),
    "cudnn_benchmark": ("auto", "on", "off"),
    "data_placement": ("auto", "device", "loader"),
    "pin_memory": ("auto", "on", "off"),
}

_INF = float("inf")
# field: (type, low, high, low_open, high_open); None as type allows None; tuples check each element.
# Patch sides need no divisibility: UNet3D pads inputs to a multiple of 2 ** len(features) itself.
RULES: dict[str, tuple[Any, float, float, bool, bool]] = {
    "seed": (int, 0, _INF, False, False), "synth_volumes": (int, 1, _INF, False, False),
    "synth_shape": ((int, 3), 1, _INF, False, False), "synth_seed": (int, 0, _INF, False, False),
    "cache_hw": ((int, None), 1, _INF, False, False), "cache_margin": (int, 0, _INF, False, False),
    "cache_workers": (int, 1, _INF, False, False), "patch_size": ((int, 3), 1, _INF, False, False),
    "tumor_prob": (float, 0, 1, False, False), "augment": (bool, 0, 1, False, False),
    "intensity_aug": (bool, 0, 1, False, False), "val_volume_every": (int, 0, _INF, False, False),
    "ram_cache_bytes": (int, 0, _INF, False, False), "num_workers": ((int, None), 0, _INF, False, False),
    "in_channels": (int, 1, _INF, False, False), "num_classes": (int, 1, _INF, False, False),
    "features": ((int, 0), 1, _INF, False, False), "epochs": (int, 1, _INF, False, False),
    "warmup_epochs": (int, 0, _INF, False, False), "batch_size": (int, 1, _INF, False, False),
    "accumulation_steps": (int, 1, _INF, False, False), "lr": (float, 0, _INF, True, True),
    "min_lr_ratio": (float, 0, 1, False, False), "weight_decay": (float, 0, _INF, False, True),
    "samples_per_epoch": ((int, None), 1, _INF, False, False),
    "val_samples": ((int, None), 1, _INF, False, False),
    "class_weights": ((float, 0), 0, _INF, False, True), "focal_gamma": (float, 0, _INF, False, True),
    "dice_weight": (float, 0, 1, False, False), "grad_clip": (float, 0, _INF, False, True),
    "amp": (bool, 0, 1, False, False), "time_limit_h": ((float, None), 0, _INF, False, False),
    "val_fraction": (float, 0, 1, False, True), "test_fraction": (float, 0, 1, False, True),
    "split_seed": (int, 0, _INF, False, False), "sw_overlap": (float, 0, 1, False, True),
    "sw_batch_size": (int, 1, _INF, False, False), "threshold": (float, 0, 1, True, True),
    "et_min_voxels": (int, 0, _INF, False, False),
    "fold": (int, 0, _INF, False, False), "folds": ((int, None), 0, _INF, False, False),
}
CHOICES = {
    "sw_blend": ("gaussian", "constant"),
    "tumor_sampling": TUMOR_SAMPLING,
    "targets": TARGETS,
    "compile": ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    **AUTO_VALUES,
}


def check_number(name: str, value: Any, kind: type, low: float, high: float, low_open: bool,
                  high_open: bool) -> Any:
    """``value`` as ``kind`` (int or float; bool only for bool) inside the range, else ValueError."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field {name} must be true or false, got {value!r}")
        return value
    ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if not ok or (kind is float and not math.isfinite(value)):
        raise ValueError(f"config field {name} must be a finite {'integer' if kind is int else 'number'}, "
                         f"got {value!r}")
    value = kind(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        if high == _INF:
            span = f"be {'>' if low_open else '>='} {low:g}"
        else:
            span = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"config field {name} must {span}, got {value!r}")
    return value


def check_fields(config: Any) -> None:
    """Check every field's type, range and choices (``RULES``, ``CHOICES``); normalise numbers.

    Args:
        config: a ``tumorlib.core.config.Config`` being built; its number fields are set in place to
            their checked type.

    Raises:
        ValueError: the first bad field, one line naming it and its value.
    """
    for name, (kind, low, high, low_open, high_open) in RULES.items():
        value = getattr(config, name)
        if isinstance(kind, tuple):
            elem, size = kind
            if size is None:  # optional scalar
                if value is not None:
                    object.__setattr__(config, name, check_number(name, value, elem, low, high, low_open,
                                                                   high_open))
                continue
            if not isinstance(value, tuple) or (size and len(value) != size) or not value:
                want = f"{size} values (D, H, W)" if size else "a non-empty list"
                raise ValueError(f"config field {name} must be {want}, got {value!r}")
            checked = tuple(check_number(name, v, elem, low, high, low_open, high_open) for v in value)
            object.__setattr__(config, name, checked)
        else:
            object.__setattr__(config, name, check_number(name, value, kind, low, high, low_open, high_open))
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            raise ValueError(f"config field {name} must be one of {', '.join(choices)}, "
                             f"got {getattr(config, name)!r}")
    if not isinstance(config.preset, str) or not config.preset:
        raise ValueError(f"config field preset must be a name, got {config.preset!r}")
