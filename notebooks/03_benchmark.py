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
# # 03 · How fast is the data path?
#
# **You learn** how to measure a data path fairly (warm and cold, interleaved, in one run) and whether the
# cache keeps a GPU busy. **You need** the cache of 02 (built on first use). The timings are this machine's.
#
# A GPU that trains the reference design's model (the seed's published configuration, the `full` preset) at 35–55 patches per second must never wait for data. This
# notebook measures, live on this machine and in one run:
#
# - **volume loading**: one volume from its HDF5 slices against the same volume from the `.npy`
#   cache, with a warm page cache, and cold where the benchmark can evict single files from the
#   page cache (`posix_fadvise`, Linux); the two are interleaved so both see the same machine load;
# - **cache build** against reading the slices once (the floor of any build): the overhead of
#   normalising, cropping and writing;
# - **patch sampling**: training patches per second from one process, 60 % centred on tumour, as
#   the float16 tensors the training loop receives (it casts them to float32 on its device).
#
# The reference design reported 2.3 s (warm) and 15–25 s (cold) per volume from HDF5 against 0.05 s from `.npy`.
# `tumorlib bench --data DIR --cache CACHE --out FILE.json` runs the same measurement from the
# command line.

# %%
import matplotlib

import tumorlib
from tumorlib import data
from tumorlib.app.notebook import notebook_setup
from tumorlib.benchmarks import loading as bench
from tumorlib.benchmarks import loading_report as report

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
N_VOLUMES = 3  # volumes measured
REPEATS = 2 if PRESET == "ci" else 3  # warm loads per volume and source
N_PATCHES = 20 if PRESET == "ci" else 200  # patches timed

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% [markdown]
# ## Data and cache
# Created with this preset when missing (see 02_cache).

# %% tags=["nbval-ignore-output"]
data_dir = data.ensure_data(config)
cache_dir = data.resolve_cache(config)
print(f"preset {PRESET}: volumes of {tuple(config.synth_shape) if ws.synthetic else 'the data'}, "
      f"patch {config.patch_size}")

# %% [markdown]
# ## Run the benchmark
# Timings vary from run to run and machine to machine, so the cells below are not compared by the
# notebook tests.

# %% tags=["nbval-ignore-output"]
result = bench.benchmark_loading(data_dir, cache_dir, config, n_volumes=N_VOLUMES, repeats=REPEATS,
                                 n_patches=N_PATCHES)
print(report.format_loading_result(result))
bench_file = report.write_benchmark(result, ws.out_dir / "bench_loading.json")

# %% [markdown]
# ## The reference design's loading table, measured here
# Seconds per volume (median); `speedup` is HDF5 over `.npy`.

# %% tags=["nbval-ignore-output"]
report.loading_table(result).round(4)

# %% tags=["nbval-ignore-output"]
ax = report.plot_loading_benchmark(result)
ax.figure.tight_layout()
ax.figure.savefig(ws.fig_dir / "loading_benchmark.png")

# %% [markdown]
# ## Against the targets
# The targets hold for full-size 155×240×240 volumes on a 2-core machine: `load_speedup` ≥ 40,
# `patch_samples_per_s` ≥ 150 and a cache build at most 1.5× the time of reading the slices. The
# small volumes of the `ci` and `demo` presets load in milliseconds either way, where fixed costs
# (opening files) dominate, so their speedup says little; run the `full` preset (or
# `tumorlib bench --preset full` on full-size data) to check the targets.
#
# **Measured on full-size volumes** (2-core CPU, 3 volumes of 155×240×240, `full` preset, medians of
# three runs; `tumorlib synth --volumes 3 --shape 155 240 240` then `tumorlib bench --preset full`):
#
# | | embedded phantoms (brain fills ~90 % of the plane) | phantoms with BraTS brain proportions |
# |---|---|---|
# | HDF5 warm / `.npy` warm | 0.43 s / 0.020 s: **22×** | 0.48 s / 0.009 s: **47–58×** |
# | HDF5 cold / `.npy` cold | 0.97 s / 0.054 s: 19× | 0.97 s / 0.024 s: 39–40× |
# | `.npy` mapped, every page loaded (no copy) | 0.0015 s: 290× | 0.0014 s: 320–380× |
# | patches/s (float16, RAM cache; no RAM cache) | 204; 149 | 140–162; 99–113 |
# | cache build / reading the slices (serial) | 1.40× | 1.37–1.42× |
#
# Loading a cached volume is a copy of 40–60 MB into fresh memory, so its time scales with the cropped
# size: the embedded phantoms' brains are larger than real ones (a real BraTS brain crops to about
# 140×170×140), which is why the copy-based speedup reaches the 40× target only at BraTS proportions.
# Training never copies whole volumes: patches are cut from memory maps or the RAM cache.

# %% tags=["nbval-ignore-output"]
report.loading_targets_met(result)
