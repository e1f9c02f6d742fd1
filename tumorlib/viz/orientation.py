"""Display orientation from the data's geometry: radiological convention for every plane.

Convention (as radiology workstations show images):

- axial: anterior at the top, the patient's left on the image's right (the patient seen from the feet);
- coronal: superior at the top, the patient's left on the image's right (the patient faces the viewer);
- sagittal: superior at the top, anterior on the image's left.

Geometry. ``display_transform`` takes the NIfTI affine of the stored (H, W, D) array, the one
``tumorlib.io.nifti.load_nifti_case`` returns (tumorlib's (D, H, W) axis ``d`` is NIfTI axis 2, ``h`` axis
0, ``w`` axis 1), and asks ``nibabel.orientations.io_orientation`` which anatomical direction (RAS+) each
axis runs to; the flips and the transpose of each plane follow from that, not from a rule about the
pack. Kaggle HDF5 volumes have no header; they are the BraTS2020 cases resliced into slices, and
``kaggle_affine`` gives the geometry tumorlib writes for Kaggle predictions
(``tumorlib.io.nifti_write.BRATS2020_AFFINE``: the (H, W, D) axes run to the patient's left, posterior,
superior).

Tolerance. The display cuts along the array axes and names each edge by the nearest anatomical
direction; that is honest only when the axes are nearly aligned with the anatomy. An affine whose
axes are more than ``MAX_OBLIQUE_DEG`` (5 degrees) from the nearest anatomical axis (``nibabel.affines.
obliquity``), or whose 3x3 part is singular, is refused with a ValueError that names it.

Index. ``DisplayTransform.plane(volume, plane, index)`` takes the array index along the tumorlib axis
the plane cuts (``axis(plane)``), so the same index addresses the data and the picture; ``point`` maps a
voxel to its (row, column) in a plane and ``voxel`` a (row, column) back to the voxel (clicks).

No geometry. ``array_transform(shape)`` is the display tumorlib used before it read the geometry (axial
``volume[z]`` as stored, coronal and sagittal with the last slice at the top): figures and the viewer
fall back to it, without direction labels, when they are given no affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from nibabel.affines import obliquity, voxel_sizes
from nibabel.orientations import io_orientation, ornt2axcodes

__all__ = [
    "DISPLAY_PLANES",
    "MAX_OBLIQUE_DEG",
    "DisplayTransform",
    "array_transform",
    "direction_labels",
    "display_transform",
    "kaggle_affine",
    "tumorlib_affine",
    "volume_transform",
]

#: Largest angle, in degrees, between an array axis and its nearest anatomical axis that is displayed.
MAX_OBLIQUE_DEG = 5.0
#: The planes, in display order.
DISPLAY_PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
_RAS = ("R", "A", "S")
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
# plane -> (world axis cut, world axis of the rows, world axis of the columns); world 0 R, 1 A, 2 S.
# Rows run from the top down and columns from left to right towards the negative direction
# (P, I, L): anterior/superior at the top, patient right (or anterior) on the left.
_PLANES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
_NIFTI_OF_TUMORLIB = (2, 0, 1)  # tumorlib axis d, h, w is NIfTI axis 2, 0, 1


def kaggle_affine() -> np.ndarray:
    """The NIfTI affine of a Kaggle-pack volume: BraTS2020's, as tumorlib writes Kaggle predictions.

    Returns:
        (4, 4) float64 copy of ``tumorlib.io.nifti_write.BRATS2020_AFFINE``.
    """
    from tumorlib.io.nifti_write import BRATS2020_AFFINE

    return np.array(BRATS2020_AFFINE, dtype=np.float64)


def tumorlib_affine(affine: Any) -> np.ndarray:
    """The affine of tumorlib's (D, H, W) axes from the NIfTI affine of the (H, W, D) array.

    Args:
        affine: (4, 4) NIfTI affine.

    Returns:
        (4, 4) float64 with columns reordered (d, h, w, translation).

    Raises:
        ValueError: not a finite 4x4 array.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"affine must be a finite 4x4 array, got shape {a.shape}: {a.tolist()}")
    return a[:, list(_NIFTI_OF_TUMORLIB) + [3]]


@dataclass(frozen=True, eq=False)
class DisplayTransform:
    """How to cut and orient each plane of one volume's geometry (see the module text).

    Attributes:
        shape: (D, H, W) of the volumes it displays.
        ornt: (3, 2) per tumorlib axis: the RAS axis it runs along (0 R, 1 A, 2 S) and +1/-1 whether it
            runs towards R/A/S or the opposite.
        spacing: voxel size along (D, H, W) in mm.
    """

    shape: tuple[int, int, int]
    ornt: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """The direction each of (D, H, W) runs towards, e.g. ``("S", "L", "P")`` for BraTS2020."""
        return tuple(ornt2axcodes(self.ornt))

    def axis(self, plane: str) -> int:
        """The tumorlib axis (0 D, 1 H, 2 W) that ``plane`` cuts, i.e. what ``index`` counts along."""
        return self._axis_of_world(_spec(plane)[0])

    def _axis_of_world(self, world: int) -> int:
        return int(np.nonzero(self.ornt[:, 0] == world)[0][0])

    def plane(self, volume: Any, plane: str, index: int) -> np.ndarray:
        """One plane of a volume as it is displayed (radiological convention).

        Args:
            volume: (D, H, W) array, or (..., D, H, W) with leading axes kept (channels, batch).
            plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
            index: array index along ``axis(plane)``.

        Returns:
            (..., rows, columns) view: rows from the top of the picture down.

        Raises:
            ValueError: an unknown plane, or a volume whose last three axes are not ``shape``.
            IndexError: ``index`` outside the volume.
        """
        vol = np.asarray(volume)
        if vol.ndim < 3 or tuple(vol.shape[-3:]) != self.shape:
            raise ValueError(f"volume of shape {vol.shape} does not end with the display shape {self.shape}")
        _, row_world, col_world = _spec(plane)
        cut = self.axis(plane)
        if not -self.shape[cut] <= index < self.shape[cut]:
            raise IndexError(f"{plane} index {index} outside 0..{self.shape[cut] - 1} (axis {cut})")
        row, col = self._axis_of_world(row_world), self._axis_of_world(col_world)
        lead = vol.ndim - 3
        picked = [slice(None)] * vol.ndim
        picked[lead + cut] = index
        out = vol[tuple(picked)]
        rest = [a for a in range(3) if a != cut]  # the two remaining tumorlib axes, in order
        if rest.index(row) == 1:
            out = np.swapaxes(out, -1, -2)
        flips = [slice(None)] * out.ndim
        for position, axis in ((-2, row), (-1, col)):
            if self.ornt[axis, 1] > 0:  # runs towards R/A/S: display it running the other way
                flips[position] = slice(None, None, -1)
        return out[tuple(flips)]

    def labels(self, plane: str) -> dict[str, str]:
        """The anatomical direction at each edge of a displayed plane.

        Returns:
            ``{"top", "bottom", "left", "right"}`` -> one of R, L, A, P, S, I (axial: A, P, R, L).

        Raises:
            ValueError: an unknown plane.
        """
        _, row_world, col_world = _spec(plane)
        top, left = _RAS[row_world], _RAS[col_world]
        return {"top": top, "bottom": _OPPOSITE[top], "left": left, "right": _OPPOSITE[left]}

    def point(self, plane: str, voxel: Sequence[int]) -> tuple[int, int]:
        """Where a voxel (d, h, w) lies in a displayed plane, as (row, column) (crosshairs, markers)."""
        _, row_world, col_world = _spec(plane)
        out = []
        for world in (row_world, col_world):
            axis = self._axis_of_world(world)
            i = int(voxel[axis])
            out.append(self.shape[axis] - 1 - i if self.ornt[axis, 1] > 0 else i)
        return out[0], out[1]

    def voxel(self, plane: str, index: int, row: int, col: int) -> tuple[int, int, int]:
        """The voxel (d, h, w) shown at (row, column) of a displayed plane cut at ``index`` (clicks).

        Raises:
            ValueError: an unknown plane. IndexError: a row, column or index outside the plane.
        """
        _, row_world, col_world = _spec(plane)
        out = [0, 0, 0]
        out[self.axis(plane)] = int(index)
        for world, value in ((row_world, row), (col_world, col)):
            axis = self._axis_of_world(world)
            if not 0 <= int(value) < self.shape[axis]:
                raise IndexError(f"{plane} pixel {(row, col)} outside the plane {self.plane_shape(plane)}")
            out[axis] = self.shape[axis] - 1 - int(value) if self.ornt[axis, 1] > 0 else int(value)
        if not 0 <= out[self.axis(plane)] < self.shape[self.axis(plane)]:
            raise IndexError(f"{plane} index {index} outside 0..{self.shape[self.axis(plane)] - 1}")
        return out[0], out[1], out[2]

    def plane_axes(self, plane: str) -> tuple[int, int]:
        """The tumorlib axes (0 D, 1 H, 2 W) along a displayed plane's rows and columns."""
        _, row_world, col_world = _spec(plane)
        return self._axis_of_world(row_world), self._axis_of_world(col_world)

    def plane_shape(self, plane: str) -> tuple[int, int]:
        """(rows, columns) of a displayed plane."""
        _, row_world, col_world = _spec(plane)
        return self.shape[self._axis_of_world(row_world)], self.shape[self._axis_of_world(col_world)]

    def aspect(self, plane: str) -> float:
        """Height / width of one displayed pixel (for ``imshow(aspect=...)``)."""
        _, row_world, col_world = _spec(plane)
        return self.spacing[self._axis_of_world(row_world)] / self.spacing[self._axis_of_world(col_world)]


def array_transform(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> DisplayTransform:
    """The display of volumes without geometry: axial ``volume[z]`` as stored (rows h, columns w),
    coronal ``volume[::-1, y]`` and sagittal ``volume[::-1, :, x]`` (the last slice at the top).

    It is the radiological display of (D, H, W) running towards (S, P, L); figures and the viewer use it
    when no affine is given and then write no direction labels (nothing says the guess is right).

    Args:
        shape: (D, H, W).
        spacing: voxel size along (D, H, W) in mm.

    Returns:
        The ``DisplayTransform``.

    Raises:
        ValueError: a shape that is not 3 positive sides or a spacing that is not 3 positive numbers.
    """
    sizes = [float(s) for s in spacing]
    if len(sizes) != 3 or any(not s > 0 for s in sizes):
        raise ValueError(f"spacing {tuple(spacing)} must be three positive numbers (D, H, W)")
    # NIfTI (H, W, D) columns: H towards P, W towards L, D towards S
    affine = np.array([[0.0, -sizes[2], 0.0, 0.0], [-sizes[1], 0.0, 0.0, 0.0], [0.0, 0.0, sizes[0], 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return display_transform(affine, shape)


def direction_labels(ax: Any, transform: DisplayTransform, plane: str, color: str = "white",
                     fontsize: float = 7) -> None:
    """Write the anatomical direction of each edge (``DisplayTransform.labels``) on a matplotlib axes
    showing a displayed plane (e.g. "A" at the top, "R" on the left of an axial plane)."""
    labels = transform.labels(plane)
    spots = {"top": (0.5, 0.97, "center", "top"), "bottom": (0.5, 0.03, "center", "bottom"),
             "left": (0.03, 0.5, "left", "center"), "right": (0.97, 0.5, "right", "center")}
    for edge, (x, y, ha, va) in spots.items():
        ax.text(x, y, labels[edge], transform=ax.transAxes, ha=ha, va=va, color=color, fontsize=fontsize,
                fontweight="bold")


def _spec(plane: str) -> tuple[int, int, int]:
    try:
        return _PLANES[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(DISPLAY_PLANES)}") from None


def display_transform(affine: Any, shape: Sequence[int],
                      max_oblique_deg: float = MAX_OBLIQUE_DEG) -> DisplayTransform:
    """The display transform of volumes of one geometry.

    Args:
        affine: (4, 4) NIfTI affine of the (H, W, D) array (``load_nifti_case``'s; ``kaggle_affine()``
            for Kaggle HDF5 volumes).
        shape: (D, H, W) of the tumorlib volumes to display.
        max_oblique_deg: largest tolerated angle between an array axis and the nearest anatomical axis.

    Returns:
        The ``DisplayTransform``.

    Raises:
        ValueError: a shape that is not 3 positive sides, an affine that is not finite 4x4, singular, or
            oblique beyond ``max_oblique_deg`` (the message gives the affine and the angle).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (D, H, W) with positive sides, got {shape}")
    a = tumorlib_affine(affine)
    linear = a[:3, :3]
    sizes = voxel_sizes(a)
    if sizes.min() <= 0 or abs(np.linalg.det(linear)) <= 1e-6 * float(np.prod(sizes)):
        raise ValueError(f"affine {np.asarray(affine).tolist()} is singular (not invertible): it has no "
                         "display orientation")
    angle = float(np.degrees(obliquity(a)).max())
    if angle > max_oblique_deg:
        raise ValueError(f"affine {np.asarray(affine).tolist()} is oblique by {angle:.1f} degrees (more than "
                         f"{max_oblique_deg} tolerated): reslice the volume to the anatomical axes first")
    ornt = io_orientation(a)
    if np.isnan(ornt).any() or sorted(ornt[:, 0].astype(int)) != [0, 1, 2]:
        raise ValueError(f"affine {np.asarray(affine).tolist()}: its axes do not map to R, A and S one each")
    return DisplayTransform(shape, ornt.astype(int), tuple(float(s) for s in sizes))


def volume_transform(affine: Any | None, shape: Sequence[int], spacing: Sequence[float] | None = None) -> DisplayTransform:
    """The display transform of a figure or viewer: from ``affine`` (radiological), or ``array_transform``.

    Args:
        affine: (4, 4) NIfTI affine of the volume's (H, W, D) array, or None.
        shape: (D, H, W).
        spacing: voxel size along (D, H, W) for the aspect ratio; None: the affine's, or 1 mm.

    Returns:
        The ``DisplayTransform`` (spacing replaced by ``spacing`` when given).

    Raises:
        ValueError: bad spacing, or an affine ``display_transform`` refuses.
    """
    if spacing is not None and (len(spacing) != 3 or any(not float(s) > 0 for s in spacing)):
        raise ValueError(f"spacing {tuple(spacing)} must be three positive numbers (D, H, W)")
    if affine is None:
        return array_transform(tuple(shape), (1.0, 1.0, 1.0) if spacing is None else spacing)
    transform = display_transform(affine, tuple(shape))
    if spacing is None:
        return transform
    return DisplayTransform(transform.shape, transform.ornt, tuple(float(s) for s in spacing))

