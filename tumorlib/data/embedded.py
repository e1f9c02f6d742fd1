"""The data folder of a config: ``TUMORLIB_DATA``, a Kaggle mount or kagglehub download, else the embedded set.

The choice is ``tumorlib.core.sources.find_data_source`` (through ``workspace``); only the embedded set is
generated here, on first use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tumorlib.core.config import Config, workspace
from tumorlib.core.safety import atomic_write
from tumorlib.io.layouts import data_layout
from tumorlib.data.synthetic import make_synthetic

__all__ = ["ensure_data", "SYNTH_MARKER"]

SYNTH_MARKER = "tumorlib_synthetic.json"
# Bump when make_phantom changes its output, so embedded sets written by older code are regenerated
# (3: channels stored in the Kaggle pack's order FLAIR, T1, T1ce, T2; 4: real ICBM152 anatomy, BraTS-like
# tumour statistics and look-alikes).
SYNTH_VERSION = 4


def ensure_data(config: Config, progress: bool = True) -> Path:
    """The data folder for ``config``, generating the embedded dataset when it is missing.

    With ``TUMORLIB_DATA`` set, or a Kaggle mount or kagglehub download found, that folder is checked
    (it must hold Kaggle-format volumes or NIfTI cases of a known layout, ``data_layout``) and returned. Otherwise the embedded set described by ``config.synth_volumes``, ``synth_shape`` and
    ``synth_seed`` is written once into the workspace's data folder: first into a temporary sibling,
    then renamed, so an interrupted generation never leaves a half-written set behind.

    Args:
        config: the run's config.
        progress: show a progress bar while generating.

    Returns:
        The dataset root (pass it to ``list_volumes``/``load_volume``).

    Raises:
        FileNotFoundError: ``TUMORLIB_DATA`` points at a folder with neither Kaggle volumes nor NIfTI
            cases of a known layout (names the folder and lists the layouts).
        ValueError: NIfTI cases of several layouts in it.
    """
    ws = workspace(config)
    if not ws.synthetic:
        data_layout(ws.data_dir)
        return ws.data_dir
    marker = ws.data_dir / SYNTH_MARKER
    params = {"version": SYNTH_VERSION, "volumes": config.synth_volumes, "shape": list(config.synth_shape), "seed": config.synth_seed}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return ws.data_dir
    tmp = ws.data_dir.with_name(ws.data_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_synthetic(tmp, config.synth_volumes, config.synth_shape, seed=config.synth_seed, progress=progress)
    atomic_write(tmp / SYNTH_MARKER, json.dumps(params))
    shutil.rmtree(ws.data_dir, ignore_errors=True)
    ws.data_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, ws.data_dir)
    return ws.data_dir
