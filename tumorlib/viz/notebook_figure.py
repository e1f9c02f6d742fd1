"""A matplotlib ``Figure`` that Jupyter always shows as a PNG image.

tumorlib builds its figures without pyplot (nothing piles up in pyplot's figure list, no window opens).
Jupyter shows a bare ``Figure`` as an image only once matplotlib's inline backend has registered its
PNG formatter, which happens when pyplot is imported in the kernel; a notebook that never imports
pyplot stores the text ``<Figure size 480x320 with 1 Axes>`` instead. ``NotebookFigure._repr_png_`` gives
IPython the PNG itself, whatever the backend (the inline formatter still wins where it is registered).
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.figure import Figure

__all__ = ["NotebookFigure", "new_figure"]


class NotebookFigure(Figure):
    """``matplotlib.figure.Figure`` with a ``_repr_png_`` for Jupyter; everything else unchanged."""

    def __repr__(self) -> str:
        return super().__repr__().replace("<NotebookFigure ", "<Figure ", 1)  # the text nbval compares

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes (tight bounding box, the figure's own dpi)."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> NotebookFigure:
    """A new figure for tumorlib's plots: constrained layout, shown as PNG in notebooks without pyplot.

    Args:
        figsize: width and height in inches.
        **kwargs: further ``Figure`` arguments.

    Returns:
        The empty ``NotebookFigure``.
    """
    return NotebookFigure(figsize=figsize, layout="constrained", **kwargs)
