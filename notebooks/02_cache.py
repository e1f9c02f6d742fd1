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
# # 02 · Pre-cache the volumes
#
# **You learn** why training reads a compact `.npy` cache instead of the original slices, and what the cache
# holds (normalised, cropped volumes and an index). **You need** the data of 01 (generated on first use).
#
# The Kaggle copy of BraTS2020 stores a volume as 155 HDF5 files, one per axial slice. Reading a
# volume means opening 155 files and converting 155 float64 arrays: about half a second to a second
# when the files are in the page cache, many seconds when they are not. Training reads volumes
# thousands of times, so tumorlib reads each one **once** and writes it as `.npy` files:
#
# - `v{id}_img.npy`: (4, D', H', W') **float16**, each channel z-scored over brain voxels (nonzero in
#   any modality), background exactly 0: normalisation happens here, once, not at every sample;
# - `v{id}_mask.npy`: (3, D', H', W') uint8, the three tumour channels;
# - both **cropped** to the brain's bounding box plus a small margin (every tumour voxel is kept);
# - `index.json`: per volume the source folder and shape, crop box, per-channel mean and std, class
#   voxel counts and a sample of tumour-voxel coordinates, which the patch sampler uses to centre
#   patches on tumour without reading the mask.
#
# Files are written under temporary names and renamed, so an interrupted build resumes where it
# stopped and ends byte-identical to an uninterrupted one. The same build runs from the command line:
# `tumorlib cache --data DIR --out CACHE --workers 2`.

# %%
import matplotlib
import numpy as np
from IPython.display import display

import tumorlib
from tumorlib import data, viz
from tumorlib.app.notebook import notebook_setup

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
SAMPLE_VOLUME = None  # a volume id to show; None picks the first one

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% [markdown]
# ## Build (or reuse) the cache
# `resolve_cache` generates the embedded data if needed, then builds the cache of this preset's
# workspace when it is missing or incomplete, with a progress bar; a finished cache is reused.
# A cache made from other data or with other settings (`cache_hw`, `cache_margin`) is refused with
# a clear error rather than silently mixed.

# %% tags=["nbval-ignore-output"]
data_dir = data.ensure_data(config)
cache_dir = data.resolve_cache(config)
print("data: ", tumorlib.display_path(data_dir))
print("cache:", tumorlib.display_path(cache_dir))

# %%
index = data.load_cache_index(cache_dir)
volume_ids = data.cached_volume_ids(cache_dir)
print(f"{len(volume_ids)} volumes cached, format version {index['version']}, "
      f"cache_hw={index['cache_hw']}, margin={index['margin']}")

# %% [markdown]
# ## The index
# One row per volume. `kept_fraction` is the share of the source voxels left after cropping to the
# brain; the class columns count tumour voxels, which the crop never drops.

# %%
summary = data.cache_summary(cache_dir, data_dir)
summary.head(8)

# %% [markdown]
# ## Size on disk and what cropping saved
# HDF5 slices hold float64 images; the cache holds float16 images of the cropped box, so it is a
# fraction of the size, and loading it reads only that fraction.

# %%
totals = summary[["h5_mib", "npy_mib"]].sum()
print(f"HDF5 slices: {totals.h5_mib:.1f} MiB   cache: {totals.npy_mib:.1f} MiB   "
      f"({totals.h5_mib / totals.npy_mib:.1f}x smaller)")
print(f"voxels kept by the crop: {summary.kept_fraction.mean():.1%} on average "
      f"(min {summary.kept_fraction.min():.1%}, max {summary.kept_fraction.max():.1%})")

# %% [markdown]
# ## One volume before and after
# Left: the FLAIR slice through the middle of the tumour as stored in the HDF5 slices, with the crop
# box. Right: the same slice from the cache, z-scored (background 0) and cropped. `uncrop` maps
# anything in the cache's frame back to the full volume, which is how predictions are written at
# full size later.

# %%
vid = SAMPLE_VOLUME or volume_ids[0]
entry = index["volumes"][str(vid)]
raw_image, raw_mask = data.load_volume(data_dir, vid)
cached_image, cached_mask = data.load_cached_volume(cache_dir, vid)
fig = viz.plot_cache_crop(raw_image, cached_image, cached_mask, entry, vid)
fig.savefig(ws.fig_dir / "cache_crop.png")
print("round trip exact:", bool((data.uncrop(np.asarray(cached_mask), entry) == raw_mask).all()))
display(fig)
