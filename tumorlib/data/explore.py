"""Dataset summaries for notebook 01: per-volume shapes, brain size and class fractions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tumorlib.core.brats import KAGGLE_STORED_ORDER
from tumorlib.data.cache import brain_mask
from tumorlib.core.brats import CLASS_NAMES
from tumorlib.io.kaggle import list_volumes, load_volume

__all__ = ["volume_stats"]


def volume_stats(root: str | os.PathLike, volume_ids: Sequence[int] | None = None,
                 progress: bool = False, stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> pd.DataFrame:
    """One row per volume: size, brain voxels and the class fractions over brain voxels.

    Args:
        root: a Kaggle-format data folder.
        volume_ids: the volumes to read; None reads all.
        progress: show a tqdm bar.
        stored_order: the Kaggle files' channel order (a config's ``kaggle_channel_order``).

    Returns:
        Columns volume, slices, height, width, brain_voxels, tumour_slices, and per class
        (necrosis, edema, enhancing) the fraction of brain voxels.
    """
    from tumorlib.core.progress import tqdm

    ids = list_volumes(root) if volume_ids is None else list(volume_ids)
    rows = []
    for vid in tqdm(ids, desc="volume stats", disable=not progress):
        image, mask = load_volume(root, vid, stored_order=stored_order)
        brain = brain_mask(image)
        n_brain = int(brain.sum())
        counts = mask.reshape(3, -1).sum(axis=1, dtype=np.int64)
        row = {"volume": vid, "slices": image.shape[1], "height": image.shape[2], "width": image.shape[3],
               "brain_voxels": n_brain, "tumour_slices": int(mask.any(axis=(0, 2, 3)).sum())}
        row.update({name: counts[i] / max(n_brain, 1) for i, name in enumerate(CLASS_NAMES)})
        rows.append(row)
    return pd.DataFrame(rows)
