"""The class colours every tumorlib figure uses (the training curves, the viewer, the figures), and the
RGB conversion matplotlib needs."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CLASS_COLORS", "rgb01"]

#: RGB in 0..255 per class, in mask channel order (Okabe-Ito vermillion, bluish green, yellow).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((213, 94, 0), (0, 158, 115), (240, 228, 66))


def rgb01(rgb: Sequence[int]) -> tuple[float, float, float]:
    """An RGB colour in 0..255 as matplotlib's 0..1 floats.

    Args:
        rgb: three integers 0..255.

    Returns:
        ``(r, g, b)`` in 0..1.
    """
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
