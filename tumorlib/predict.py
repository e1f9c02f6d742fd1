"""Predicting BraTS label files (NIfTI) for raw volumes with a trained run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tumorlib.inference import labels_from_probabilities
from tumorlib.runs import _device, load_run, predict_volume

__all__ = ["predict"]


def _input_files(data_dir: str | os.PathLike | None, volume_id: int | None,
                 nifti_case: str | os.PathLike | None) -> list[Path]:
    """The files a prediction reads: the case's modality and ``_seg`` files, or the volume's slices."""
    if nifti_case is not None:
        from tumorlib.data.nifti import NIFTI_MODALITIES, find_nifti_file

        found = (find_nifti_file(nifti_case, m) for m in (*NIFTI_MODALITIES, "seg"))
        return [f for f in found if f is not None]
    from tumorlib.data.kaggle import find_slices

    return list(find_slices(data_dir).get(int(volume_id), {}).values())


def predict(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            volume_id: int | None = None, nifti_case: str | os.PathLike | None = None, tta: bool = False,
            device: str | torch.device | None = None, amp: bool = True,
            progress: bool = False) -> Path:
    """Segment one raw volume and write BraTS labels as NIfTI.

    The input is prepared exactly as the cache prepares it (``prepare_volume``: optional in-plane
    zoom to ``cache_hw``, crop to the brain plus ``cache_margin``, per-channel z-score), predicted by
    sliding window, mapped back to the full input size (``uncrop``, probabilities outside the crop
    are 0) and thresholded. Where several classes pass the threshold, enhancing (4) wins over
    necrosis/NET (1), which wins over edema (2).

    Args:
        run_dir: the run folder.
        out: the output file, ``*.nii.gz`` or ``*.nii``.
        data_dir: a Kaggle-format folder (with ``volume_id``).
        volume_id: the volume to predict from ``data_dir``.
        nifti_case: an official BraTS case folder (``*_t1/_t1ce/_t2/_flair.nii.gz``), instead of
            ``data_dir``/``volume_id``.
        tta: average over the 8 flips.
        device: None: CUDA when available, else CPU.
        amp: bf16 autocast on CUDA.
        progress: tqdm bar over the windows.

    Returns:
        The path written: uint8 labels {0, 1, 2, 4}, array shape (H, W, D) (slice index last, as
        BraTS files), with the case's affine for NIfTI input and a 1 mm identity for Kaggle input.

    Raises:
        ValueError: neither or both inputs given, an output name that is not NIfTI, a volume with
            the wrong number of channels, or a run whose config and weights disagree.
        KeyError: ``volume_id`` not in ``data_dir``.
        FileNotFoundError: a missing run, folder or modality file (names it).
        OutputIsInputError: ``out`` is one of the input files (a modality, the case's ``_seg``, a slice).
    """
    from tumorlib.data import load_volume
    from tumorlib.data.cache import prepare_volume, uncrop
    from tumorlib.data.nifti import load_nifti_case, save_segmentation_nifti
    from tumorlib.safety import atomic_path, check_not_input

    out = Path(out)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"output {out} must end in .nii.gz or .nii")
    if (nifti_case is None) == (data_dir is None or volume_id is None):
        raise ValueError("give either nifti_case, or data_dir and volume_id")
    dev = _device(device)
    model, config = load_run(run_dir, dev)
    if nifti_case is not None:
        image, _mask, affine = load_nifti_case(nifti_case)
        name = str(nifti_case)
    else:
        image, _mask = load_volume(data_dir, int(volume_id))
        affine = None
        name = f"volume {volume_id} of {data_dir}"
    check_not_input(out, _input_files(data_dir, volume_id, nifti_case))  # before any work: never replace an input
    if image.shape[0] != config.in_channels:
        raise ValueError(f"{name}: {image.shape[0]} channels, the run's model expects {config.in_channels}")
    image_c, _, entry = prepare_volume(image, None, cache_hw=config.cache_hw, margin=config.cache_margin)
    prob = predict_volume(model, image_c, config, dev, tta=tta, amp=amp, progress=progress)
    full = uncrop(prob.cpu().numpy(), entry, fill=0.0)
    labels = labels_from_probabilities(full, config.threshold)
    with atomic_path(out) as tmp:  # a failure or a kill leaves an earlier file at ``out`` whole
        save_segmentation_nifti(labels, tmp, affine)
    return out
