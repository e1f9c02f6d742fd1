"""tumorlib: 3D brain-tumour segmentation on BraTS2020 with a 3D U-Net.

Stages mirror the notebooks: ``data`` (01 explore, 02 cache), ``bench`` (03), ``model``/``losses``/``train``
(04), ``inference``/``metrics``/``evaluate`` (05) and ``viz`` (06). Configuration lives in ``config``.
"""

from __future__ import annotations

from tumorlib.core.config import Config, get_config, load_config, workspace

__version__ = "0.1.0"
__all__ = ["Config", "describe_setup", "display_path", "get_config", "install_hint", "load_config", "workspace",
           "__version__"]


def __getattr__(name: str):
    # describe_setup and install_hint live in tumorlib.app.setup_report, imported on first use so that
    # ``import tumorlib`` stays light (no torch).
    if name in ("describe_setup", "display_path", "install_hint"):
        from tumorlib.app import setup_report

        return getattr(setup_report, name)
    raise AttributeError(f"module 'tumorlib' has no attribute {name!r}")
