"""The embedded dataset: deterministic brain-MRI phantoms written in the Kaggle BraTS2020 layout.

Real BraTS cannot be downloaded everywhere (CI has no network), so every notebook, test and benchmark
runs on phantoms by default. Each phantom is real anatomy with simulated tumours: the ICBM152 template
(``tumorlib.data.anatomy``) warped per case onto the BraTS grid, contrasts from the tissue
probabilities, look-alikes that are not tumour (enhancing vessels, choroid plexus, falx and dura on
T1ce; white-matter spots and periventricular caps on FLAIR), one to three tumours (edema along white
matter, enhancing rim with gaps, off-centre necrosis, solid and low-grade-like cases, mass effect,
jittered labels), then gain, bias field, thick-slice blur and Rician noise. A volume depends only on
(seed, volume id), so a set of 10 holds the first 10 volumes of a set of 20.

The layout written is that of the Kaggle dataset ``awsaf49/brats2020-training-data``::

    OUT/BraTS2020_training_data/content/data/volume_{id}_slice_{s}.h5   image (H, W, 4) float64,
                                                                         mask (H, W, 3) uint8
    OUT/BraTS2020_training_data/content/data/meta_data.csv               slice_path, target, volume, slice
    OUT/BraTS2020_training_data/content/data/name_mapping.csv
    OUT/BraTS2020_training_data/content/data/survival_info.csv
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from tumorlib.data.anatomy import (BRATS_SHAPE, deep_wm_points, random_geometry, sample_anatomy, smooth_noise,
                                   world_to_index)
from tumorlib.io.kaggle_write import write_kaggle_volume

__all__ = ["KAGGLE_SUBDIR", "make_phantom", "make_synthetic"]

KAGGLE_SUBDIR = Path("BraTS2020_training_data") / "content" / "data"

# Healthy tissue per modality (T1, T1ce, T2, FLAIR), relative to white matter = 1 (textbook contrasts:
# T1 WM > GM > CSF, T2 CSF > GM > WM, FLAIR GM > WM with CSF suppressed).
_GM = np.array([0.74, 0.76, 1.30, 1.22], np.float32)
_CSF = np.array([0.30, 0.32, 2.40, 0.30], np.float32)
# Scanner-like white-matter level of each modality before the per-case gain.
_LEVEL = np.array([800.0, 850.0, 600.0, 550.0], np.float32)

_NAME_MAPPING_COLUMNS = [
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
]
_SURVIVAL_COLUMNS = ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]


def _top(score: np.ndarray, allowed: np.ndarray, n: int) -> float:
    """The score threshold that keeps the ``n`` highest-scoring allowed voxels (inf when none)."""
    values = score[allowed]
    if n <= 0 or values.size == 0:
        return float("inf")
    n = min(n, values.size)
    return float(np.partition(values, values.size - n)[values.size - n])


def _lesion(rng: np.random.Generator, tissue: dict[str, np.ndarray], centre: np.ndarray, n_wt: int,
            kind: str, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """One lesion inside a box of the tissue maps: image weights and jittered labels (all box-shaped).

    ``kind`` is ``necrotic`` (enhancing rim with gaps around an off-centre necrosis), ``solid``
    (enhancing core, no necrosis) or ``lowgrade`` (no enhancement, FLAIR/T2-bright core).
    """
    wm, csf, brain = tissue["wm"], tissue["csf"], tissue["brain"]
    shape = np.array(wm.shape)
    radius_mm = (3.0 * n_wt * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0)
    aniso = np.exp(rng.normal(0.0, 0.18, 3))
    aniso /= np.prod(aniso) ** (1.0 / 3.0)
    half = np.ceil(2.4 * radius_mm * aniso.max() / spacing).astype(int) + 2
    c = np.clip(np.round(centre).astype(int), 0, shape - 1)
    box = tuple(slice(max(0, c[a] - half[a]), min(shape[a], c[a] + half[a] + 1)) for a in range(3))
    bshape = tuple(s.stop - s.start for s in box)
    grids = [((np.arange(box[a].start, box[a].stop, dtype=np.float32) - centre[a]) * spacing[a])
             .reshape([-1 if b == a else 1 for b in range(3)]) for a in range(3)]

    def dist(offset_mm: np.ndarray, r_mm: float) -> np.ndarray:
        return np.sqrt(sum(((grids[a] - offset_mm[a]) / aniso[a]) ** 2 for a in range(3))) / r_mm

    corr = np.maximum(0.55 * radius_mm / spacing, 1.0)
    fine = smooth_noise(rng, bshape, 1.0)
    jitter = 0.7 * float(spacing.mean()) / radius_mm  # about one voxel of border jitter
    w_b, c_b, b_b = wm[box], csf[box], brain[box] > 0.5
    shape_score = 1.0 - dist(np.zeros(3), radius_mm) + rng.uniform(0.3, 0.5) * smooth_noise(rng, bshape, corr)
    score = shape_score + 0.45 * (w_b - 0.5) - 3.0 * (c_b > 0.55)
    allowed = b_b & (c_b < 0.55)
    thr = _top(score, allowed, n_wt)
    wt_img = allowed & (score >= thr)
    wt_lab = allowed & (score + jitter * fine >= thr)
    fade = (0.5 + 0.5 * np.clip((score - thr) / 0.35, 0.0, 1.0)) * wt_img
    core_frac = rng.uniform(0.25, 0.6) if kind == "lowgrade" else rng.uniform(0.2, 0.5)
    r_core = radius_mm * core_frac ** (1.0 / 3.0)
    off = rng.normal(0.0, 0.15 * radius_mm, 3)
    core_score = 1.0 - dist(off, r_core) + 0.35 * smooth_noise(rng, bshape, corr * 0.7)
    thr_c = _top(core_score, wt_img, int(core_frac * wt_img.sum()))
    core_img = wt_img & (core_score >= thr_c)
    core_lab = wt_lab & (core_score + jitter * fine >= thr_c)
    zeros = np.zeros(bshape, bool)
    nec_img, nec_lab = zeros, zeros
    if kind == "necrotic":
        nec_frac = rng.uniform(0.35, 0.7)
        off_n = off + rng.normal(0.0, 0.15 * r_core, 3)
        nec_score = 1.0 - dist(off_n, r_core * nec_frac ** (1 / 3)) + 0.4 * smooth_noise(rng, bshape, corr * 0.5)
        thr_n = _top(nec_score, core_img, int(nec_frac * core_img.sum()))
        nec_img = core_img & (nec_score >= thr_n)
        nec_lab = core_lab & (nec_score + jitter * fine >= thr_n)
    if kind == "lowgrade":
        enh_img, enh_lab, net_img, net_lab = zeros, zeros, core_img, core_lab
    else:
        gaps = smooth_noise(rng, bshape, corr * 0.5)
        gap_thr = np.quantile(gaps, 1.0 - rng.uniform(0.05, 0.35)) if kind == "necrotic" else np.inf
        enh_img = core_img & ~nec_img & (gaps < gap_thr)
        enh_lab = core_lab & ~nec_lab & (gaps < gap_thr)
        net_img, net_lab = core_img & ~nec_img & ~enh_img, core_lab & ~nec_lab & ~enh_lab
    return {"box": box, "fade": fade, "wt": wt_lab, "nec_img": nec_img | net_img, "nec": nec_lab | net_lab,
            "enh_img": enh_img, "enh": enh_lab, "necrosis_img": nec_img, "net_img": net_img}


def _vessels(rng: np.random.Generator, shape: tuple[int, int, int], brain: np.ndarray,
             spacing: np.ndarray, count: int) -> np.ndarray:
    """Thin tortuous tubes (weights in [0, 1]) through the brain: enhancing vessels on T1ce."""
    out = np.zeros(shape, np.float32)
    inside = np.argwhere(brain[::2, ::2, ::2] > 0.5) * 2
    step = 0.5 * float(spacing.min())
    for _ in range(count):
        p = inside[rng.integers(len(inside))].astype(np.float64) * spacing
        direction = rng.normal(size=3)
        length = rng.uniform(15.0, 60.0)
        pts = []
        for _ in range(int(length / step)):
            direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.12, 3)
            p = p + step * direction / np.linalg.norm(direction)
            pts.append(p / spacing)
        idx = np.clip(np.round(np.array(pts)).astype(int), 0, np.array(shape) - 1)
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = rng.uniform(0.6, 1.0)
    sigma = np.maximum(0.8 / spacing, 0.5)
    out = ndimage.gaussian_filter(out, sigma) * np.float32(2 * np.pi * float(np.prod(sigma)) ** (2 / 3))
    return np.clip(out, 0.0, 1.0) * (brain > 0.5)


def make_phantom(shape: tuple[int, int, int] = (155, 240, 240), seed: int = 0,
                 volume_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic brain with tumour(s), on real anatomy (ICBM152) warped per case.

    The (D, H, W) grid spans the BraTS 240x240x155 box (1 mm voxels at full size), oriented as the
    BraTS NIfTI files: H right to left, W anterior to posterior, D inferior to superior.

    Args:
        shape: (D, H, W) = (slices, rows, columns); each side >= 8.
        seed: dataset seed.
        volume_id: the volume number; together with ``seed`` it fixes the phantom.

    Returns:
        image: (4, D, H, W) float32, channels T1, T1ce, T2, FLAIR, exactly 0 outside the brain.
        mask: (3, D, H, W) uint8 in {0, 1}, disjoint channels necrosis/NET, edema, enhancing.

    Raises:
        ValueError: a side shorter than 8 voxels.
        FileNotFoundError: the ICBM152 template (shipped in the nilearn package) is missing.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be 3 sides of at least 8 voxels, got {shape}")
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([seed, volume_id])
    spacing = np.array(BRATS_SHAPE, np.float64) / np.array(shape)
    case = _draw_case(rng)
    t1_template, gm, wm, brain_p, vent, plexus, pv = sample_anatomy(shape, case["geometry"], case["masses"])
    tissue = {"wm": wm, "csf": np.clip(brain_p - gm - wm, 0.0, 1.0), "brain": brain_p}
    mask, fade, weights = _tumours(rng, tissue, case, shape, spacing)
    image = _healthy_contrasts(rng, tissue, gm, t1_template, shape, spacing)
    _add_look_alikes(rng, image, case, pv, plexus, brain_p, shape, spacing)
    _add_tumour_contrast(rng, image, fade, weights, case["kind"], shape, spacing)
    _acquire(rng, image, brain_p > 0.5, shape, spacing)
    return image, mask.astype(np.uint8)


def _draw_case(rng: np.random.Generator) -> dict:
    """The case's random choices before any image: geometry, tumour kind and size, lesion centres and
    the masses that push the anatomy aside (``sample_anatomy``)."""
    geometry = random_geometry(rng)
    kind = str(rng.choice(["necrotic", "solid", "lowgrade"], p=[0.62, 0.22, 0.16]))
    wt_fraction = float(np.clip(np.exp(rng.normal(np.log(0.05), 0.6)), 0.012, 0.14))
    n_lesions = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    shares = np.array([1.0])
    if n_lesions > 1:
        main = rng.uniform(0.6, 0.85)
        shares = np.r_[main, (1.0 - main) * rng.dirichlet(np.ones(n_lesions - 1))]
    points = deep_wm_points()
    centres = [geometry.to_world(points[rng.integers(len(points))][None])[0] for _ in range(n_lesions)]
    brain_mm3 = 1.25e6 * float(np.prod(geometry.scale))
    masses = []
    for share, centre in zip(shares, centres):
        radius = (3.0 * wt_fraction * share * brain_mm3 / (4 * np.pi)) ** (1 / 3)
        masses.append((centre, float(np.clip(rng.uniform(0.25, 0.45) * radius / 20.0, 0.05, 0.45)), 1.3 * radius))
    return {"geometry": geometry, "kind": kind, "wt_fraction": wt_fraction, "shares": shares, "points": points,
            "centres": centres, "masses": masses}


def _tumours(rng: np.random.Generator, tissue: dict[str, np.ndarray], case: dict, shape: tuple[int, int, int],
             spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tumour labels (jittered, (3, D, H, W) bool) and the weights that drive the image: the edema fade
    and the (necrosis, NET, enhancing) weights, blurred by the partial volume."""
    brain = tissue["brain"] > 0.5
    n_brain = int(brain.sum())
    mask = np.zeros((3,) + shape, bool)
    fade = np.zeros(shape, np.float32)
    nec_w = np.zeros(shape, np.float32)
    net_w = np.zeros(shape, np.float32)
    enh_w = np.zeros(shape, np.float32)
    for share, centre in zip(case["shares"], case["centres"]):
        idx = world_to_index(centre[None], shape)[0]
        lesion = _lesion(rng, tissue, idx, int(case["wt_fraction"] * share * n_brain), case["kind"], spacing)
        box = lesion["box"]
        fade[box] = np.maximum(fade[box], lesion["fade"])
        mask[1][box] |= lesion["wt"]
        mask[0][box] |= lesion["nec"]
        mask[2][box] |= lesion["enh"]
        nec_w[box] = np.maximum(nec_w[box], lesion["necrosis_img"])
        net_w[box] = np.maximum(net_w[box], lesion["net_img"])
        enh_w[box] = np.maximum(enh_w[box], lesion["enh_img"])
    mask[2] &= ~mask[0]
    mask[1] &= ~(mask[0] | mask[2])
    mask &= brain
    pv_sigma = np.maximum(0.6 / spacing, 0.3)
    for w in (nec_w, net_w, enh_w):
        w[...] = ndimage.gaussian_filter(w, pv_sigma)
    return mask, fade, (nec_w, net_w, enh_w)


def _healthy_contrasts(rng: np.random.Generator, tissue: dict[str, np.ndarray], gm: np.ndarray,
                       t1_template: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    """Healthy contrasts from the tissue probabilities (partial volume), T1 half from the template's T1."""
    wm, csf = tissue["wm"], tissue["csf"]
    wm_gm = wm + gm
    image = np.empty((4,) + shape, np.float32)
    jitter = rng.uniform(0.94, 1.06, size=(2, 4)).astype(np.float32)
    for m in range(4):
        image[m] = wm + gm * (_GM[m] * jitter[0, m]) + csf * (_CSF[m] * jitter[1, m])
    image[0] = 0.5 * image[0] + 0.5 * t1_template * (wm_gm + csf > 0.05)
    image[1] = image[0] * np.float32(_GM[1] / _GM[0]) ** (gm / np.maximum(wm_gm + csf, 1e-3))
    texture = smooth_noise(rng, shape, np.maximum(2.0 / spacing, 1.0))
    image *= 1.0 + np.float32(0.05) * texture
    return image


def _add_look_alikes(rng: np.random.Generator, image: np.ndarray, case: dict, pv: np.ndarray, plexus: np.ndarray,
                     brain_p: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray) -> None:
    """Look-alikes that are not tumour, in place: white-matter spots and periventricular caps on
    FLAIR/T2, vessels, choroid plexus and dura on T1ce."""
    points, geometry = case["points"], case["geometry"]
    spots = np.zeros(shape, np.float32)
    for p in points[rng.integers(len(points), size=int(rng.integers(4, 13)))]:
        i = np.round(world_to_index(geometry.to_world(p[None]), shape)[0]).astype(int)
        if all(0 <= i[a] < shape[a] for a in range(3)):
            spots[tuple(i)] = rng.uniform(0.5, 1.0)
    spot_sigma = rng.uniform(1.2, 2.5) / spacing
    spots = np.clip(ndimage.gaussian_filter(spots, spot_sigma) * np.float32(
        (2 * np.pi) ** 1.5 * np.prod(spot_sigma)), 0, 1)
    caps = pv * np.clip(0.6 + 0.5 * smooth_noise(rng, shape, 6.0 / spacing), 0.0, 1.0) * rng.uniform(0.5, 1.0)
    flair_like = np.maximum(spots, caps)
    image[3] *= 1.0 + flair_like * np.float32(rng.uniform(0.3, 0.5))
    image[2] *= 1.0 + flair_like * np.float32(rng.uniform(0.2, 0.35))
    vessels = _vessels(rng, shape, brain_p, spacing, int(rng.integers(25, 46)))
    image[1] *= 1.0 + vessels * np.float32(rng.uniform(0.6, 1.1))
    image[3] *= 1.0 + vessels * np.float32(rng.uniform(0.0, 0.3))
    choroid = np.clip(plexus * (1.0 + 0.4 * smooth_noise(rng, shape, 3.0 / spacing)), 0.0, 1.0)
    image[1] = image[1] * (1 - choroid) + choroid * np.float32(rng.uniform(1.1, 1.45))
    image[0] = image[0] * (1 - choroid) + choroid * np.float32(0.7)
    image[3] = image[3] * (1 - choroid) + choroid * np.float32(rng.uniform(0.95, 1.3))
    image[2] = image[2] * (1 - choroid) + choroid * np.float32(rng.uniform(1.1, 1.6))
    edge = np.clip(4.0 * brain_p * (1.0 - brain_p), 0.0, 1.0)
    dura = edge * (smooth_noise(rng, shape, 12.0 / spacing) > rng.uniform(-0.6, 0.2))
    image[1] *= 1.0 + dura * np.float32(rng.uniform(0.5, 1.0))


def _add_tumour_contrast(rng: np.random.Generator, image: np.ndarray, fade: np.ndarray,
                         weights: tuple[np.ndarray, np.ndarray, np.ndarray], kind: str,
                         shape: tuple[int, int, int], spacing: np.ndarray) -> None:
    """Tumour in place: edema as a relative rise over the local tissue, core classes blended in."""
    rise = np.array([-rng.uniform(0.08, 0.2), 0.0, rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)], np.float32)
    rise[1] = rise[0]
    for m in range(4):
        image[m] *= 1.0 + fade * rise[m]
    values = {
        "nec": (rng.uniform(0.35, 0.55), rng.uniform(0.38, 0.6), rng.uniform(1.6, 2.3), rng.uniform(0.5, 1.1)),
        "net": (rng.uniform(0.55, 0.75), rng.uniform(0.58, 0.8), rng.uniform(1.4, 1.9),
                rng.uniform(1.3, 1.7) if kind == "lowgrade" else rng.uniform(1.0, 1.4)),
        "enh": (rng.uniform(0.7, 0.95), rng.uniform(1.1, 1.45), rng.uniform(1.1, 1.5), rng.uniform(1.1, 1.4)),
    }
    core_tex = 1.0 + np.float32(0.1) * smooth_noise(rng, shape, np.maximum(2.5 / spacing, 1.0))
    for name, w in zip(("nec", "net", "enh"), weights):
        for m in range(4):
            image[m] = image[m] * (1.0 - w) + w * np.float32(values[name][m]) * core_tex


def _acquire(rng: np.random.Generator, image: np.ndarray, brain: np.ndarray, shape: tuple[int, int, int],
             spacing: np.ndarray) -> None:
    """Acquisition in place: gain and offset, bias field, thick-slice blur, Rician noise; 0 outside the brain."""
    bias = np.exp(np.float32(rng.uniform(0.08, 0.22)) * smooth_noise(rng, shape, 70.0 / spacing))
    for m in range(4):
        gain = _LEVEL[m] * np.float32(rng.uniform(0.8, 1.25))
        chan = image[m] * gain * bias ** np.float32(rng.uniform(0.7, 1.0)) + np.float32(rng.uniform(0, 0.04)) * gain
        if rng.random() < 0.3:
            chan = ndimage.gaussian_filter1d(chan, rng.uniform(1.0, 2.5) / spacing[0], axis=0)
        sigma = np.float32(rng.uniform(0.025, 0.05)) * gain
        noise = rng.standard_normal((2,) + shape, dtype=np.float32) * sigma
        chan = np.sqrt((chan + noise[0]) ** 2 + noise[1] ** 2)
        np.maximum(chan, 1.0, out=chan)
        chan[~brain] = 0.0
        image[m] = chan


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
    from tumorlib.core.folders import check_empty_folder

    check_empty_folder(out_dir, "synthetic dataset")  # never mix with (or overwrite) existing data
    from tumorlib.core.progress import tqdm

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
