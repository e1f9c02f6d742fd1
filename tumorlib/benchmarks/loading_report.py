"""The loading benchmark's report: its targets, the reference design's table, the bar chart, the text
for the command line, and the JSON file of any benchmark result (``tumorlib bench --out``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tumorlib.core.safety import atomic_write

__all__ = ["LOADING_TARGETS", "format_loading_result", "loading_table", "loading_targets_met",
           "plot_loading_benchmark", "write_benchmark"]

# Targets on full-size (155x240x240) volumes on a 2-core machine.
LOADING_TARGETS = {"load_speedup": 40.0, "patch_samples_per_s": 150.0, "cache_build_overhead": 1.5}


def loading_targets_met(result: dict[str, Any]) -> dict[str, bool | None]:
    """Which of ``LOADING_TARGETS`` a result meets (None where not measured).

    The targets are meant for full-size (155x240x240) volumes; tiny volumes miss the speedup.
    """
    speed, patches, overhead = (result.get(k) for k in ("load_speedup", "patch_samples_per_s",
                                                         "cache_build_overhead"))
    return {
        "load_speedup": None if speed is None else speed >= LOADING_TARGETS["load_speedup"],
        "patch_samples_per_s": None if patches is None else patches >= LOADING_TARGETS["patch_samples_per_s"],
        "cache_build_overhead": None if overhead is None else overhead <= LOADING_TARGETS["cache_build_overhead"],
    }


def loading_table(result: dict[str, Any]) -> Any:
    """The reference design's loading table (HDF5 slices against the cache, cold and warm) as a DataFrame.

    Args:
        result: from ``benchmark_loading``.

    Returns:
        A ``pandas.DataFrame`` with rows per source and columns ``cold_s``, ``warm_s``.
    """
    import pandas as pd

    rows = {
        "HDF5 slices": [result.get("h5_volume_load_cold_s"), result["h5_volume_load_s"]],
        ".npy cache": [result.get("npy_volume_load_cold_s"), result["npy_volume_load_s"]],
        "speedup (x)": [result.get("load_speedup_cold"), result["load_speedup"]],
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["cold_s", "warm_s"])


def plot_loading_benchmark(result: dict[str, Any], ax: Any = None) -> Any:
    """Bar chart of seconds per volume: HDF5 against ``.npy``, warm and (if measured) cold; log scale.

    Args:
        result: from ``benchmark_loading``.
        ax: a matplotlib Axes; None makes a new figure.

    Returns:
        The Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    labels, values, colors = [], [], []
    for label, key, color in (("HDF5 warm", "h5_volume_load_s", "tab:red"),
                              (".npy warm", "npy_volume_load_s", "tab:green"),
                              ("HDF5 cold", "h5_volume_load_cold_s", "salmon"),
                              (".npy cold", "npy_volume_load_cold_s", "lightgreen")):
        if result.get(key) is not None:
            labels.append(label)
            values.append(result[key])
            colors.append(color)
    bars = ax.bar(labels, values, color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per volume")
    shape = "x".join(str(s) for s in result.get("volume_shape", []))
    ax.set_title(f"Loading one {shape} volume (speedup {result['load_speedup']:.0f}x warm)")
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    return ax


def write_benchmark(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a benchmark result as JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, json.dumps(result, indent=2) + "\n", writer="bench")


def format_loading_result(result: dict[str, Any]) -> str:
    """A short text table of a loading benchmark with the targets (for the command line)."""
    met = loading_targets_met(result)

    def fmt(v: Any) -> str:
        return "null" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    shape = "x".join(str(s) for s in result["volume_shape"])
    lines = [f"loading benchmark: volumes {result['volume_ids']} of {shape} (cached {result['cached_shape']}), "
             f"patch {result['patch_size']}"]
    for key in ("h5_volume_load_s", "npy_volume_load_s", "load_speedup", "npy_volume_mapped_s",
                "load_speedup_mapped", "h5_volume_load_cold_s",
                "npy_volume_load_cold_s", "load_speedup_cold", "patch_samples_per_s", "patch_samples_per_s_float32",
                "patch_samples_per_s_mmap",
                "h5_read_s_per_volume", "cache_build_s_per_volume", "cache_build_overhead",
                "cache_build_parallel_s_per_volume"):
        target = ""
        if key in met and met[key] is not None:
            op = "<=" if key == "cache_build_overhead" else ">="
            target = f"   target {op} {LOADING_TARGETS[key]:g}: {'met' if met[key] else 'MISSED'}"
        lines.append(f"  {key:<36} {fmt(result.get(key)):>10}{target}")
    return "\n".join(lines)
