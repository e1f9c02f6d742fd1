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
# # 06 · Visualize a segmentation in three planes
#
# **You learn** to read a 3-D segmentation in the axial, coronal and sagittal planes and to find its errors.
# **You need** the run of 04 (trained first here when missing); the viewer needs a live Jupyter kernel.
#
# A Dice score says *how much* of a tumour a model found; only looking says *where* it went wrong:
# a missed satellite lesion, edema leaking along a sulcus, a necrotic core labelled as enhancing.
# Tumours are 3-D objects, and a single axial slice hides most of that, so radiologists scroll through
# the **axial**, **coronal** and **sagittal** planes together, with crosshairs tying them to one point.
#
# This notebook takes one **test** volume (never seen in training), its ground truth, and the
# prediction of the trained run that 05_evaluate scored, and shows them
#
# 1. as a static three-plane figure through the tumour's centre of mass (saved as
#    `3views_segmentation.png`),
# 2. in an interactive `ThreePlaneViewer` (sliders, modality, overlay, opacity, crosshairs),
# 3. in a second viewer that paints only the **errors**: false positives, false negatives and
#    tumour voxels given the wrong class, each in its own colour.
#
# The same class colours are used in every tumorlib figure: necrosis vermillion, edema green,
# enhancing yellow (the Okabe–Ito palette, readable with common colour-vision deficiencies).
#
# Every plane is shown in **radiological display**, worked out from the volume's geometry (the BraTS2020
# header for Kaggle HDF5 data, the case's own header for NIfTI): axial slices with anterior at the top and
# the patient's left on the image's *right* (as if looking up from the feet), coronal and sagittal slices
# with superior at the top. The letters at the panel edges name the directions (R/L, A/P, S/I).

# %%
import matplotlib

import tumorlib
from tumorlib import data, viz
from tumorlib.app.notebook import notebook_setup, volume_scores
from tumorlib.benchmarks.viewer import benchmark_viewer
from tumorlib.core.device import resolve_device
from tumorlib.inference import predictor
from tumorlib.app import workflows

matplotlib.rcParams["figure.dpi"] = 80

# %% tags=["parameters"]
PRESET, config, ws = notebook_setup()  # $TUMORLIB_PRESET: ci, demo or full (default demo); data: $TUMORLIB_DATA
VOLUME = None  # a test volume id to show; None picks the first volume of the test split
MODALITY = "FLAIR"  # the grey image under the overlays: T1, T1ce, T2 or FLAIR
DEVICE = str(resolve_device())  # inference on the GPU when there is one (the one device rule)
ENGINE = "torch" if PRESET == "ci" else "auto"  # auto: the fastest engine on this CPU, measured once (05_evaluate)

# %% tags=["nbval-ignore-output"]
print(tumorlib.describe_setup(config))  # the data, volumes, channel order, device and precision in use

# %% [markdown]
# ## The trained run
# The run folder of this preset is the one 04_train wrote and 05_evaluate scored. When it is missing
# (this notebook opened on its own), it is trained here first with the same preset, which for `ci` and
# `demo` takes seconds to minutes on a CPU.

# %% tags=["nbval-ignore-output"]
run = workflows.ensure_run(config, device=DEVICE, progress=True)  # trained (or continued) first when needed
model, run_config, cache_dir = run.model, run.config, run.cache_dir
print("run:", tumorlib.display_path(run.run_dir))

# %% [markdown]
# ## One test volume, its ground truth and the prediction
# Prediction works as in 05_evaluate: the normalised volume from the cache (cropped to the brain plus a
# margin), a sliding window of the training patch size with Gaussian blending, the sigmoid, and the one
# decoding rule (tumour where the union probability passes the threshold, then the most probable class),
# then the run's post-processing (`RUN/postprocessing.json`, chosen in 05_evaluate): the labels `predict`
# writes. The three channels are necrosis, edema and enhancing.

# %%
test_ids = run.split("test")
volume_id = test_ids[0] if VOLUME is None else VOLUME
print(f"test volumes: {test_ids}; showing volume {volume_id}")

# %% tags=["nbval-ignore-output"]
image, gt, prob, pred = predictor.predict_cached_volume(model, run_config, cache_dir, volume_id, device=DEVICE,
                                                        engine=run.engine(ENGINE), postprocessing=run.postprocessing)
affine = data.cache_affine(data.load_cache_index(cache_dir), volume_id)  # its geometry: which way is left
print(f"image {image.shape} {image.dtype}, ground truth {gt.shape} {gt.dtype}")
volume_scores(pred, gt)

# %% [markdown]
# ## Three planes through the tumour
# Each column is one plane through the tumour's centre of mass; the lines mark where the other two
# planes cut it. Rows: ground truth, prediction, and the errors (magenta: predicted where there is no
# tumour; cyan: tumour missed; white: tumour found but given the wrong class).

# %%
fig = viz.plot_three_views(image, gt=gt, pred=pred, modality=MODALITY, errors=True, affine=affine,
                           title=f"volume {volume_id}: {MODALITY}, ground truth, prediction and errors")
fig.savefig(ws.fig_dir / "3views_segmentation.png", dpi=100)
fig

# %% [markdown]
# ## Interactive viewer: the prediction
# Move the **axial z**, **coronal y** and **sagittal x** sliders to scroll; switch the modality
# (enhancing tumour is brightest on T1ce, edema on FLAIR and T2), the overlay (ground truth,
# prediction, both as outlines — solid for the truth, dotted for the prediction — or the errors) and
# its opacity. The viewer starts at the tumour's centre of mass. Each step re-renders the three panels
# with numpy and replaces the PNG bytes of the image widgets in place — no figure is rebuilt, and no
# JupyterLab extension beyond ipywidgets is needed.

# %% tags=["nbval-ignore-output"]
viewer = viz.ThreePlaneViewer(image, gt=gt, pred=pred, modality=MODALITY, overlay="prediction", affine=affine,
                              title=f"volume {volume_id}: prediction")
viewer

# %% [markdown]
# ## Interactive viewer: where the model is wrong
# The same volume with the **errors** overlay: false positives in magenta, false negatives in cyan,
# wrong class in white. Scrolling through it shows whether errors sit on the tumour's border (a
# boundary a few voxels off, common and cheap) or form whole blobs (a missed or invented lesion).

# %% tags=["nbval-ignore-output"]
error_viewer = viz.ThreePlaneViewer(image, gt=gt, pred=pred, modality=MODALITY, overlay="errors", affine=affine,
                                    opacity=0.8, title=f"volume {volume_id}: errors against the ground truth")
error_viewer

# %% [markdown]
# ## Interactive viewer: where the model is unsure
# The **uncertainty** overlay paints the normalised predictive entropy of the 8 flip members
# (`tumorlib.inference.uncertainty`: each mirroring of the volume predicted and mirrored back) as a heat
# map, grey where the model is sure, red to yellow where the mirrorings disagree or sit near 0.5. The
# readout gives the entropy under the crosshair. Compare it with the errors above: a useful model is
# unsure where it is wrong, mostly on the tumour's border.

# %% tags=["nbval-ignore-output"]
from tumorlib.inference.uncertainty import flip_members, uncertainty_maps, volume_predictor

maps = uncertainty_maps(flip_members(volume_predictor(model, run_config, DEVICE), image),
                        targets=run_config.targets)  # the four-way distribution of classes or regions
uncertainty_viewer = viz.ThreePlaneViewer(image, gt=gt, pred=pred, modality=MODALITY, overlay="uncertainty",
                                          opacity=0.8, uncertainty=maps["entropy"], affine=affine,
                                          title=f"volume {volume_id}: uncertainty (entropy of the flip members)")
uncertainty_viewer

# %% [markdown]
# ## How fast is a slider step?
# The redraw time per slider step on a full-size 155×240×240 volume (compose three panels, encode them
# as PNG, update the widgets), measured in the kernel; the browser's round trip comes on top. The aim is
# under 50 ms, so scrubbing a slider feels continuous.

# %% tags=["nbval-ignore-output"]
timing = benchmark_viewer(shape=(155, 240, 240), steps=10, overlay="both")
