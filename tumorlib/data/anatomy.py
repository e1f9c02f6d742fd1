"""Real brain anatomy for the embedded phantoms: the ICBM152 2009a template placed on the BraTS grid.

The ``nilearn`` wheel ships the ICBM152 2009a symmetric template (T1 and grey/white-matter probability
maps, 197x233x189 at 1 mm, RAS, skull-stripped; permissive MNI licence) inside the package. This module
reads those files from the installed package (no import of nilearn, no download), derives a brain
mask, CSF (brain - GM - WM) and a few helper maps (ventricles, choroid plexus and falx, periventricular
rim, deep white-matter points), and resamples them per case through a random rotation, scale, shift,
smooth elastic warp and tumour mass effect onto any (D, H, W) grid covering the BraTS 240x240x155 box.

Orientation follows the BraTS NIfTI header (``tumorlib.io.nifti``): ``H`` runs right to left, ``W``
anterior to posterior and ``D`` inferior to superior, 1 mm per voxel at full size (155, 240, 240).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["BRATS_SHAPE", "MAP_NAMES", "CaseGeometry", "deep_wm_points", "grid_world", "random_geometry",
           "resize", "sample_anatomy", "smooth_noise", "template_dir", "template_maps", "world_to_index"]

BRATS_SHAPE = (155, 240, 240)  # (D, H, W) of a BraTS volume, 1 mm isotropic
MAP_NAMES = ("t1", "gm", "wm", "brain", "vent", "plexus", "pv")
_BRATS_CENTRE = np.array([-119.5, 119.5, 74.0])  # RAS mm of the grid point the brain is centred on


def template_dir() -> Path:
    """The folder of the ICBM152 files inside the installed ``nilearn`` package.

    Raises:
        FileNotFoundError: nilearn is not installed or lacks the template files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded phantoms need the ICBM152 template shipped in the nilearn "
                                "package: pip install nilearn")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not list(folder.glob("mni_icbm152_t1_tal_nlin_sym_09a*.nii*")):
        raise FileNotFoundError(f"{folder}: no ICBM152 2009a template files (mni_icbm152_*_tal_nlin_sym_09a)")
    return folder


@functools.lru_cache(maxsize=1)
def _raw_template() -> tuple[np.ndarray, np.ndarray]:
    """All template maps, cropped to the brain: ((7, X, Y, Z) float32 in [0, ~1.3], 4x4 affine)."""
    import nibabel as nib

    folder = template_dir()
    arrays, affine = {}, None
    for kind in ("t1", "gm", "wm"):
        path = sorted(folder.glob(f"mni_icbm152_{kind}_tal_nlin_sym_09a*.nii*"))[0]
        img = nib.load(str(path))
        arrays[kind] = np.asarray(img.dataobj, dtype=np.float32)
        affine = img.affine if affine is None else affine
    brain = (arrays["t1"] > 0).astype(np.float32)
    box = tuple(slice(max(0, a.min() - 6), a.max() + 7) for a in np.nonzero(brain))
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box])
    brain = brain[box]
    gm, wm = arrays["gm"][box] / 255.0, arrays["wm"][box] / 255.0
    t1 = arrays["t1"][box]
    t1 = t1 / np.median(t1[wm > 0.9])
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    deep = ndimage.gaussian_filter(brain, 7.0) > 0.96
    vent = csf * deep
    # RAS mm of every voxel, for the region helpers below
    ijk = np.indices(brain.shape, dtype=np.float32)
    x, y, z = (affine[a, a] * ijk[a] + affine[a, 3] for a in range(3))
    trigone = np.exp(-((np.abs(x) - 27) ** 2 + (y + 38) ** 2 + (z - 14) ** 2) / (2 * 9.0 ** 2))
    third = np.exp(-(x ** 2 + (y + 12) ** 2 + (z - 8) ** 2) / (2 * 6.0 ** 2))
    falx = np.exp(-x ** 2 / (2 * 1.2 ** 2)) * (z > 10) * csf
    plexus = np.clip(vent * (trigone + third) * 1.6 + 0.8 * falx, 0.0, 1.0)
    pv = ndimage.gaussian_filter(vent, 2.5) * wm * (vent < 0.3)
    pv = np.clip(pv / max(float(pv.max()), 1e-6) * 2.0, 0.0, 1.0)
    maps = np.stack([t1, gm, wm, brain, vent, plexus, pv]).astype(np.float32)
    return maps, affine


@functools.lru_cache(maxsize=4)
def template_maps(sigmas: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The template maps, smoothed against aliasing before resampling to a coarser grid.

    Args:
        sigmas: Gaussian sigma in template voxels (1 mm) along x, y, z; zeros: no smoothing.

    Returns:
        maps: (7, X, Y, Z) float32 in the order of ``MAP_NAMES`` (T1 normalised to white matter = 1;
            GM, WM, brain, ventricle, choroid plexus + falx and periventricular-rim weights in [0, 1]).
        affine: (4, 4) voxel-to-RAS-mm matrix of the cropped maps.
    """
    maps, affine = _raw_template()
    if max(sigmas) <= 0.3:
        return maps, affine
    out = np.empty_like(maps)
    for m in range(len(maps)):
        ndimage.gaussian_filter(maps[m], sigmas, output=out[m], truncate=3.0)
    return out, affine


@functools.lru_cache(maxsize=1)
def deep_wm_points() -> np.ndarray:
    """RAS mm of deep cerebral white-matter voxels (WM probability > 0.8, >= 12 mm inside): (N, 3)."""
    maps, affine = _raw_template()
    inside = ndimage.distance_transform_edt(maps[3][::2, ::2, ::2] > 0.5) * 2.0 >= 12.0
    ijk = np.argwhere((maps[2][::2, ::2, ::2] > 0.8) & inside).astype(np.float64) * 2.0
    mm = ijk @ affine[:3, :3].T + affine[:3, 3]
    return mm[mm[:, 2] > -8.0]  # cerebrum only (no cerebellum or brainstem)


@dataclass(frozen=True)
class CaseGeometry:
    """How one case maps the BraTS grid onto the template.

    ``template_mm = centre_t + rotation.T @ (world - centre_b - shift) / scale`` (+ the elastic warp),
    where ``world`` is BraTS RAS mm and ``centre_t`` the template brain's centre.
    """

    rotation: np.ndarray  # (3, 3)
    scale: np.ndarray  # (3,)
    shift: np.ndarray  # (3,) mm
    warp: np.ndarray  # (3, a, b, c) coarse displacement in mm, over the grid
    centre_t: np.ndarray  # (3,) mm

    def to_world(self, template_mm: np.ndarray) -> np.ndarray:
        """BraTS RAS mm of template points (N, 3), ignoring the elastic warp."""
        return (template_mm - self.centre_t) * self.scale @ self.rotation.T + _BRATS_CENTRE + self.shift


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_geometry(rng: np.random.Generator) -> CaseGeometry:
    """A random pose: rotation up to ~10 degrees, scale ~8 %, shift a few mm, a smooth elastic warp."""
    maps, affine = _raw_template()
    lo = affine[:3, 3]
    hi = lo + np.diag(affine)[:3] * (np.array(maps.shape[1:]) - 1)
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.array([8.0, 6.0, 10.0]))
    scale = np.exp(rng.normal(0.0, 0.035) + rng.normal(0.0, 0.02, 3)).clip(0.9, 1.1)
    shift = rng.uniform(-1, 1, 3) * np.array([5.0, 6.0, 3.0])
    coarse = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (3, 5, 6, 6)), (0, 0.8, 0.8, 0.8), mode="wrap")
    warp = coarse / coarse.std() * rng.uniform(1.5, 3.0)
    return CaseGeometry(_rotation(angles), scale, shift, warp.astype(np.float32), (lo + hi) / 2.0)


def grid_world(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BraTS RAS mm (x, y, z) of the voxel centres of a (D, H, W) grid over the BraTS box, broadcastable."""
    d, h, w = shape
    k = (np.arange(d, dtype=np.float32) + 0.5) * (BRATS_SHAPE[0] / d) - 0.5
    i = (np.arange(h, dtype=np.float32) + 0.5) * (BRATS_SHAPE[1] / h) - 0.5
    j = (np.arange(w, dtype=np.float32) + 0.5) * (BRATS_SHAPE[2] / w) - 0.5
    return -i[None, :, None], (239.0 - j)[None, None, :], k[:, None, None]


def world_to_index(world: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) BraTS RAS mm -> (N, 3) float (d, h, w) indices of a (D, H, W) grid."""
    d, h, w = shape
    k = (world[:, 2] + 0.5) * d / BRATS_SHAPE[0] - 0.5
    i = (-world[:, 0] + 0.5) * h / BRATS_SHAPE[1] - 0.5
    j = (239.0 - world[:, 1] + 0.5) * w / BRATS_SHAPE[2] - 0.5
    return np.stack([k, i, j], axis=1)


def resize(field: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """Linear (or spline) resize of a small array to ``shape`` exactly (grid-mode zoom)."""
    zoom = [s / c for s, c in zip(shape, field.shape)]
    out = ndimage.zoom(field, zoom, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # rounding: pad or crop by a voxel
        out = np.pad(out, [(0, max(0, s - o)) for s, o in zip(shape, out.shape)], mode="edge")
        out = out[tuple(slice(0, s) for s in shape)]
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], corr: float | tuple[float, ...]) -> np.ndarray:
    """A smooth Gaussian random field of unit std with correlation length ``corr`` voxels per axis.

    Args:
        rng: the case's generator.
        shape: output shape.
        corr: correlation length in voxels (one value or one per axis); below ~1.5 the field is
            white noise lightly blurred at full size, above it coarse noise is upsampled (fast).

    Returns:
        (shape) float32, mean ~0, std ~1.
    """
    corr = np.broadcast_to(np.asarray(corr, dtype=np.float64), (len(shape),))
    if corr.max() < 1.5:
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), corr * 0.6)
    else:
        coarse = tuple(int(max(2, np.ceil(s / max(c, 1.0)) + 2)) for s, c in zip(shape, corr))
        small = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 0.7, mode="wrap")
        field = resize(small, shape, order=1)
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def sample_anatomy(shape: tuple[int, int, int], geometry: CaseGeometry,
                   masses: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Resample the template maps onto a (D, H, W) grid for one case.

    Args:
        shape: (D, H, W) of the output grid, which spans the BraTS 240x240x155 box.
        geometry: the case's pose (``random_geometry``).
        masses: per lesion (centre in BraTS RAS mm (3,), strength in [0, 0.5], width in mm): tissue
            within about ``width`` of the centre is pushed outwards (mass effect).

    Returns:
        (7, D, H, W) float32 maps in the order of ``MAP_NAMES``.
    """
    spacing = np.array(BRATS_SHAPE, dtype=np.float64) / np.array(shape)  # (D, H, W) mm
    # anti-aliasing: template axes x, y, z run along H, W, D
    sigmas = tuple(float(round(max(0.0, 0.45 * (s - 1.0)), 2)) for s in (spacing[1], spacing[2], spacing[0]))
    maps, affine = template_maps(sigmas)
    x, y, z = grid_world(shape)
    full = np.broadcast_shapes(x.shape, y.shape, z.shape)
    world = [np.broadcast_to(c, full).astype(np.float32) for c in (x, y, z)]
    for centre, strength, width in masses:
        diff = [world[a] - np.float32(centre[a]) for a in range(3)]
        fall = np.exp(-(diff[0] ** 2 + diff[1] ** 2 + diff[2] ** 2) / np.float32(2 * width ** 2))
        fall *= np.float32(strength)
        for a in range(3):
            world[a] -= diff[a] * fall
    warp = [resize(geometry.warp[a], full, order=1) for a in range(3)]
    rel = [world[a] - np.float32(_BRATS_CENTRE[a] + geometry.shift[a]) + warp[a] for a in range(3)]
    rot = geometry.rotation.T / geometry.scale[:, None]  # template = centre_t + (R^T rel) / scale
    inv = np.linalg.inv(affine)
    coords = []
    for t in range(3):
        mm = geometry.centre_t[t] + sum(np.float32(rot[t, a]) * rel[a] for a in range(3))
        coords.append(np.float32(inv[t, t]) * mm + np.float32(inv[t, 3]))
    out = np.empty((len(maps),) + full, np.float32)
    coord_arr = np.stack(coords)
    for m in range(len(maps)):
        ndimage.map_coordinates(maps[m], coord_arr, output=out[m], order=1, mode="constant", cval=0.0)
    return out
