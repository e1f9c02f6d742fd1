"""Progress bars: ``tqdm`` when it is installed, else a silent stand-in with the same calls.

Every module takes its bar from here (``from tumorlib.core.progress import tqdm``), so tumorlib runs where only
torch, numpy, h5py, scipy, pandas and matplotlib are installed (a stock GPU image): bars are then not
drawn and ``tqdm.write`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["tqdm"]


class _PlainBar:
    """The part of ``tqdm``'s interface tumorlib uses, drawing nothing."""

    def __init__(self, iterable: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _PlainBar:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def update(self, n: int = 1) -> None:
        """Advance (nothing drawn)."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Show values beside the bar (nothing drawn)."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Show a text beside the bar (nothing drawn)."""

    def refresh(self) -> None:
        """Redraw (nothing drawn)."""

    def close(self) -> None:
        """Close the bar (nothing drawn)."""

    @staticmethod
    def write(text: str, *args: Any, **kwargs: Any) -> None:
        """Print a line."""
        print(text, flush=True)


try:
    from tqdm.auto import tqdm
except ImportError:  # a stock image without tqdm: no bars
    tqdm = _PlainBar  # type: ignore[assignment,misc]
