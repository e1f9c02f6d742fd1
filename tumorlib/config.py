"""Presets (``ci``, ``demo``, ``full``) as one frozen dataclass, and the folders a run uses.

The ``full`` preset is the seed design's table exactly; ``demo`` trains in minutes on a 2-core CPU and
``ci`` runs each notebook in seconds. Every field can be overridden by keyword (``get_config(epochs=3)``)
or on the command line (``--epochs 3``). A config is saved as ``config.json`` beside every output so a
run can be reproduced from its folder.

Environment variables:
    TUMORLIB_PRESET: preset name when none is given (default ``demo``).
    TUMORLIB_DATA: a Kaggle-format BraTS2020 folder; unset, the embedded synthetic set is generated on
        first use into ``$TUMORLIB_HOME/data/synthetic_<volumes>x<D>x<H>x<W>_seed<S>``.
    TUMORLIB_HOME: root for generated data and default outputs (default ``~/.cache/tumorlib``).
    TUMORLIB_OUT: output folder of a preset (default ``$TUMORLIB_HOME/outputs/<preset>``); holds
        ``cache/``, ``run/`` and ``figures/``.
    TUMORLIB_CACHE: the ``.npy`` cache folder (default ``$TUMORLIB_OUT/cache``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "PRESETS",
    "Workspace",
    "get_config",
    "load_config",
    "parse_field",
    "preset_name",
    "workspace",
]

PRESET_ENV = "TUMORLIB_PRESET"
DEFAULT_PRESET = "demo"


@dataclass(frozen=True)
class Config:
    """Every setting of the pipeline, one field each; see ``PRESETS`` for the three presets.

    Groups: embedded data (``synth_*``), cache (``cache_*``), patches, model, training, splits and
    inference. Shapes are (D, H, W) = (slices, rows, columns).
    """

    preset: str = "full"
    seed: int = 0
    # embedded synthetic dataset (used when TUMORLIB_DATA is unset)
    synth_volumes: int = 20
    synth_shape: tuple[int, int, int] = (155, 240, 240)
    synth_seed: int = 0
    # cache
    cache_hw: int | None = 240  # in-plane size of the cache; None or the native size = no resampling
    cache_margin: int = 4  # voxels kept around the brain's bounding box
    cache_workers: int = 2
    # patches
    patch_size: tuple[int, int, int] = (64, 160, 160)
    tumor_prob: float = 0.6
    augment: bool = False
    ram_cache_bytes: int = 4 * 2**30
    num_workers: int | None = None  # None: chosen per platform (0 on Windows)
    # model
    in_channels: int = 4
    num_classes: int = 3
    features: tuple[int, ...] = (32, 64, 128, 256)
    # training
    epochs: int = 50
    warmup_epochs: int = 5
    batch_size: int = 2
    accumulation_steps: int = 2
    lr: float = 2e-4
    min_lr_ratio: float = 0.01
    weight_decay: float = 1e-5
    samples_per_epoch: int | None = None  # None: one patch per training volume
    val_samples: int | None = None  # None: two patches per validation volume
    class_weights: tuple[float, float, float] = (1.5, 1.0, 2.0)
    focal_gamma: float = 2.0
    dice_weight: float = 0.5
    grad_clip: float = 1.0
    amp: bool = True
    compile: bool = False
    # splits
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 42
    # inference
    sw_overlap: float = 0.5
    sw_batch_size: int = 4
    sw_blend: str = "gaussian"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("synth_shape", "patch_size", "features", "class_weights"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if len(self.synth_shape) != 3 or len(self.patch_size) != 3:
            raise ValueError(f"synth_shape and patch_size need 3 sides (D, H, W): {self.synth_shape}, "
                             f"{self.patch_size}")
        if len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries for "
                             f"num_classes={self.num_classes}")
        if not 0.0 <= self.tumor_prob <= 1.0:
            raise ValueError(f"tumor_prob must lie in [0, 1], got {self.tumor_prob}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"sw_overlap must lie in [0, 1), got {self.sw_overlap}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if self.epochs < 1 or self.batch_size < 1 or self.accumulation_steps < 1:
            raise ValueError("epochs, batch_size and accumulation_steps must be >= 1")

    def replace(self, **overrides: Any) -> Config:
        """A copy with some fields changed.

        Args:
            **overrides: field names and new values.

        Returns:
            The new config.

        Raises:
            ValueError: an unknown field name.
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON.

        Args:
            path: a file path (usually ``RUN/config.json``).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a config from ``to_dict`` output; unknown keys are an error."""
        return cls().replace(**data)

    def table(self) -> str:
        """A two-column text table of every field, for printing at the top of a run."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.to_dict().items())


PRESETS: dict[str, Config] = {
    # The seed's configuration: 240x240 in-plane, 155 slices.
    "full": Config(preset="full"),
    # Minutes on a 2-core CPU; small phantoms, a narrow network, small patches.
    "demo": Config(
        preset="demo",
        synth_volumes=40,
        synth_shape=(48, 96, 96),
        cache_hw=None,
        cache_workers=2,
        patch_size=(32, 64, 64),
        tumor_prob=0.8,
        features=(8, 16, 32, 64),
        epochs=32,
        warmup_epochs=1,
        batch_size=2,
        accumulation_steps=1,
        lr=2e-3,
        samples_per_epoch=32,
        val_samples=8,
        class_weights=(2.0, 1.0, 2.0),
        focal_gamma=0.0,  # plain BCE: under gamma 2 the rare classes plateau near p = 0.5 and drop to Dice 0
        ram_cache_bytes=2**30,
        num_workers=0,
        sw_batch_size=2,
        test_fraction=0.2,  # 8 of 40 volumes: a test mean that does not hinge on one case
    ),
    # Seconds per notebook: tiny volumes, a tiny network, two short epochs.
    "ci": Config(
        preset="ci",
        synth_volumes=8,
        synth_shape=(24, 48, 48),
        cache_hw=None,
        cache_workers=1,
        patch_size=(16, 32, 32),
        features=(4, 8, 16, 32),
        epochs=2,
        warmup_epochs=1,
        batch_size=2,
        accumulation_steps=1,
        lr=1e-3,
        samples_per_epoch=4,
        val_samples=2,
        ram_cache_bytes=2**28,
        num_workers=0,
        sw_batch_size=2,
    ),
}


def preset_name(preset: str | None = None) -> str:
    """The preset to use: the argument, else ``$TUMORLIB_PRESET``, else ``demo``.

    Raises:
        ValueError: a name that is not a preset.
    """
    name = preset or os.environ.get(PRESET_ENV) or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (from {'argument' if preset else PRESET_ENV}); "
                         f"choose one of {', '.join(PRESETS)}")
    return name


def get_config(preset: str | None = None, **overrides: Any) -> Config:
    """A preset's config with optional field overrides.

    Args:
        preset: ``ci``, ``demo`` or ``full``; None reads ``$TUMORLIB_PRESET`` (default ``demo``).
        **overrides: fields to change, e.g. ``epochs=3``.

    Returns:
        The frozen config.
    """
    return PRESETS[preset_name(preset)].replace(**overrides)


def load_config(path: str | os.PathLike) -> Config:
    """Read a ``config.json`` written by ``Config.save``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a config (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a tumorlib config ({err})") from err


def parse_field(name: str, text: str) -> Any:
    """Convert a command-line string to the type of config field ``name``.

    Tuples take comma- or space-separated values (``--patch_size 32,64,64``); ``none`` gives None
    for optional fields; booleans take true/false/1/0/yes/no.

    Raises:
        ValueError: an unknown field or a value that does not parse (names both).
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields:
        raise ValueError(f"unknown config field {name!r}")
    hint = typing.get_type_hints(Config)[name]
    args = typing.get_args(hint)
    if text.strip().lower() == "none" and type(None) in args:
        return None
    try:
        if typing.get_origin(hint) is tuple:
            elem = args[0]
            return tuple(elem(p) for p in text.replace(",", " ").split())
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base is bool:
            low = text.strip().lower()
            if low not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return low in {"true", "1", "yes"}
        return base(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--{name}: cannot read {text!r} as {hint}") from err


@dataclass(frozen=True)
class Workspace:
    """The folders one preset works in.

    Attributes:
        data_dir: Kaggle-format data (``TUMORLIB_DATA`` or the embedded synthetic set).
        out_dir: the preset's output root.
        cache_dir: the ``.npy`` cache.
        run_dir: the training run (checkpoints, history, config).
        fig_dir: saved figures.
        synthetic: True when ``data_dir`` is the embedded set (generated on first use).
    """

    data_dir: Path
    out_dir: Path
    cache_dir: Path
    run_dir: Path
    fig_dir: Path
    synthetic: bool


def workspace(config: Config) -> Workspace:
    """Resolve the folders for ``config`` from the environment (see the module docstring).

    Args:
        config: the run's config (its ``synth_*`` fields name the embedded data folder).

    Returns:
        The workspace; no folder is created.
    """
    home = Path(os.environ.get("TUMORLIB_HOME") or Path.home() / ".cache" / "tumorlib").expanduser()
    data_env = os.environ.get("TUMORLIB_DATA")
    d, h, w = config.synth_shape
    tag = f"synthetic_{config.synth_volumes}x{d}x{h}x{w}_seed{config.synth_seed}"
    data_dir = Path(data_env).expanduser() if data_env else home / "data" / tag
    out_dir = Path(os.environ.get("TUMORLIB_OUT") or home / "outputs" / config.preset).expanduser()
    cache_dir = Path(os.environ.get("TUMORLIB_CACHE") or out_dir / "cache").expanduser()
    return Workspace(
        data_dir=data_dir.resolve(),
        out_dir=out_dir.resolve(),
        cache_dir=cache_dir.resolve(),
        run_dir=(out_dir / "run").resolve(),
        fig_dir=(out_dir / "figures").resolve(),
        synthetic=not data_env,
    )
