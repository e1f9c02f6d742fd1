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
# # 01 · Explore the BraTS2020 data
#
# **You learn** what a BraTS case holds (four MRI modalities, three tumour sub-regions), how small and how
# unevenly visible the tumour is, and how tumorlib checks the data's conventions against the data itself.
# **You need** nothing: the embedded data is generated on first use (a minute); no GPU.
#
# Words used throughout: the **reference design** is the published configuration this project starts from
# (the seed's 3D U-Net 32-64-128-256 with a 512 bottleneck, 64×160×160 patches, weighted Dice + focal
# loss); tumorlib's `full` preset is that design, and `demo` / `ci` are smaller versions that a laptop CPU
# trains in minutes or seconds.
#
# BraTS2020 gives four MRI modalities per patient — **T1**, **T1ce** (T1 after contrast agent),
# **T2** and **FLAIR** — and a segmentation of three tumour sub-regions: **necrosis / non-enhancing
# core**, **edema** and **enhancing tumour**. The Kaggle copy (`awsaf49/brats2020-training-data`)
# stores each of the 369 volumes as 155 axial slices, one HDF5 file per slice
# (`volume_{id}_slice_{s}.h5`, `image` 240×240×4 float64, `mask` 240×240×3 uint8).
#
# This notebook reads that layout through `tumorlib.data` and looks at what makes the task hard:
# tumour is a small fraction of the brain, and each sub-region stands out in a different modality.
#
# **Data.** Without `TUMORLIB_DATA`, tumorlib generates its embedded dataset on first use:
# deterministic brain phantoms written in the exact Kaggle layout, so everything runs offline.
# Point `TUMORLIB_DATA` at a real download (see the README) to explore BraTS itself.

# %%
import matplotlib

import tumorlib
from tumorlib import data, viz
from tumorlib.app.notebook import notebook_setup

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
SAMPLE_VOLUME = None  # a volume id to show; None picks the first one

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% tags=["nbval-ignore-output"]
data_dir = data.ensure_data(config)  # generates the embedded set on first use
print("data folder:", tumorlib.display_path(data_dir), "(embedded synthetic set)" if ws.synthetic else "")

# %% [markdown]
# ## Metadata
# `meta_data.csv` lists every slice with a `target` flag (any tumour on the slice); `name_mapping.csv`
# and `survival_info.csv` add the grade and survival per patient. `load_metadata` joins them.

# %%
meta = data.load_metadata(data_dir)
volume_ids = data.list_volumes(data_dir)
print(f"volumes: {len(volume_ids)}  slices: {len(meta)}  slices with tumour: {int(meta.target.sum())} "
      f"({meta.target.mean():.1%})")
meta.groupby("volume").agg(slices=("slice", "size"), tumour_slices=("target", "sum")).head()

# %% [markdown]
# ## Which stored channel is which modality?
# The Kaggle files do not name their four `image` channels. Public inspections of the real pack found
# them stored as **FLAIR, T1, T1ce, T2** (the alphabetical order of the source NIfTI files), not in
# the order the modalities are usually listed: only channel 3 shows bright CSF (T2), and channel 2 is
# the one that lights up inside the enhancing-tumour mask and at the choroid plexus (T1ce). The reader
# maps the stored order (config field `kaggle_channel_order`, default FLAIR, T1, T1ce, T2) to the
# model's canonical order **T1, T1ce, T2, FLAIR**, and the embedded set is written in the pack's order.
#
# `tumorlib inspect-modalities` checks this on the data itself, with textbook contrasts only: the two
# most correlated channels over healthy brain are T1 and T1ce (same contrast); CSF, the tissue darkest
# on them, is bright on T2 and suppressed on FLAIR; enhancing tumour is far brighter on T1ce than on
# T1. Each volume large enough to judge (`MIN_CASE_VOXELS` brain voxels) votes for an order, and the verdict
# needs `MIN_VERDICT_VOTES` votes that agree: on volumes too small (the `ci` preset's) it says it cannot
# judge rather than guess, since small volumes were measured to vote wrong.

# %%
from tumorlib.core.brats import CANONICAL_ORDER
from tumorlib.data.modalities import format_modality_report, inspect_modalities
from tumorlib.viz.modalities import plot_modality_signatures

report = inspect_modalities(data_dir, volumes=4, configured=config.kaggle_channel_order)
print(format_modality_report(report))

# %%
# the sample volume with its channels as stored (identity order), to show what each channel looks like
stored_image, stored_mask = data.load_volume(data_dir, volume_ids[0], stored_order=CANONICAL_ORDER)
fig = plot_modality_signatures(report, stored_image, stored_mask)
fig.savefig(ws.fig_dir / "modality_signatures.png", bbox_inches="tight")
fig

# %% [markdown]
# ## How much of the brain is tumour?
# Fractions are over **brain** voxels (nonzero in any modality), not the whole 240×240×155 box,
# most of which is background. The seed quotes about 3 % necrosis, 15 % edema and 1 % enhancing on
# real BraTS. Small classes are why training samples patches *centred on tumour* 60 % of the time,
# and why the loss can weight enhancing tumour and necrosis above edema (`class_weights`, shown in 04_train).

# %%
stats = data.volume_stats(data_dir, volume_ids, stored_order=config.kaggle_channel_order)
stats.round(4).head(8)

# %%
stats[list(data.CLASS_NAMES)].describe().loc[["mean", "std", "min", "max"]].round(4)

# %%
fig = viz.plot_class_fractions(stats[["volume", *data.CLASS_NAMES]],
                               reference={"necrosis": 0.03, "edema": 0.15, "enhancing": 0.01})
fig.savefig(ws.fig_dir / "class_fractions.png", bbox_inches="tight")
fig

# %% [markdown]
# ## Intensities per modality
# Raw intensities have no fixed scale across scanners (and across modalities), which is why the cache
# (notebook 02) z-scores every channel over brain voxels. Each tumour class separates from healthy
# tissue in some modality: enhancing tumour on T1ce, edema on FLAIR and T2, necrosis dark on T1.

# %%
sample_id = SAMPLE_VOLUME or volume_ids[0]
image, mask = data.load_volume(data_dir, sample_id)
print(f"volume {sample_id}: image {image.shape} {image.dtype}, mask {mask.shape} {mask.dtype}")
fig = viz.plot_intensity_histograms(image, masks=mask)
fig.savefig(ws.fig_dir / "intensity_histograms.png", bbox_inches="tight")
fig

# %% [markdown]
# ## One slice, four modalities, three masks
# The axial slice with the most tumour, each modality with its own intensity window, the three
# class masks and their overlay on FLAIR, in radiological display from the Kaggle pack's geometry
# (BraTS2020: the slices' rows run to the patient's left, their columns to the back): anterior at the
# top, the patient's left on the image's right.

# %%
from tumorlib.viz.orientation import kaggle_affine

fig = viz.plot_sample_slice(image, mask, title=f"volume {sample_id}", affine=kaggle_affine())
fig.savefig(ws.fig_dir / "sample_slice.png", bbox_inches="tight")
fig
