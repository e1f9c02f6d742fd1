"""Presets (``ci``, ``demo``, ``full``, ``gpu16``) as one frozen dataclass, and the folders a run uses.

The ``full`` preset is the reference design's table exactly; ``demo`` trains in minutes on a 2-core CPU and
``ci`` runs each notebook in seconds. Every field can be overridden by keyword (``get_config(epochs=3)``)
or on the command line (``--epochs 3``). A config is saved as ``config.json`` beside every output so a
run can be reproduced from its folder.

Environment variables:
    TUMORLIB_PRESET: preset name when none is given (default ``demo``).
    TUMORLIB_DATA: a Kaggle-format BraTS2020 folder; unset, a Kaggle input mount or kagglehub download
        of the pack when there is one (``tumorlib.core.sources``), else the embedded synthetic set,
        generated on first use into ``$TUMORLIB_HOME/data/synthetic_<volumes>x<D>x<H>x<W>_seed<S>``.
    TUMORLIB_HOME: root for generated data and default outputs (default ``~/.cache/tumorlib``;
        ``/kaggle/working/tumorlib`` in a Kaggle notebook).
    TUMORLIB_OUT: output folder of a preset (default ``$TUMORLIB_HOME/outputs/<preset>``); holds
        ``cache/``, ``run/`` and ``figures/``.
    TUMORLIB_CACHE: the ``.npy`` cache folder (default ``$TUMORLIB_OUT/cache``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumorlib.core.brats import check_order
from tumorlib.core.config_checks import check_fields
from tumorlib.core.safety import atomic_write

__all__ = [
    "Config",
    "PRESETS",
    "Workspace",
    "get_config",
    "load_config",
    "parse_field",
    "preset_name",
    "resume_fields",
    "runtime_fields",
    "workspace",
]

PRESET_ENV = "TUMORLIB_PRESET"
DEFAULT_PRESET = "demo"
_RUNTIME = {"runtime": True}  # field metadata: changes speed or later stages, not the training itself


@dataclass(frozen=True)
class Config:
    """Every setting of the pipeline, one field each; see ``PRESETS`` for the three presets.

    Groups: embedded data (``synth_*``), cache (``cache_*``), patches, model, training, GPU speed,
    splits and inference. Shapes are (D, H, W) = (slices, rows, columns). Fields marked runtime
    (``runtime_fields()``) change speed or later stages only, so a run may resume with other values.

    GPU speed fields, each ``auto`` by default and resolved per device by ``speed.resolve_settings``
    (the resolved values are what ``config.json`` records): ``amp_dtype`` (auto: bf16 where the GPU
    supports it, else fp16 with a GradScaler; on the CPU bf16 where it computes bf16 natively, else float32;
    the same value means the same for training and inference, on the CPU as on a GPU), ``compile`` (auto: ``torch.compile``
    on CUDA with triton, falling back to eager when the first step fails; ``off`` or a mode name),
    ``cudnn_benchmark``, ``data_placement`` (auto: the cropped cache on the GPU with patches cut there
    when it fits in half the free memory, else the DataLoader) and ``pin_memory`` (auto: on CUDA).
    """

    preset: str = "full"
    seed: int = 0
    # embedded synthetic dataset (used when TUMORLIB_DATA is unset)
    synth_volumes: int = 20
    synth_shape: tuple[int, int, int] = (155, 240, 240)
    synth_seed: int = 0
    # the modality of each stored image channel of the Kaggle HDF5 files (tumorlib.core.brats)
    kaggle_channel_order: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
    # cache
    cache_hw: int | None = 240  # in-plane size of the cache; None or the native size = no resampling
    cache_margin: int = 4  # voxels kept around the brain's bounding box
    cache_workers: int = field(default=2, metadata=_RUNTIME)
    # patches
    patch_size: tuple[int, int, int] = (64, 160, 160)
    tumor_prob: float = 0.6
    tumor_sampling: str = "class"  # class: a class present first, then one of its voxels | voxel: the reference
    augment: bool = True  # random flips of (D, H, W), the axes flip TTA mirrors
    intensity_aug: bool = False  # per-channel intensity scale x U(0.9, 1.1) and shift + U(-0.1, 0.1)
    ram_cache_bytes: int = field(default=4 * 2**30, metadata=_RUNTIME)
    num_workers: int | None = field(default=None, metadata=_RUNTIME)  # None: chosen per platform (0 on Windows)
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
    val_volume_every: int = 5  # model selection on whole validation volumes every N epochs (and the last); 0: off
    targets: str = "classes"  # the 3 sigmoid outputs: classes ncr, ed, et | regions wt, tc, et (core.regions)
    class_weights: tuple[float, float, float] = (1.5, 1.0, 2.0)  # loss weight of each output, in order
    focal_gamma: float = 2.0
    dice_weight: float = 0.5
    grad_clip: float = 1.0
    amp: bool = True
    # hours one training call may run: it stops after the last epoch that fits (None or 0: no limit)
    time_limit_h: float | None = field(default=None, metadata=_RUNTIME)
    # GPU speed (see the class docstring); "auto" is resolved per device
    amp_dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    compile: str = field(default="auto", metadata=_RUNTIME)  # auto | off | default | reduce-overhead | ...
    cudnn_benchmark: str = field(default="auto", metadata=_RUNTIME)  # auto | on | off
    data_placement: str = field(default="auto", metadata=_RUNTIME)  # auto | device | loader
    pin_memory: str = field(default="auto", metadata=_RUNTIME)  # auto | on | off
    # splits
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 42
    # cross-validation: fold K of an N-fold split of the non-test volumes (folds None or 0: the split above)
    fold: int = 0
    folds: int | None = None
    # inference
    sw_overlap: float = field(default=0.5, metadata=_RUNTIME)
    sw_batch_size: int = field(default=4, metadata=_RUNTIME)
    sw_blend: str = field(default="gaussian", metadata=_RUNTIME)
    threshold: float = field(default=0.5, metadata=_RUNTIME)
    # post-processing: a predicted ET of fewer voxels becomes necrosis (0: off; tune-postprocessing picks it)
    et_min_voxels: int = field(default=0, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        for name in ("synth_shape", "patch_size", "features", "class_weights"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "kaggle_channel_order", check_order(self.kaggle_channel_order))
        if isinstance(self.compile, bool) or str(self.compile).lower() in ("true", "false", "none", "1", "0"):
            on = str(self.compile).lower() in ("true", "1")
            object.__setattr__(self, "compile", "default" if on else "off")  # configs saved before "auto"
        check_fields(self)
        if len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries for "
                             f"num_classes={self.num_classes}")
        if self.folds == 1 or (self.folds and self.fold >= self.folds) or (not self.folds and self.fold):
            raise ValueError(f"config fields fold and folds: need folds >= 2 and 0 <= fold < folds (or folds "
                             f"unset and fold 0), got fold={self.fold}, folds={self.folds}")
        if list(self.features) != sorted(set(self.features)):
            raise ValueError(f"features must increase strictly (one width per U-Net level), got {self.features}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + "
                             f"{self.test_fraction}")

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
        """Write the config as JSON (atomically: a failure leaves any old file as it was).

        Args:
            path: a file path (usually ``RUN/config.json``).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a config from ``to_dict`` output; unknown keys are an error."""
        return cls().replace(**data)

    def table(self) -> str:
        """A two-column text table of every field, for printing at the top of a run."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.to_dict().items())


def runtime_fields() -> frozenset[str]:
    """Config fields marked runtime: they change speed or later stages, not the training (a run may
    resume with other values)."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.metadata.get("runtime"))


def resume_fields() -> frozenset[str]:
    """Config fields a resumed run must share with its checkpoint (every field not marked runtime)."""
    return frozenset(f.name for f in dataclasses.fields(Config)) - runtime_fields()


PRESETS: dict[str, Config] = {
    # The reference design's configuration: 240x240 in-plane, 155 slices.
    "full": Config(preset="full"),
    # 16 GB GPUs (Kaggle T4/P100, Colab T4): the reference model and patch, batch 1 x accumulation 4 (the
    # same effective batch of 4 as full), fp16 autocast where the card has no native bf16, and an epoch
    # budget that fits a 9-hour Kaggle session (README: "Presets"). Resume with the same run folder.
    "gpu16": Config(
        preset="gpu16",
        batch_size=1,
        accumulation_steps=4,
        epochs=120,
        warmup_epochs=5,
        time_limit_h=8.5,  # stop cleanly before Kaggle's 9-hour session ends; the next session resumes
        ram_cache_bytes=2 * 2**30,
        sw_batch_size=2,
    ),
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
        lr=6e-3,  # at 2e-3 the 512 Adam steps leave the logits near 0 (under-trained, necrosis below p = 0.5)
        samples_per_epoch=32,
        val_samples=8,
        class_weights=(2.0, 1.0, 2.0),
        focal_gamma=0.0,  # plain BCE: under gamma 2 the rare classes plateau near p = 0.5 and drop to Dice 0
        dice_weight=0.8,  # BCE at 0.5 pulls ambiguous tumour voxels below p = 0.5 (necrosis, then all at lr 6e-3)
        val_volume_every=2,
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
        val_volume_every=0,
        ram_cache_bytes=2**28,
        num_workers=0,
        sw_batch_size=2,
        amp_dtype="float32",  # the committed notebook outputs must not depend on the machine's bf16 support
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
        preset: ``ci``, ``demo``, ``full`` or ``gpu16``; None reads ``$TUMORLIB_PRESET`` (default ``demo``).
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
        data_dir: Kaggle-format data (``TUMORLIB_DATA``, a Kaggle mount or kagglehub download, or the
            embedded synthetic set: ``tumorlib.core.sources.find_data_source``).
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
    from tumorlib.core.sources import default_home, find_data_source  # here: tumorlib.data imports config

    home = Path(os.environ.get("TUMORLIB_HOME") or default_home()).expanduser()
    d, h, w = config.synth_shape
    tag = f"synthetic_{config.synth_volumes}x{d}x{h}x{w}_seed{config.synth_seed}"
    source = find_data_source(home / "data" / tag)
    data_dir = source.path
    out_dir = Path(os.environ.get("TUMORLIB_OUT") or home / "outputs" / config.preset).expanduser()
    cache_dir = Path(os.environ.get("TUMORLIB_CACHE") or out_dir / "cache").expanduser()
    return Workspace(
        data_dir=data_dir.resolve(),
        out_dir=out_dir.resolve(),
        cache_dir=cache_dir.resolve(),
        run_dir=(out_dir / "run").resolve(),
        fig_dir=(out_dir / "figures").resolve(),
        synthetic=source.synthetic,
    )
