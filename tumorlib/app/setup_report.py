"""What a notebook runs on: the data source, volumes, channel order, device, memory and precision.

``describe_setup(config)`` returns the few lines every notebook prints first, so a reader knows
whether the numbers below come from real BraTS (a Kaggle mount, a kagglehub download or
``TUMORLIB_DATA``) or from the embedded phantoms, and on which device and precision they were made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tumorlib.core.config import Config, workspace
from tumorlib.core.sources import EMBEDDED, display_path, find_data_source

__all__ = ["SMOKE_NOTE", "describe_setup", "device_summary", "install_hint"]

#: What the ``ci`` preset's numbers are worth, said wherever they are shown.
SMOKE_NOTE = ("a smoke run (2 epochs on tiny phantoms) whose numbers mean nothing; "
              "`make demo` gives the demo preset's results")
_DEFAULT_CHANNELS = ("flair", "t1", "t1ce", "t2")


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None


def device_summary(device: Any = None) -> str:
    """One line: the device, its memory, e.g. ``cuda:0 (Tesla T4, 14.7 GiB)`` or ``cpu (4 cores, 31.3 GiB RAM)``.

    Args:
        device: as for ``tumorlib.core.device.resolve_device`` (None: CUDA when available, else the CPU).
    """
    import torch

    from tumorlib.core.device import resolve_device  # here: torch is imported only when asked

    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        count = torch.cuda.device_count()
        more = f", {count} GPUs visible" if count > 1 else ""
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB{more})"
    if dev.type == "mps":
        return "mps (Apple GPU, shares the system memory)"
    ram = _ram_bytes()
    memory = f", {ram / 2**30:.1f} GiB RAM" if ram else ""
    return f"{dev.type} ({os.cpu_count() or 1} cores{memory})"


def _volumes_line(kind: str, path: Path, config: Config) -> str:
    from tumorlib.io.kaggle import find_slices

    if kind == EMBEDDED and not path.is_dir():
        return f"{config.synth_volumes} (generated on first use)"
    try:
        found = find_slices(path)
    except (OSError, ValueError) as err:
        return f"none readable ({err})"
    if not found:
        return f"none found below {path}"
    ids = sorted(found)
    slices = sum(len(s) for s in found.values())
    return f"{len(ids)} (ids {ids[0]}..{ids[-1]}, {slices} slice files)"


def describe_setup(config: Config, device: Any = None) -> str:
    """A short multi-line text: data source, volumes, stored channel order, device, memory, precision.

    Reads only folder listings (no volume is loaded, nothing is generated or written).

    Args:
        config: the run's config.
        device: as for ``tumorlib.core.device.resolve_device`` (None: CUDA when available, else the CPU).

    Returns:
        Lines such as ``data      the Kaggle input mount /kaggle/input/... (read-only)``.
    """
    from tumorlib.core.device import precision_name, resolve_device
    from tumorlib.training.settings import pick_amp_dtype

    ws = workspace(config)
    source = find_data_source(ws.data_dir)
    channels = getattr(config, "kaggle_channel_order", _DEFAULT_CHANNELS)
    precision = getattr(config, "precision", "auto")
    if precision in (None, "auto"):
        asked = getattr(config, "amp_dtype", "auto")
        if not getattr(config, "amp", True):
            precision = "fp32 (amp off)"
        else:  # the one rule training and inference follow (pick_amp_dtype)
            dtype, _ = pick_amp_dtype(resolve_device(device), config if asked != "auto" else None)
            precision = precision_name(dtype)
            precision += " (auto)" if asked == "auto" else f" (amp_dtype {asked})"
    preset = f"{config.preset}: {SMOKE_NOTE}" if config.preset == "ci" else config.preset
    rows = [
        ("preset", preset),
        ("data", source.description.replace(str(source.path), display_path(source.path))),
        ("volumes", _volumes_line(source.kind, source.path, config)),
        ("channels", "stored order " + ", ".join(channels)),
        ("device", device_summary(device)),
        ("precision", precision),
        ("outputs", display_path(ws.out_dir)),
    ]
    return "\n".join(f"{name:<10}{value}" for name, value in rows)


_PLACEHOLDER_REPO = "https://github.com/OWNER/tumorlib.git"
_LIGHT_FALLBACK = ("numpy>=1.26", "h5py>=3.10", "scipy>=1.11", "pandas>=2.1", "matplotlib>=3.8",
                   "ipywidgets>=8.1", "jupytext>=1.16", "nbval>=0.11", "tqdm>=4.66", "nibabel>=5.2")


def _light_requirements() -> list[str]:
    """tumorlib's required dependencies without torch (and without extras), from its metadata."""
    import re
    from importlib import metadata

    try:
        reqs = metadata.requires("tumorlib") or []
    except metadata.PackageNotFoundError:
        return list(_LIGHT_FALLBACK)
    light = []
    for req in reqs:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        spec = req.split(";", 1)[0].replace(" ", "")
        name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0).lower()
        if name not in ("torch", "pytorch"):
            light.append(spec)
    return light or list(_LIGHT_FALLBACK)


def _repository_url() -> str | None:
    """Where this tumorlib was installed from: pip's ``direct_url.json`` (a git install) or the
    checkout's ``origin`` remote; None when neither says."""
    import json
    import subprocess
    from importlib import metadata

    try:
        text = metadata.distribution("tumorlib").read_text("direct_url.json")
        info = json.loads(text) if text else {}
        if "vcs_info" in info and info.get("url"):
            return info["url"]
    except (metadata.PackageNotFoundError, ValueError):
        pass
    checkout = Path(__file__).resolve().parent.parent
    try:
        url = subprocess.run(["git", "-C", str(checkout), "remote", "get-url", "origin"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return url or None


def install_hint(repo_url: str | None = None, show: bool = False) -> str:
    """The one notebook cell that installs tumorlib on Kaggle or Colab, leaving the image's torch alone.

    The package goes in with ``--no-deps`` (pip would otherwise be free to replace the image's CUDA
    torch), then its light dependencies (numpy, h5py, ...) are named explicitly: pip skips those already
    installed. torch is never named.

    Args:
        repo_url: the git repository (``https://...`` or ``git+https://...``); None: where this copy came
            from (pip's record of a git install, else the checkout's ``origin``), else a placeholder to
            replace.
        show: also print the cell.

    Returns:
        The cell's text (``%pip`` lines, so it installs into the notebook's own kernel).
    """
    url = repo_url or _repository_url() or _PLACEHOLDER_REPO
    if not url.startswith("git+"):
        url = "git+" + url
    deps = " ".join(f'"{r}"' for r in _light_requirements())
    lines = ["# tumorlib without its dependencies, so the image's CUDA build of PyTorch stays as it is;",
             "# then only the light dependencies (pip skips those already installed)."]
    if url == "git+" + _PLACEHOLDER_REPO:
        lines.append("# Replace OWNER/tumorlib with the repository you use.")
    lines += [f'%pip install -q --no-deps "tumorlib @ {url}"', f"%pip install -q {deps}"]
    cell = "\n".join(lines)
    if show:
        print(cell)
    return cell
