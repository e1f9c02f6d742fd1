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
# # 05 · Evaluate on whole volumes
#
# **You learn** how BraTS scores a segmentation (regions, Dice, HD95, then lesion-wise), how a whole volume
# is predicted from a patch-trained network, and, as refinements, post-processing, uncertainty and
# calibration. **You need** the run of 04 (trained first here when missing).
#
# Training reported Dice on **patches**, most of them centred on tumour. A user judges a model on
# **whole volumes** it has never seen, scored the way the BraTS challenge scores them:
#
# - **Regions, not only classes.** BraTS ranks the nested regions *whole tumour* (WT = necrosis ∪ edema
#   ∪ enhancing), *tumour core* (TC = necrosis ∪ enhancing) and *enhancing tumour* (ET). Clinically
#   they answer different questions (extent of disease, what a surgeon resects, what is active).
# - **HD95**, the 95th percentile of the distances between the predicted and the true tumour
#   surfaces (mm): Dice barely notices a small false lesion far from the tumour, HD95 does. The 95th
#   percentile rather than the maximum keeps one stray voxel from deciding the score. Empty masks
#   follow BraTS: both empty → 0, only one empty → 373.13 mm.
#
# A volume (155×240×240 on BraTS) is larger than the training patch, so the network sees it through a
# **sliding window**: windows overlap by half, and the overlapping predictions are blended with a
# Gaussian weight that trusts the centre of a window more than its border (where the network saw
# less context). Then the sigmoid, and **one decoding rule** turns the three outputs into labels, here, in
# `predict`, in the training-time validation and in the viewer (`tumorlib.core.regions.Decoder`): tumour
# where the union probability `1 − (1 − p_ncr)(1 − p_ed)(1 − p_et)` passes the threshold (0.5), then the
# most probable class there (a run trained with `--targets regions` outputs WT, TC, ET instead, decoded as ET,
# TC minus ET, WT minus TC: `Decoder.of(config)` picks the run's rule). Every score below is
# that of the labels `predict` writes. `tumorlib.evaluation.metrics` and
# `tumorlib.inference.sliding_window` compute exactly what MONAI computes (the tests compare them).

# %%
import matplotlib
import nibabel as nib
import numpy as np
import torch

import tumorlib
from tumorlib import data, viz
from tumorlib.app.notebook import dice_comparison, notebook_setup, postprocessing_table
from tumorlib.core.device import resolve_device
from tumorlib.core.regions import Decoder
from tumorlib.evaluation import baseline, evaluate, tuning
from tumorlib.evaluation.calibration import CalibrationMetric
from tumorlib.inference import predict
from tumorlib.app import workflows

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
SPLIT = "test"  # the volumes held out from training and model selection
TTA = False  # average each window over its 8 flips (8x slower, usually a little better)
DEVICE = str(resolve_device())  # inference on the GPU when there is one (the one device rule)
ENGINE = "torch" if PRESET == "ci" else "auto"  # auto: the fastest engine on this CPU, measured once

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% [markdown]
# ## The trained run
# The run of this preset is the one 04_train wrote (`RUN/config.json`, `RUN/splits.json`,
# `RUN/checkpoints/best_model.pth`). Opened on its own, this notebook trains it first with the same
# preset (seconds for `ci`, minutes for `demo` on a CPU).

# %% tags=["nbval-ignore-output"]
data_dir = data.ensure_data(config, progress=False)  # the embedded set is generated on first use
run = workflows.ensure_run(config, device=DEVICE, progress=True)  # trained (or continued) first when needed
model, run_config, cache_dir = run.model, run.config, run.cache_dir
print("run:  ", tumorlib.display_path(run.run_dir))
print("cache:", tumorlib.display_path(cache_dir))

# %%
test_ids = run.split(SPLIT)
print(f"{SPLIT} volumes: {len(test_ids)}  patch {run_config.patch_size}  overlap {run_config.sw_overlap}  "
      f"blend {run_config.sw_blend}  threshold {run_config.threshold}")

# %% [markdown]
# ## No spurious lesions: post-processing chosen on validation
# Since 2023 BraTS ranks by **lesion-wise** Dice and HD95: every connected piece of the prediction counts as
# a lesion, and a small isolated blob far from the tumour is a false-positive lesion scored Dice 0 (HD95
# 374 mm), however few voxels it has. The voxel-wise (legacy) Dice hardly notices such blobs; the lesion-wise
# one does. Post-processing removes them by one rule per region, in their nesting order: whole-tumour (WT)
# components smaller than a size in mm³ become background, small tumour-core (TC) components become edema,
# small enhancing (ET) components become necrosis, each region optionally keeping only its largest
# component. As nnU-Net does, the rule is **chosen on the validation split**, never on the test volumes
# that score it: `tune_postprocessing` (command line `tumorlib tune-postprocessing --run RUN`) predicts each
# validation volume once, tries sizes from 0 to 5000 mm³ with and without "largest only" region by region,
# keeps the candidate with the best mean lesion-wise Dice, and refuses any that lowers a region's legacy
# Dice by more than 0.005. Its choice goes to `RUN/postprocessing.json`; `evaluate`, `predict`, `report` and
# the viewer apply it from there. (The command line also scores the test split with and without the rule;
# here `evaluate` does that next.)

# %% tags=["nbval-ignore-output"]
chosen = tuning.tune_postprocessing(run, cache_dir=cache_dir, score_test=False)  # the run opened above
rule = run.postprocessing  # what every command now applies
print("rule:", rule.describe())

# %% [markdown]
# ## Score every test volume
# `evaluate` is also the command line `tumorlib evaluate --run RUN --split test --out metrics.csv`.
# One row per volume: Dice of the three classes and of WT/TC, HD95 of the three regions, the lesion-wise
# Dice and HD95 of the regions, each of the post-processed labels, the same scores before post-processing
# (`raw_` columns), and the inference time in seconds (sliding window + sigmoid + decoding, without the
# metrics). The summary
# (mean, median, std) is written beside the CSV, and the engine and precision used in a JSON beside it.
# Each volume is predicted **once**, with the 8 flip passes: the unflipped pass gives the labels scored here,
# all 8 give the uncertainty columns used further down (`uncertainty=True`), and `kept` keeps the
# probabilities for the calibration and the figures below instead of predicting the volumes again.
# `ENGINE` chooses what runs the windows (`--engine` on the command line): `torch`, or `openvino` (the
# model converted once and kept beside its checkpoint; bf16 on CPUs that compute it natively), or `auto`
# (the fastest engine and precision on this CPU, timed once on one window of this run's model and kept beside
# the converted model with the CPU it was measured on). The sliding window, TTA and decoding are the same for each.

# %% tags=["nbval-ignore-output"]
kept = evaluate.KeptPredictions(run_config, cache_dir, rule, CalibrationMetric(targets=run_config.targets))
frame = evaluate.evaluate(run, cache_dir=cache_dir, split=SPLIT, tta=TTA, device=DEVICE, progress=True,
                          engine=ENGINE, uncertainty=True, on_volume=kept)
print("columns:", ", ".join(frame.columns))
frame.round(3)

# %% [markdown]
# ## Per class and per region (mean ± std over the test volumes)
# HD95 is given for the regions only, as in BraTS. On the small `ci`/`demo` runs the numbers say that
# the pipeline works end to end, not how good a fully trained model is.

# %% tags=["nbval-ignore-output"]
evaluate.metric_table(frame)

# %% [markdown]
# ## The same on a whole volume
# The first test volume, predicted by the sliding window and post-processed by the run's rule, shown in
# three planes through its tumour: ground truth, prediction and errors (magenta: predicted where there is no tumour; cyan: tumour
# missed; white: tumour with the wrong class). 06_visualize explores it interactively.

# %%
volume_id = test_ids[0]
print(f"volume {volume_id}: windows of {run_config.patch_size}")

# %% tags=["nbval-ignore-output"]
image, gt, prob, pred = kept.volume(volume_id)  # predicted once, by evaluate above
seconds = float(frame.set_index("volume").loc[volume_id, "seconds"])  # its labels' inference time
print(f"full-volume inference on {DEVICE}: {seconds:.2f} s ({torch.get_num_threads()} CPU threads)")

# %% tags=["nbval-ignore-output"]
fig = viz.plot_three_views(image, gt=gt, pred=pred, errors=True,
                           affine=data.cache_affine(data.load_cache_index(cache_dir), volume_id),
                           title=f"volume {volume_id}: FLAIR, ground truth, prediction and errors")
fig.savefig(ws.fig_dir / "05_full_volume.png", dpi=100)
fig

# %% [markdown]
# ## A BraTS label file
# `predict` (command line: `tumorlib predict --run RUN --data DIR --volume ID --out seg.nii.gz`, or
# `--nifti CASE_DIR` for an official BraTS case) reads a *raw* volume, normalises it with the cache's
# own code, predicts it and writes the labels BraTS expects: 0 background, 1 necrosis / non-enhancing
# core, 2 edema, 4 enhancing, at the full input size, with the slice index last (H, W, D) as in the
# BraTS NIfTI files, decoded by the same rule `evaluate` scores (tumour where the union probability
# passes the threshold, then the most probable class; exact ties go to enhancing, then necrosis). From
# Kaggle HDF5 input the file carries the BraTS2020 geometry, so it overlays the official `*_seg.nii.gz`;
# a NIfTI case keeps its own header.

# %%
seg_path = predict.predict(run.run_dir, ws.out_dir / "predictions" / f"volume_{volume_id}_seg.nii.gz",
                            data_dir=data_dir,
                            volume_id=volume_id, device=DEVICE, engine=ENGINE)
seg = nib.load(str(seg_path))
labels = np.asarray(seg.dataobj)
print(f"{seg_path.name}: shape {labels.shape} (H, W, D), dtype {labels.dtype}")
print("labels present are BraTS labels:", set(np.unique(labels).tolist()) <= {0, 1, 2, 4})

# %% [markdown]
# ## The reference design's figure: patches
# One patch per test volume, centred on its tumour and predicted in a single forward pass, as the
# training notebook of the reference design showed it: image, ground truth, prediction (Dice per class of the
# whole patch in its title) and errors.

# %% tags=["nbval-ignore-output"]
patches = evaluate.patch_predictions(model, run_config, cache_dir, test_ids[:4])
cache_index = data.load_cache_index(cache_dir)  # the volumes' geometry: radiological display
fig = viz.plot_predictions(patches["images"], patches["gts"], patches["preds"], titles=patches["titles"],
                           affine=data.cache_affine(cache_index, test_ids[0]),
                           title="Test patches: ground truth vs prediction")
fig.savefig(ws.fig_dir / "05_patch_predictions.png", dpi=100)
fig

# %% [markdown]
# ## Against an intensity-only baseline
# A per-voxel classifier that sees only the four intensities of one voxel (a quadratic discriminant,
# no spatial context), fitted on the training split (`tumorlib baseline`). On real BraTS intensity alone
# is far from enough (vessels, dura and choroid plexus enhance too, FLAIR hyperintensities are not all
# tumour), and the embedded data is built so that it is not enough there either: the U-Net has to beat
# this lookup on every class and region for its Dice to say anything about the method.

# %% tags=["nbval-ignore-output"]
base = baseline.baseline(run_config, cache_dir=cache_dir, progress=False)
dice_comparison({"U-Net": frame, "intensity baseline": base})

# %% tags=["nbval-ignore-output"]
fig = viz.plot_metric_boxes(frame, title=f"{PRESET}: {SPLIT} split, {len(frame)} volume(s)")
fig.savefig(ws.fig_dir / "05_metrics_boxplot.png", dpi=100)
fig

# %% [markdown]
# ## What post-processing changed
# The test volumes' mean scores without and with the rule chosen on validation (the test split played no
# part in choosing it), and the mean number of components it removed per volume.

# %% tags=["nbval-ignore-output"]
postprocessing_table(frame)

# %% [markdown]
# The test volume where the rule removed most, in three planes through the largest piece it changed:
# the prediction before, after, and the changed voxels (cyan: removed from the tumour; white: relabelled).

# %% tags=["nbval-ignore-output"]
removed = frame[["components_removed_wt", "components_removed_tc", "components_removed_et"]].sum(axis=1)
case_id = int(frame["volume"][removed.idxmax()])
image, gt, prob, post = kept.volume(case_id)  # predicted by evaluate above
fig = viz.plot_postprocessing(image, Decoder.of(run_config).channels(prob), post,
                              affine=data.cache_affine(data.load_cache_index(cache_dir), case_id),
                              title=f"volume {case_id}: {int(removed.max())} component(s) removed by the rule")
fig.savefig(ws.fig_dir / "05_postprocessing.png", dpi=100)
fig

# %% [markdown]
# ## How sure the model is: calibration and uncertainty
# `evaluate(..., uncertainty=True)` above (command line `tumorlib evaluate --uncertainty`) added per volume the
# mean predictive entropy inside the predicted tumour and the fraction of uncertain voxels (normalised
# entropy above 0.5), both from the 8 flip members, and the expected calibration error of each region
# (15 equal-width bins, every voxel of the brain crop). The reliability diagram pools the voxels of all
# test volumes: a well-calibrated model's dots lie on the diagonal. A model that is unsure where it is
# wrong shows falling Dice with rising entropy.

# %% tags=["nbval-ignore-output"]
from tumorlib.core.brats import REGION_KEYS
from tumorlib.viz.confidence import dice_uncertainty_correlation, plot_dice_vs_uncertainty, plot_reliability

unsure = frame  # the uncertainty columns came with the scores
calibration = kept.calibration  # updated with each volume's probabilities as evaluate predicted it
pooled = calibration.aggregate("pooled")
print("ECE per region, mean over volumes:", {k: round(v, 4) for k, v in calibration.aggregate().items()})
print("ECE per region, pooled voxels:    ", {k: round(v, 4) for k, v in pooled.items()})
print("Pearson r of Dice and mean entropy in the tumour:",
      {r: round(dice_uncertainty_correlation(unsure, r), 3) for r in REGION_KEYS})
unsure[["volume", "dice_wt", "dice_tc", "dice_et", "mean_entropy_tumour", "uncertain_fraction",
        "ece_wt", "ece_tc", "ece_et"]].round(3)

# %% tags=["nbval-ignore-output"]
fig = plot_reliability({r: calibration.reliability(r) for r in REGION_KEYS},
                       title=f"{PRESET}: reliability over the {len(test_ids)} {SPLIT} volume(s)")
fig.savefig(ws.fig_dir / "05_reliability.png", dpi=100)
fig

# %% tags=["nbval-ignore-output"]
fig = plot_dice_vs_uncertainty(unsure, title=f"{PRESET}: Dice against mean entropy in the predicted tumour")
fig.savefig(ws.fig_dir / "05_dice_vs_uncertainty.png", dpi=100)
fig

# %% [markdown]
# ## Speed
# Full-volume inference time per volume on this machine, from the evaluation above. A full-size
# 155×240×240 BraTS volume with the `full` model (64×160×160 windows, 16 of them at overlap 0.5) takes
# minutes on a laptop CPU; on a GPU it is a fraction of a second (see the README for measured numbers).

# %% tags=["nbval-ignore-output"]
print(f"{PRESET}: {frame['seconds'].mean():.2f} s per volume on average (median "
      f"{frame['seconds'].median():.2f} s) for volumes of about {image.shape[1:]} voxels on {DEVICE}")
