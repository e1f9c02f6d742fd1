"""Peer recipes: standard MONAI BraTS recipes trained on tumorlib's data, split and time budget.

A comparison for the demo U-Net: only the recipe differs. Each recipe trains on the preset's cache and
training split, on patches from tumorlib's own sampler (``BraTS3DDataset``: the preset's patch size,
batch size, tumour-centred probability and sampling), for a wall-clock budget, then scores the test
split the way ``tumorlib evaluate`` does (``predict_volume``'s sliding window, sigmoid, then
``brats_scores`` on the decoded labels).

Recipes (``RECIPES``), both on the three overlapping regions WT, TC, ET (sigmoid outputs, decoded by
``tumorlib.core.regions.Decoder``), both with MONAI's tutorial augmentation (random flips on the
three axes, ``RandScaleIntensity(0.1)`` and ``RandShiftIntensity(0.1)`` with probability 1):

- ``dynunet``: an nnU-Net-like ``DynUNet`` of the preset U-Net's size: the U-Net's widths plus its
  bottleneck as filters (8, 16, 32, 64, 128 in demo), 3x3x3 kernels, strided convolutions, instance norm,
  LeakyReLU(0.01), deep supervision on two extra heads with nnU-Net's halving weights
  (``deep_supervision_weights``), Dice + BCE on the sigmoid outputs.
- ``segresnet``: MONAI's BraTS tutorial ``SegResNet`` (init_filters 8, blocks_down (1, 2, 2, 4), blocks_up
  (1, 1, 1), dropout 0.2) with its ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)``.

Optimiser: AdamW at lr 1e-3 (weight decay 1e-5), cosine-annealed to 0 over the budget (the fraction of the
wall-clock spent). The tutorial's 1e-4 is for 300 epochs; in a few minutes of CPU steps it leaves the
networks under-trained, while 1e-3 is Adam's usual rate and is stable for both.

MONAI (a ``dev`` extra) is imported inside the functions: ``python -m tumorlib.benchmarks.peers --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorlib.core.brats import channels_to_regions
from tumorlib.core.config import Config, get_config
from tumorlib.core.regions import Decoder
from tumorlib.core.safety import atomic_write

__all__ = [
    "DEEP_SUPERVISION_HEADS",
    "LR",
    "RECIPES",
    "RESULT_KEYS",
    "augmentation",
    "build_recipe",
    "check_result_file",
    "deep_supervision_weights",
    "main",
    "region_targets",
    "run_peer",
    "score_peer",
    "train_peer",
    "write_result",
]

#: The recipes ``--recipe`` accepts.
RECIPES: tuple[str, ...] = ("dynunet", "segresnet")
#: Extra deep-supervision heads of the ``dynunet`` recipe (MONAI's ``deep_supr_num``).
DEEP_SUPERVISION_HEADS = 2
#: AdamW's peak learning rate (cosine-annealed to 0 over the budget).
LR = 1e-3
#: The keys every result row holds (``write_result`` only overwrites a file holding such a row).
RESULT_KEYS: tuple[str, ...] = ("recipe", "seed", "seconds", "steps", "patches", "params",
                                "dice_wt", "dice_tc", "dice_et")
_INSTALL_HINT = "the peer recipes need MONAI: pip install 'monai>=1.4' (or pip install -e '.[dev]')"


def _monai() -> Any:
    try:
        import monai
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return monai


def deep_supervision_weights(heads: int) -> list[float]:
    """nnU-Net's deep-supervision weights: 1, 1/2, 1/4, ... from the full-resolution output, normalised.

    Args:
        heads: outputs in all (the main one plus the supervision heads), >= 1.

    Returns:
        ``heads`` weights summing to 1, each half the one before.

    Raises:
        ValueError: ``heads`` below 1.
    """
    if heads < 1:
        raise ValueError(f"deep supervision needs at least one output, got {heads}")
    raw = [0.5 ** i for i in range(heads)]
    return [w / sum(raw) for w in raw]


def region_targets(mask: torch.Tensor) -> torch.Tensor:
    """Float WT, TC, ET targets from the cache's class channels.

    Args:
        mask: (B, 3, D, H, W) one-hot class channels ncr, ed, et (``tumorlib.core.brats.CLASS_KEYS``).

    Returns:
        (B, 3, D, H, W) float32 regions WT ⊇ TC ⊇ ET (``REGION_KEYS``).
    """
    return channels_to_regions(mask).float()


def build_recipe(recipe: str, config: Config) -> tuple[nn.Module, Callable[[Any, torch.Tensor], torch.Tensor]]:
    """A recipe's network and loss.

    Args:
        recipe: one of ``RECIPES``.
        config: ``in_channels`` and ``features`` (the ``dynunet`` widths).

    Returns:
        ``(model, loss)``; ``loss(output, regions)`` takes the training-mode output (for ``dynunet`` the
        stacked (B, 1 + heads, 3, ...) supervision outputs) and the float region targets.

    Raises:
        ValueError: an unknown recipe.
        ImportError: MONAI is not installed (says how to install it).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    _monai()
    from monai.losses import DiceLoss
    from monai.networks.nets import DynUNet, SegResNet

    if recipe == "segresnet":
        model = SegResNet(spatial_dims=3, init_filters=8, in_channels=config.in_channels, out_channels=3,
                          blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2)
        return model, DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=1e-5, squared_pred=True)
    filters = (*(int(f) for f in config.features), 2 * int(config.features[-1]))  # + UNet3D's bottleneck
    levels = len(filters)
    model = DynUNet(spatial_dims=3, in_channels=config.in_channels, out_channels=3,
                    kernel_size=[3] * levels, strides=[1] + [2] * (levels - 1),
                    upsample_kernel_size=[2] * (levels - 1), filters=filters, norm_name="instance",
                    act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    deep_supervision=True, deep_supr_num=DEEP_SUPERVISION_HEADS)
    dice, bce = DiceLoss(sigmoid=True), nn.BCEWithLogitsLoss()
    weights = deep_supervision_weights(1 + DEEP_SUPERVISION_HEADS)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim == target.ndim:  # one output (no supervision heads)
            return dice(output, target) + bce(output, target)
        return sum(w * (dice(o, target) + bce(o, target)) for w, o in zip(weights, output.unbind(1)))

    return model, loss


def augmentation(seed: int) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """MONAI's BraTS tutorial augmentation on one sample, seeded.

    Args:
        seed: the transforms' random state.

    Returns:
        A function of ``{"image": (4, D, H, W), "label": (3, D, H, W)}``: flips on each spatial axis with
        probability 1/2 (image and label together), then ``RandScaleIntensity(0.1)`` and
        ``RandShiftIntensity(0.1)`` on the image, each with probability 1; plain tensors out.
    """
    _monai()
    from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    keys = ["image", "label"]
    compose = Compose([*(RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)),
                       RandScaleIntensityd("image", factors=0.1, prob=1.0),
                       RandShiftIntensityd("image", offsets=0.1, prob=1.0)])
    compose.set_random_state(seed=seed)

    def apply(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = compose(sample)
        return {k: torch.as_tensor(getattr(v, "as_tensor", lambda: v)()) for k, v in out.items()}

    return apply


def _batches(config: Config, cache_dir: str | os.PathLike, volume_ids: Sequence[int],
             seed: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Augmented float32 batches (image, regions) from tumorlib's sampler, epoch after epoch."""
    from tumorlib.data.dataset import BraTS3DDataset

    ds = BraTS3DDataset(cache_dir, volume_ids, patch_size=config.patch_size, tumor_prob=config.tumor_prob,
                        ram_cache_bytes=config.ram_cache_bytes, augment=False, seed=seed,
                        tumor_sampling=config.tumor_sampling, samples_per_epoch=config.samples_per_epoch)
    augment = augmentation(seed)
    b, per_epoch = config.batch_size, len(ds)
    counter = iter(range(sys.maxsize))
    order: dict[int, np.ndarray] = {}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(b):
            k = next(counter)
            epoch, i = divmod(k, per_epoch)
            if epoch not in order:
                order.clear()
                order[epoch] = np.random.default_rng([seed, epoch, 1]).permutation(per_epoch)
            image, mask = ds[(epoch, int(order[epoch][i]))]
            sample = augment({"image": image.float(), "label": mask.float()})
            images.append(sample["image"])
            labels.append(sample["label"])
        return torch.stack(images), region_targets(torch.stack(labels))

    return next_batch


def train_peer(recipe: str, config: Config, cache_dir: str | os.PathLike, train_ids: Sequence[int],
               seconds: float, seed: int = 0, max_steps: int | None = None,
               log: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a recipe until the wall-clock budget (or ``max_steps``) is spent.

    Args:
        recipe: one of ``RECIPES``.
        config: patch, batch and sampling fields (and the ``dynunet`` widths).
        cache_dir: the cache.
        train_ids: the training volumes.
        seconds: training wall-clock budget (data, augmentation and steps included).
        seed: weights, patches and augmentation.
        max_steps: stop after this many steps too (tests); the cosine then ends at whichever comes first.
        log: progress lines (about every 30 s); None: silent.

    Returns:
        ``(model in eval mode, {"steps", "patches", "train_s", "last_loss"})``.
    """
    torch.manual_seed(seed)
    model, loss_fn = build_recipe(recipe, config)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-5)
    next_batch = _batches(config, cache_dir, train_ids, seed)
    model.train()
    steps, patches, last, loss = 0, 0, time.perf_counter(), float("nan")
    t0 = time.perf_counter()
    while True:
        spent = time.perf_counter() - t0
        done = spent / seconds if seconds > 0 else 1.0
        if max_steps is not None:
            done = max(done, steps / max_steps)
        if done >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = LR * 0.5 * (1.0 + math.cos(math.pi * done))
        image, target = next_batch()
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model(image), target)
        value.backward()
        opt.step()
        steps, patches, loss = steps + 1, patches + int(image.shape[0]), float(value.detach())
        if log is not None and time.perf_counter() - last >= 30.0:
            last = time.perf_counter()
            log(f"{recipe}: step {steps}, {last - t0:.0f}/{seconds:.0f} s, loss {loss:.4f}")
    model.eval()
    return model, {"steps": steps, "patches": patches, "train_s": time.perf_counter() - t0, "last_loss": loss}


def score_peer(model: nn.Module, config: Config, cache_dir: str | os.PathLike,
               volume_ids: Sequence[int]) -> dict[str, float]:
    """Test means of the WT, TC and ET Dice, as ``tumorlib evaluate`` computes them.

    Each cached volume goes through ``predict_volume`` (the run's sliding window, ``sw_overlap``,
    ``sw_blend``; logits blended, then the sigmoid; float32), is decoded per region at
    ``config.threshold`` (``Decoder``) and scored by ``brats_scores`` in the cache frame.

    Args:
        model: the trained recipe (eval mode, CPU).
        config: the sliding-window fields and ``threshold``.
        cache_dir: the cache (not resampled in-plane).
        volume_ids: the test volumes.

    Returns:
        ``{"dice_wt", "dice_tc", "dice_et"}`` means over the volumes.

    Raises:
        ValueError: a volume resampled in the cache (its Dice would not be the source-resolution one).
    """
    from tumorlib.data.cache import load_cache_index, load_cached_volume
    from tumorlib.evaluation.metrics import brats_scores
    from tumorlib.inference.predictor import predict_volume

    index = load_cache_index(cache_dir)
    rows = []
    with torch.no_grad():
        for vid in volume_ids:
            if not all(abs(z - 1.0) < 1e-9 for z in index["volumes"][str(vid)]["zoom"]):
                raise ValueError(f"volume {vid} of {cache_dir} is resampled (cache_hw); score it at 1 mm")
            image, mask = load_cached_volume(cache_dir, vid, index=index, check=True)
            prob = predict_volume(model, image, config, torch.device("cpu"), amp=False)
            pred = Decoder("regions", config.threshold).channels(prob)
            rows.append(brats_scores(pred, np.asarray(mask)))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("dice_wt", "dice_tc", "dice_et")}


def run_peer(recipe: str, seconds: float = 270.0, seed: int = 0, config: Config | None = None,
             cache_dir: str | os.PathLike | None = None, max_steps: int | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a recipe on the preset's training split and score its test split.

    Args:
        recipe: one of ``RECIPES``.
        seconds: the training budget.
        seed: the recipe's seed (the split stays the config's ``split_seed``).
        config: None: ``get_config("demo")``.
        cache_dir: a finished cache; None: the workspace's (the embedded demo data, built when missing).
        max_steps: also stop after this many steps (tests).
        log: progress lines; None: silent.

    Returns:
        The result row: ``RESULT_KEYS`` plus ``unet_params`` (the preset U-Net's), ``preset``,
        ``test_volumes``, ``train_s``, ``score_s`` and ``last_loss``.
    """
    from tumorlib.data.resolve import resolve_cache
    from tumorlib.data.splits import run_splits
    from tumorlib.nn.unet import count_parameters, model_from_config

    config = config if config is not None else get_config("demo")
    cache = resolve_cache(config, cache_dir=cache_dir, progress=False)
    split = run_splits(config, cache)
    model, stats = train_peer(recipe, config, cache, split["train"], seconds, seed, max_steps, log)
    t0 = time.perf_counter()
    dice = score_peer(model, config, cache, split["test"])
    return {"recipe": recipe, "seed": int(seed), "seconds": float(seconds), "steps": stats["steps"],
            "patches": stats["patches"], "params": count_parameters(model), **dice,
            "unet_params": count_parameters(model_from_config(config)), "preset": config.preset,
            "test_volumes": len(split["test"]), "train_s": round(stats["train_s"], 1),
            "score_s": round(time.perf_counter() - t0, 1), "last_loss": stats["last_loss"]}


def write_result(path: str | os.PathLike, row: dict[str, Any]) -> Path:
    """Write a result row as one JSON line, atomically.

    Args:
        path: the file; an existing one is replaced only when it holds such a row.
        row: the row (``RESULT_KEYS``).

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and is not a peer result (names it; left as it was).
    """
    check_result_file(path)
    return atomic_write(path, json.dumps(row) + "\n")


def check_result_file(path: str | os.PathLike) -> None:
    """Refuse an output file that exists and does not hold a peer result row.

    Raises:
        FileExistsError: names the file.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    if not (isinstance(old, dict) and all(k in old for k in RESULT_KEYS)):
        raise FileExistsError(f"{path} exists and is not a peer-benchmark result; not overwriting it")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tumorlib.benchmarks.peers``: train one recipe, print its JSON row.

    Returns:
        The exit status (2: MONAI missing or a refused output file).
    """
    parser = argparse.ArgumentParser(prog="python -m tumorlib.benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--seconds", type=float, default=270.0, help="training wall-clock budget (default 270)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="demo", help="the config whose data, split and patches are used")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the row to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _monai()
        if args.json:
            check_result_file(args.json)  # before the minutes of training, not after
    except (ImportError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    row = run_peer(args.recipe, args.seconds, args.seed, get_config(args.preset),
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(row), flush=True)
    if args.json:
        write_result(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
