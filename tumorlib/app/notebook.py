"""What the numbered notebooks share: the parameters cell's setup and the small tables they show.

- ``notebook_setup``: the preset (``$TUMORLIB_PRESET`` unless a name is given), its config and its
  folders (data from ``$TUMORLIB_DATA``, a Kaggle mount or the embedded set), figures folder made.
- ``preset_table``: the training fields of a preset beside the reference design's (04_train).
- ``dice_comparison``: mean Dice per column of several score tables side by side (05_evaluate).
- ``volume_scores``: Dice and voxel counts per class of one predicted volume (06_visualize).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from tumorlib.core.config import Config, Workspace, get_config, workspace

__all__ = ["TRAINING_FIELDS", "NotebookSetup", "dice_comparison", "notebook_setup", "postprocessing_table",
           "preset_table", "recipe_text", "volume_scores"]

#: Config fields that shape training, in the order 04_train lists them.
TRAINING_FIELDS: tuple[str, ...] = (
    "patch_size", "tumor_prob", "features", "batch_size", "accumulation_steps", "epochs", "warmup_epochs",
    "lr", "min_lr_ratio", "weight_decay", "samples_per_epoch", "val_samples", "class_weights",
    "focal_gamma", "dice_weight", "grad_clip", "amp", "compile", "seed",
)


class NotebookSetup(NamedTuple):
    """A notebook's preset name, config and folders (unpack as ``PRESET, config, ws = ...``)."""

    preset: str
    config: Config
    workspace: Workspace


def notebook_setup(preset: str | None = None, **overrides: Any) -> NotebookSetup:
    """The parameters cell of every notebook: the preset's config and workspace, figures folder created.

    Args:
        preset: ``ci``, ``demo``, ``full`` or ``gpu16``; None reads ``$TUMORLIB_PRESET`` (default demo).
        **overrides: config fields to change.

    Returns:
        ``(preset, config, workspace)``.

    Raises:
        ValueError: an unknown preset or field.
    """
    config = get_config(preset, **overrides)
    ws = workspace(config)
    ws.fig_dir.mkdir(parents=True, exist_ok=True)
    return NotebookSetup(config.preset, config, ws)


def preset_table(config: Config, reference: str = "full", fields: Sequence[str] = TRAINING_FIELDS) -> Any:
    """The training fields of ``config`` beside those of the ``reference`` preset, as text.

    Args:
        config: the config shown in the first column (named after its preset).
        reference: the preset of the second column, ``"<name> (reference)"``.
        fields: the config fields, one row each.

    Returns:
        ``pandas.DataFrame`` indexed by field.
    """
    import pandas as pd

    ref = get_config(reference)
    return pd.DataFrame({config.preset: [str(getattr(config, f)) for f in fields],
                         f"{reference} (reference)": [str(getattr(ref, f)) for f in fields]}, index=list(fields))


def recipe_text(config: Config) -> str:
    """The training recipe of ``config`` in a few Markdown bullets, so that a notebook's prose describes the
    preset that runs (read from the config, never written by hand).

    Args:
        config: the run's config.

    Returns:
        Markdown: patches and tumour-centred sampling, loss (Dice weight, BCE or focal BCE, class weights),
        optimiser steps and schedule, precision.
    """
    def fmt(values: Any) -> str:
        return " / ".join(f"{v:g}" for v in values)

    outputs = "WT, TC, ET regions" if config.targets == "regions" else "necrosis, edema, enhancing classes"
    bce = f"focal BCE (γ = {config.focal_gamma:g})" if config.focal_gamma else "plain BCE"
    sampling = ("a class present in the volume first, then one of its voxels" if config.tumor_sampling == "class"
                else "a tumour voxel drawn uniformly")
    effective = config.batch_size * config.accumulation_steps
    return "\n".join([
        f"**The `{config.preset}` preset** (what this notebook runs):",
        f"- patches of {' × '.join(map(str, config.patch_size))} voxels, {config.tumor_prob:.0%} of them centred on "
        f"tumour ({sampling}), the rest placed uniformly;",
        f"- 3 sigmoid outputs ({outputs}); loss {config.dice_weight:g} × soft Dice + "
        f"{1 - config.dice_weight:g} × {bce}, output weights {fmt(config.class_weights)};",
        f"- U-Net features {fmt(config.features)}; batch {config.batch_size} × {config.accumulation_steps} "
        f"accumulation step(s) = effective batch {effective};",
        f"- {config.epochs} epochs, learning rate {config.lr:g} with {config.warmup_epochs} warm-up epoch(s), "
        f"then cosine to {config.min_lr_ratio:g} × the peak; precision `amp_dtype={config.amp_dtype}`.",
    ])


def dice_comparison(tables: Mapping[str, Any], decimals: int = 3) -> Any:
    """Mean of every ``dice_*`` column of the first table, one column per table, rounded.

    Args:
        tables: ``{name: per-volume score table}`` (``tumorlib.evaluation.evaluate`` columns).
        decimals: rounding.

    Returns:
        ``pandas.DataFrame`` indexed by the Dice columns, one column per name.
    """
    import pandas as pd

    first = next(iter(tables.values()))
    cols = [c for c in first.columns if c.startswith("dice_")]
    return pd.DataFrame({name: frame[cols].mean() for name, frame in tables.items()}).round(decimals)


def postprocessing_table(frame: Any, decimals: int = 3) -> Any:
    """Mean scores of ``evaluate``'s labels before and after post-processing, one row each.

    Args:
        frame: the per-volume table from ``tumorlib.evaluation.evaluate.evaluate`` (its ``raw_`` columns
            score the labels before the run's rule).
        decimals: rounding.

    Returns:
        ``pandas.DataFrame`` indexed ``without``, ``with``: legacy Dice, lesion-wise Dice and lesion-wise HD95
        of WT, TC and ET, and the mean components removed per volume.
    """
    import pandas as pd

    from tumorlib.core.brats import REGION_KEYS

    names = [(f"{kind}_{r}", f"{label} {r.upper()}") for kind, label in
             (("dice", "Dice"), ("lesion_dice", "lesion Dice"), ("lesion_hd95", "lesion HD95")) for r in REGION_KEYS]
    rows = {"without": {label: frame[f"raw_{col}"].mean() for col, label in names},
            "with": {label: frame[col].mean() for col, label in names}}
    removed = sum(frame[f"components_removed_{r}"] for r in REGION_KEYS).mean()
    rows["without"]["components removed"], rows["with"]["components removed"] = 0.0, removed
    return pd.DataFrame(rows).T.round(decimals)


def volume_scores(pred: Any, gt: Any, decimals: int = 3) -> Any:
    """Dice and voxel counts per class of one predicted volume.

    Args:
        pred: ``(3, D, H, W)`` binary predicted class channels.
        gt: the ground truth in the same form.
        decimals: rounding.

    Returns:
        ``pandas.DataFrame`` indexed by class name: ``dice``, ``voxels (truth)``, ``voxels (predicted)``.
    """
    import pandas as pd

    from tumorlib.core.brats import CLASS_NAMES
    from tumorlib.evaluation.metrics import dice

    frame = pd.DataFrame({"dice": dice(pred, gt), "voxels (truth)": gt.sum(axis=(1, 2, 3)),
                          "voxels (predicted)": pred.sum(axis=(1, 2, 3))}, index=list(CLASS_NAMES))
    return frame.round(decimals)
