"""The embedded dataset: deterministic brain-MRI phantoms written in the Kaggle BraTS2020 layout.

Real BraTS cannot be downloaded everywhere (CI has no network), so every notebook, test and benchmark
runs on phantoms by default. Each phantom is a skull-stripped head: zero background, white and grey
matter, CSF with ventricles, one to three tumours with a necrotic core, an enhancing rim (bright on
T1ce) and edema (bright on T2 and FLAIR), irregular shapes from smooth random fields, noise and a smooth
bias field. A volume depends only on (seed, volume id), so a set of 10 holds the first 10 volumes of a
set of 20.

The layout written is that of the Kaggle dataset ``awsaf49/brats2020-training-data``::

    OUT/BraTS2020_training_data/content/data/volume_{id}_slice_{s}.h5   image (H, W, 4) float64,
                                                                         mask (H, W, 3) uint8
    OUT/BraTS2020_training_data/content/data/meta_data.csv               slice_path, target, volume, slice
    OUT/BraTS2020_training_data/content/data/name_mapping.csv
    OUT/BraTS2020_training_data/content/data/survival_info.csv
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tumorlib.brats import CANONICAL_ORDER, KAGGLE_STORED_ORDER, reorder_channels

__all__ = ["KAGGLE_SUBDIR", "make_phantom", "make_synthetic", "write_kaggle_volume"]

KAGGLE_SUBDIR = Path("BraTS2020_training_data") / "content" / "data"

# Tissue intensities per modality (T1, T1ce, T2, FLAIR), arbitrary scanner-like units.
_TISSUE = {
    "wm": (900.0, 950.0, 550.0, 600.0),
    "gm": (650.0, 700.0, 800.0, 750.0),
    "csf": (250.0, 260.0, 1500.0, 150.0),
    "edema": (560.0, 600.0, 1150.0, 1300.0),
    "enhancing": (600.0, 1700.0, 900.0, 950.0),
    "necrosis": (330.0, 380.0, 1300.0, 650.0),
}
_NAME_MAPPING_COLUMNS = [
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
]
_SURVIVAL_COLUMNS = ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]


def _smooth_field(rng: np.random.Generator, grids: tuple[np.ndarray, ...], n_waves: int = 6,
                  max_freq: float = 2.5) -> np.ndarray:
    """A smooth random field in about [-1, 1] as a sum of random plane waves (cheap at any size)."""
    shape = np.broadcast_shapes(*(g.shape for g in grids))
    field = np.zeros(shape, np.float32)
    for _ in range(n_waves):
        k = rng.normal(size=3) * max_freq
        phase = rng.uniform(0, 2 * np.pi)
        arg = k[0] * grids[0] + k[1] * grids[1] + k[2] * grids[2] + np.float32(phase)
        field += np.cos(arg, dtype=np.float32)
    return field * np.float32(1.0 / np.sqrt(n_waves / 2.0))


def make_phantom(shape: tuple[int, int, int] = (155, 240, 240), seed: int = 0,
                 volume_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic brain with tumour(s).

    Args:
        shape: (D, H, W) = (slices, rows, columns); each side >= 8.
        seed: dataset seed.
        volume_id: the volume number; together with ``seed`` it fixes the phantom.

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, exactly 0 outside the brain.
        mask: (3, D, H, W) uint8 in {0, 1}, disjoint channels necrosis/NET, edema, enhancing.

    Raises:
        ValueError: a side shorter than 8 voxels.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be 3 sides of at least 8 voxels, got {shape}")
    rng = np.random.default_rng([seed, volume_id])
    d, h, w = shape
    # Normalised coordinates in [-1, 1] along each axis, broadcastable.
    z = np.linspace(-1, 1, d, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
    grids = (z, y, x)

    # Brain: an ellipsoid with a bumpy surface (radius in normalised units per axis).
    semi = np.array([0.85, 0.66, 0.55]) * rng.uniform(0.95, 1.04, size=3)  # BraTS-like brain box
    centre = rng.uniform(-0.04, 0.04, size=3)
    r = np.sqrt(((z - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
                + ((x - centre[2]) / semi[2]) ** 2)
    r = r * (1.0 + 0.05 * _smooth_field(rng, grids, max_freq=3.0))
    brain = r < 1.0
    # Cortex: grey matter in an outer shell with folds; thin CSF layer outside it.
    folds = _smooth_field(rng, grids, n_waves=8, max_freq=9.0)
    gm = brain & (r > 0.78 + 0.07 * folds)
    csf = brain & (r > 0.95)
    wm = brain & ~gm & ~csf
    # Ventricles: two small ellipsoids either side of the midline.
    for side in (-1.0, 1.0):
        vr = np.sqrt(((z - centre[0] - 0.05) / (semi[0] * 0.28)) ** 2
                     + ((y - centre[1] + 0.05) / (semi[1] * 0.30)) ** 2
                     + ((x - centre[2] - side * semi[2] * 0.13) / (semi[2] * 0.09)) ** 2)
        vent = brain & (vr < 1.0)
        csf |= vent
        wm &= ~vent
        gm &= ~vent

    # Tumours: necrotic core, thin enhancing rim, edema around, all with irregular borders.
    necrosis = np.zeros(shape, bool)
    enhancing = np.zeros(shape, bool)
    edema = np.zeros(shape, bool)
    n_tumours = int(rng.choice([1, 1, 2, 3], p=[0.45, 0.25, 0.2, 0.1]))
    for t in range(n_tumours):
        size = rng.uniform(0.7, 1.15) * (1.0 if t == 0 else rng.uniform(0.45, 0.7))
        # Centre inside the white matter region, away from the midline.
        pos = centre + rng.uniform(-0.45, 0.45, size=3) * semi
        pos[2] = centre[2] + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45) * semi[2]
        scale = rng.uniform(0.85, 1.15, size=3) * size * 0.60
        dist = np.sqrt(((z - pos[0]) / (semi[0] * scale[0])) ** 2
                       + ((y - pos[1]) / (semi[1] * scale[1])) ** 2
                       + ((x - pos[2]) / (semi[2] * scale[2])) ** 2)
        core_dist = dist * (1.0 + 0.22 * _smooth_field(rng, grids, max_freq=6.0))
        edema_dist = dist * (1.0 + 0.30 * _smooth_field(rng, grids, max_freq=4.0))
        nec_r = rng.uniform(0.42, 0.55)
        rim = rng.uniform(0.08, 0.12)
        necrosis |= core_dist < nec_r
        enhancing |= core_dist < nec_r + rim
        edema |= edema_dist < rng.uniform(0.82, 0.92)
    enhancing &= ~necrosis
    edema &= ~(necrosis | enhancing)
    tumour_masks = [m & brain for m in (necrosis, edema, enhancing)]
    necrosis, edema, enhancing = tumour_masks

    labels = np.zeros(shape, np.uint8)  # 0 bg, 1 wm, 2 gm, 3 csf, 4 edema, 5 enhancing, 6 necrosis
    for code, region in enumerate((wm, gm, csf, edema, enhancing, necrosis), start=1):
        labels[region] = code
    labels[~brain] = 0
    table = np.zeros((7, 4), np.float32)
    for code, name in enumerate(("wm", "gm", "csf", "edema", "enhancing", "necrosis"), start=1):
        table[code] = _TISSUE[name]
    contrast = rng.uniform(0.93, 1.07, size=(4,)).astype(np.float32)
    bias = 1.0 + 0.12 * _smooth_field(rng, grids, n_waves=4, max_freq=1.5)
    texture = 0.04 * _smooth_field(rng, grids, n_waves=10, max_freq=12.0)
    image = np.empty((4,) + tuple(shape), np.float32)
    for c in range(4):
        chan = table[labels, c] * contrast[c]
        chan *= bias + texture
        chan += rng.normal(0.0, 18.0, size=shape).astype(np.float32)
        np.maximum(chan, 1.0, out=chan)  # brain voxels stay strictly positive
        chan[~brain] = 0.0
        image[c] = chan
    mask = np.stack([necrosis, edema, enhancing]).astype(np.uint8)
    return image, mask


def write_kaggle_volume(data_dir: str | os.PathLike, volume_id: int, image: np.ndarray,
                        mask: np.ndarray, stored_order: Sequence[str] = KAGGLE_STORED_ORDER) -> list[Path]:
    """Write one volume as Kaggle per-slice HDF5 files, channels in the pack's stored order.

    Args:
        data_dir: the folder that receives ``volume_{id}_slice_{s}.h5``.
        volume_id: the volume number in the file names.
        image: (4, D, H, W) intensities in the canonical order T1, T1ce, T2, FLAIR; written as
            (H, W, 4) float64 per slice with channels in ``stored_order``.
        mask: (3, D, H, W) binary; written as (H, W, 3) uint8 per slice.
        stored_order: the channel order of the files (default: the Kaggle pack's FLAIR, T1, T1ce, T2).

    Returns:
        The slice files in slice order.

    Raises:
        ValueError: shapes that do not match, the wrong channel counts or a bad ``stored_order``.
    """
    if image.ndim != 4 or image.shape[0] != 4 or mask.shape != (3,) + image.shape[1:]:
        raise ValueError(f"volume {volume_id}: need image (4, D, H, W) and mask (3, D, H, W), "
                         f"got {image.shape} and {mask.shape}")
    image = reorder_channels(image, CANONICAL_ORDER, stored_order)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    img_slices = np.ascontiguousarray(image.transpose(1, 2, 3, 0), dtype=np.float64)  # (D, H, W, 4)
    mask_slices = np.ascontiguousarray(mask.transpose(1, 2, 3, 0), dtype=np.uint8)
    for s in range(image.shape[1]):
        path = data_dir / f"volume_{volume_id}_slice_{s}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("image", data=img_slices[s])
            f.create_dataset("mask", data=mask_slices[s])
        paths.append(path)
    return paths


def make_synthetic(out_dir: str | os.PathLike, n_volumes: int, shape: tuple[int, int, int] = (155, 240, 240),
                   seed: int = 0, progress: bool = False) -> Path:
    """Write the embedded dataset in the Kaggle BraTS2020 layout.

    Args:
        out_dir: the dataset root (what ``kagglehub`` would return).
        n_volumes: number of volumes, numbered 1..n_volumes.
        shape: (D, H, W) of every volume: D slices of H x W.
        seed: dataset seed; the same seed gives byte-identical arrays.
        progress: show a tqdm bar.

    Returns:
        The folder holding the ``.h5`` slices and the CSVs.

    Raises:
        ValueError: ``n_volumes`` < 1 or a bad shape.
        FileExistsError: ``out_dir`` is not empty (``tumorlib synth --overwrite`` replaces a folder whole).
    """
    if n_volumes < 1:
        raise ValueError(f"n_volumes must be >= 1, got {n_volumes}")
    from tumorlib.safety import check_empty_folder

    check_empty_folder(out_dir, "synthetic dataset")  # never mix with (or overwrite) existing data
    from tumorlib.progress import tqdm

    data_dir = Path(out_dir) / KAGGLE_SUBDIR
    data_dir.mkdir(parents=True, exist_ok=True)
    rows, names, survival = [], [], []
    meta_rng = np.random.default_rng([seed, 0])
    for vid in tqdm(range(1, n_volumes + 1), desc="synthetic volumes", disable=not progress):
        image, mask = make_phantom(shape, seed=seed, volume_id=vid)
        write_kaggle_volume(data_dir, vid, image, mask)
        has_tumour = mask.reshape(3, shape[0], -1).any(axis=(0, 2))
        rows += [(f"/content/data/volume_{vid}_slice_{s}.h5", int(has_tumour[s]), vid, s)
                 for s in range(shape[0])]
        subject = f"BraTS20_Training_{vid:03d}"
        grade = "HGG" if meta_rng.random() < 0.79 else "LGG"
        names.append((grade, None, None, None, None, subject))
        if grade == "HGG":
            survival.append((subject, round(float(meta_rng.uniform(30, 85)), 3),
                             str(int(meta_rng.integers(5, 1800))), meta_rng.choice(["GTR", "STR", ""])))
    pd.DataFrame(rows, columns=["slice_path", "target", "volume", "slice"]).to_csv(
        data_dir / "meta_data.csv", index=False)
    pd.DataFrame(names, columns=_NAME_MAPPING_COLUMNS).to_csv(data_dir / "name_mapping.csv", index=False)
    pd.DataFrame(survival, columns=_SURVIVAL_COLUMNS).to_csv(data_dir / "survival_info.csv", index=False)
    return data_dir
