# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Train the 3D U-Net
#
# **You learn** what each part of the training recipe is for, and how a run is written so that it can be
# resumed and reproduced. **You need** the cache of 02 (built on first use); minutes on a CPU for `demo`.
#
# This notebook trains the reference design's 3D U-Net (the seed's published configuration, tumorlib's `full`
# preset) on tumour-centred patches cut from the `.npy` cache
# (02_cache) and writes the **run folder** that 05_evaluate and 06_visualize read:
#
# | file | content |
# |---|---|
# | `RUN/config.json` | the configuration: a run is reproduced from its folder |
# | `RUN/splits.json` | train / validation / test volume ids |
# | `RUN/history.csv` | one row per epoch: lr, losses, validation Dice per class, seconds, patches/s |
# | `RUN/checkpoints/best_model.pth` | the weights with the best validation score (whole volumes or patches) |
# | `RUN/checkpoints/last.pth` | model, optimizer, scheduler, scaler, random states: resume from here |
# | `RUN/training_curves.png` | loss, mean Dice and per-class Dice |
#
# Everything here is a call into `tumorlib.training.loop`, which the command line runs too:
#
# ```
# tumorlib train --preset demo --out RUN            # one process, GPU when there is one
# tumorlib train --preset demo --out RUN --resume   # continue after an interruption
# torchrun --nproc_per_node 4 -m tumorlib train --preset full --out RUN   # DistributedDataParallel
# ```

# %%
import matplotlib
import pandas as pd
from IPython.display import Markdown

import tumorlib
from tumorlib import viz
from tumorlib.app.notebook import notebook_setup, preset_table, recipe_text
from tumorlib.app import workflows
from tumorlib.data.resolve import make_datasets, resolve_cache
from tumorlib.nn import checkpoint, schedule, unet

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
LOAD_EXISTING_RUN = False  # True: show the run already in ws.run_dir (trained before) instead of training

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% [markdown]
# ## Configuration
# The `full` preset is the reference design's table; `demo` and `ci` shrink the network and the patches so that a
# 2-core CPU trains in minutes or seconds. The training fields of this preset beside the reference design's:

# %%
preset_table(config, reference="full")

# %% [markdown]
# ## Data and splits
# The cache is built on first use (02_cache shows it in detail). Volumes are split by patient,
# deterministically (`split_seed`), into training, validation (model selection, every epoch) and a
# test set that only 05_evaluate touches. Validation uses a fixed set of patches so that epochs compare.

# %% tags=["nbval-ignore-output"]
cache_dir = resolve_cache(config, progress=False)
print("cache:", tumorlib.display_path(cache_dir))

# %%
train_ds, val_ds, splits = make_datasets(config, cache_dir)
pd.DataFrame({"volumes": [len(v) for v in splits.values()],
              "patches an epoch": [len(train_ds), len(val_ds), "whole volumes in 05"]}, index=list(splits))

# %% [markdown]
# ## The network
# `UNet3D` follows the reference design's diagram:
#
# - **Encoder** 4 → 32 → 64 → 128 → 256 channels, each stage a `DoubleConv3D` (two 3×3×3 convolutions,
#   each followed by `InstanceNorm3d` and `LeakyReLU(0.01)`) after a 2×2×2 max-pool; **bottleneck** 512.
# - **Decoder**: four `Up3D` stages, a 2×2×2 transposed convolution, concatenation with the encoder's
#   skip connection at the same resolution (fine detail for the borders), then a `DoubleConv3D`.
# - **Head**: a 1×1×1 convolution to 3 logits, one **sigmoid** per class (necrosis/NET, edema, enhancing).
#
# Why these choices (the reference design's reasons; this preset's own values are printed below the list):
#
# - **InstanceNorm, not BatchNorm**: a 64×160×160 patch fills a GPU, so a batch holds 1–2 patches, too
#   few for batch statistics; instance norm normalises each patch on its own and is the same in
#   training and inference.
# - **Tumour-centred sampling**: tumour is under 1 % of the voxels, so a share `tumor_prob` of the patches
#   is centred on tumour, the rest placed uniformly so the network also sees healthy brain. tumorlib
#   picks the **class first** (among those present), then a voxel of it (`tumor_sampling = "class"`), so
#   necrosis and enhancing tumour are centred as often as edema; `"voxel"` is the reference design's rule.
# - **Random flips** of all three axes (`augment`), the axes the flip test-time augmentation mirrors, so
#   training sees what inference assumes; a per-channel intensity scale/shift is optional (`intensity_aug`).
# - **Dice + BCE**: soft Dice (share `dice_weight`) optimises overlap directly and ignores the imbalance;
#   `class_weights` favour the small necrotic and enhancing regions. The BCE term adds a dense per-voxel
#   gradient; with `focal_gamma` above 0 it is focal BCE, which down-weights the many easy background voxels.
# - **Gradient accumulation**: `batch_size` × `accumulation_steps` = the effective batch on one GPU.
# - **Warmup then cosine**: `warmup_epochs` of linear warmup keep the first updates of a freshly initialised
#   network small; a cosine decay to 1 % of the peak fine-tunes at the end. Stepped per optimizer step.
#
# Sides that are not multiples of 16 (four poolings) are zero-padded inside the network and cropped back.
#
# **Parameters.** The reference design's text says "about 11 million"; its own diagram, rebuilt layer by
# layer below, holds twice that (the bottleneck alone about half). The cells below print this preset's
# recipe, then count the parameters.

# %%
Markdown(recipe_text(config))  # this preset's recipe, read from its config

# %%
reference_config = tumorlib.get_config("full")
reference_net = unet.UNet3D()
unet.layer_table(reference_net, reference_config.patch_size)

# %%
print(f"reference UNet3D {reference_net.features}: {unet.count_parameters(reference_net):,} parameters")
net = unet.model_from_config(config)
print(f"{PRESET} UNet3D {net.features}: {unet.count_parameters(net):,} parameters")
unet.layer_table(net, config.patch_size)

# %% [markdown]
# The learning rate over the run, one point per optimizer step (what `RUN/history.csv` records is the
# value at the last step of each epoch):

# %%
steps = schedule.optimizer_steps_per_epoch(len(train_ds), config.batch_size, config.accumulation_steps)
lrs = schedule.lr_schedule(config, steps)
ax = lrs.plot(x="epoch", y="lr", figsize=(6, 2.5), legend=False, title=f"{PRESET}: {steps} optimizer steps an epoch")
ax.set_ylabel("learning rate")
ax.figure.tight_layout()

# %% [markdown]
# ## Training
# `amp_dtype=auto` picks the precision by one rule on any device: on a GPU mixed precision (bf16 where
# supported, else fp16 with a gradient scaler), on a CPU bf16 where it computes bf16 natively (AMX or
# AVX512-BF16), else float32; the `ci` preset asks for float32 so these outputs do not depend on the machine. Every epoch ends with a validation pass and an atomic
# write of `last.pth`. Fixed tumour-centred validation patches overstate Dice, so with a positive
# `val_volume_every` (demo, full) the best model is chosen on **whole validation volumes** through the
# sliding window (mean of WT/TC/ET Dice of the decoded labels, computed as 05_evaluate computes it; column
# `val_volume_dice`); ci selects on the patches for speed. A run interrupted at any point continues with
# `resume=True` (`--resume`) and, on the CPU, ends with exactly the history of an uninterrupted run.
# `train_or_resume` does that by itself when this cell runs again: an unfinished run of the same config in
# the run folder, or one saved by an earlier Kaggle session and attached as input, is continued rather
# than started over. The config field `time_limit_h` (8.5 h in `gpu16`) ends training after the last
# epoch that fits, so the cells below still run and save before the session ends. Set
# `LOAD_EXISTING_RUN = True` to look at a run trained earlier (for example with the `full` preset on a
# GPU) without training again.

# %% tags=["nbval-ignore-output"]
history_file = ws.run_dir / "history.csv"
if LOAD_EXISTING_RUN and history_file.is_file():
    history = pd.read_csv(history_file)
    print(f"loaded the run in {tumorlib.display_path(ws.run_dir)} ({len(history)} epochs)")
else:
    history = workflows.train_or_resume(config, cache_dir=cache_dir, out_dir=ws.run_dir, progress=True)

# %% tags=["nbval-ignore-output"]
history.round(4)

# %% [markdown]
# ## Curves
# Loss (with the learning rate), mean validation Dice (the best epoch circled: its weights are
# `best_model.pth`) and Dice per class. Enhancing tumour and necrosis, the small classes, come last.

# %%
fig = viz.plot_training_curves(history, ws.fig_dir / "training_curves.png")

# %% tags=["nbval-ignore-output"]
best = checkpoint.load_checkpoint(ws.run_dir / "checkpoints" / "best_model.pth")
metrics = pd.Series(best["metrics"]).rename(f"best epoch {best['epoch']}")
metrics.round(4).to_frame()

# %% [markdown]
# `val_dice_wt` is the **whole tumour** (any of the three classes), the region BraTS reports first.
# 05_evaluate scores the best model on whole test volumes with sliding-window inference.
