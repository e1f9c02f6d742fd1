"""tumorlib: 3D brain-tumour segmentation on BraTS2020 with a 3D U-Net.

Floors, bottom first, each importing only from those below: ``core`` (conventions, config, safety, device),
``io``, ``data`` (01 explore, 02 cache), ``nn``, ``inference``, ``training`` (04), ``evaluation`` (05),
``viz`` (06), ``benchmarks`` (03) and ``app`` (the command line, the notebooks' helpers).
"""

from __future__ import annotations

from tumorlib.core.config import Config, get_config, load_config, workspace

__version__ = "0.1.0"
__all__ = ["Config", "describe_setup", "display_path", "get_config", "install_hint", "load_config", "workspace",
           "__version__"]


def __getattr__(name: str):
    # describe_setup and install_hint live in tumorlib.app.setup_report, imported on first use so that
    # ``import tumorlib`` stays light (no torch).
    if name in ("describe_setup", "install_hint"):
        from tumorlib.app import setup_report

        return getattr(setup_report, name)
    if name == "display_path":
        from tumorlib.core.sources import display_path

        return display_path
    raise AttributeError(f"module 'tumorlib' has no attribute {name!r}")
