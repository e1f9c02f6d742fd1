"""Predicting BraTS label files (NIfTI) for raw volumes with a trained run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tumorlib.core.brats import check_order, decode_probabilities
from tumorlib.core.device import resolve_device
from tumorlib.inference.predictor import load_run, predict_volume
from tumorlib.core.folders import check_not_input
from tumorlib.core.safety import atomic_path

__all__ = ["UNCERTAINTY_MAPS", "predict", "uncertainty_paths"]

#: The uncertainty maps ``predict(uncertainty=True)`` writes, in order (``uncertainty_maps`` keys).
UNCERTAINTY_MAPS = ("entropy", "variance")


def _input_files(data_dir: str | os.PathLike | None, volume_id: int | None,
                 nifti_case: str | os.PathLike | None) -> list[Path]:
    """The files a prediction reads: the case's modality and ``_seg`` files, or the volume's slices."""
    if nifti_case is not None:
        from tumorlib.core.brats import CANONICAL_ORDER
        from tumorlib.io.nifti import find_nifti_file

        found = (find_nifti_file(nifti_case, m) for m in (*CANONICAL_ORDER, "seg"))
        return [f for f in found if f is not None]
    from tumorlib.io.kaggle import find_slices

    return list(find_slices(data_dir).get(int(volume_id), {}).values())


def uncertainty_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where ``predict(uncertainty=True)`` writes its maps, beside the labels ``out``.

    ``case_pred.nii.gz`` -> ``case_pred_entropy.nii.gz`` and ``case_pred_variance.nii.gz``.

    Args:
        out: the label file, ``*.nii.gz`` or ``*.nii``.

    Returns:
        ``{"entropy": path, "variance": path}``.
    """
    out = Path(out)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    stem = out.name[: -len(suffix)]
    return {name: out.with_name(f"{stem}_{name}{suffix}") for name in UNCERTAINTY_MAPS}


def _write_uncertainty(paths: dict[str, Path], header: object, model: torch.nn.Module, config: object,
                       image_c: np.ndarray, entry: dict, dev: torch.device, amp: bool) -> None:
    """Entropy and tumour-probability variance of the 8 flip members, uncropped to the full grid (0 outside
    the crop) and written with the label file's header."""
    from tumorlib.data.cache import uncrop
    from tumorlib.inference.uncertainty import flip_members, uncertainty_maps, volume_predictor
    from tumorlib.io.nifti_write import save_map_nifti

    maps = uncertainty_maps(flip_members(volume_predictor(model, config, dev, amp), image_c))
    for name in UNCERTAINTY_MAPS:
        with atomic_path(paths[name]) as tmp:
            save_map_nifti(uncrop(maps[name], entry, fill=0.0), tmp, header=header)


def _write(out: Path, labels: np.ndarray, header: object, kaggle: bool) -> None:
    """The label file, atomically: a failure or a kill leaves an earlier file at ``out`` whole."""
    from tumorlib.io.nifti_write import save_kaggle_segmentation, save_segmentation_nifti

    with atomic_path(out) as tmp:
        if kaggle:
            save_kaggle_segmentation(labels, tmp)
        else:
            save_segmentation_nifti(labels, tmp, header=header)


def predict(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            volume_id: int | None = None, nifti_case: str | os.PathLike | None = None, tta: bool = False,
            device: str | torch.device | None = None, amp: bool = True,
            progress: bool = False, stored_order: Sequence[str] | None = None, uncertainty: bool = False) -> Path:
    """Segment one raw volume and write BraTS labels as NIfTI.

    The input is prepared exactly as the cache prepares it (``prepare_volume``: optional in-plane
    zoom to ``cache_hw``, crop to the brain plus ``cache_margin``, per-channel z-score), predicted by
    sliding window, mapped back to the full input size (``uncrop``, probabilities outside the crop
    are 0) and decoded by the one rule (``tumorlib.core.brats.decode_probabilities``: tumour where the
    union probability passes ``config.threshold``, then the most probable class), the labels
    ``evaluate`` scores. Kaggle HDF5 input is read with the run's ``kaggle_channel_order`` and written
    on the BraTS2020 grid with the BraTS2020 header (``save_kaggle_segmentation``), so it overlays
    the official ``*_seg.nii.gz``; NIfTI input keeps its own header (``nifti_header``).

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
        stored_order: the channel order of the ``data_dir`` files, when the caller knows it (e.g. from
            ``tumorlib inspect-modalities``); None: the run's ``kaggle_channel_order``.
        uncertainty: also write the flip members' entropy and tumour-probability variance (float32 NIfTI,
            the labels' header and grid, 0 outside the crop) at ``uncertainty_paths(out)``; 8 more passes.

    Returns:
        The path written: uint8 labels {0, 1, 2, 4}, array shape (H, W, D) (slice index last, as
        BraTS files), with the case's header for NIfTI input and the BraTS2020 header
        (``BRATS2020_AFFINE`` as qform and sform) for Kaggle input.

    Raises:
        ValueError: neither or both inputs given, an output name that is not NIfTI, a volume with
            the wrong number of channels, a ``stored_order`` other than the run's, or a run whose
            config and weights disagree.
        KeyError: ``volume_id`` not in ``data_dir``.
        FileNotFoundError: a missing run, folder or modality file (names it).
        OutputIsInputError: ``out`` is one of the input files (a modality, the case's ``_seg``, a slice).
    """
    from tumorlib.data import load_volume
    from tumorlib.data.cache import prepare_volume, uncrop
    from tumorlib.io.nifti import load_nifti_case, nifti_header
    from tumorlib.io.nifti_write import brats2020_header
    out = Path(out)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"output {out} must end in .nii.gz or .nii")
    if (nifti_case is None) == (data_dir is None or volume_id is None):
        raise ValueError("give either nifti_case, or data_dir and volume_id")
    dev = resolve_device(device)
    model, config = load_run(run_dir, dev)
    if stored_order is not None and check_order(stored_order) != config.kaggle_channel_order:
        have, want = ",".join(check_order(stored_order)), ",".join(config.kaggle_channel_order)
        raise ValueError(f"{data_dir or nifti_case}: channel order {have}, the run {run_dir} was trained with "
                         f"kaggle_channel_order {want}; train again with --kaggle_channel_order {have} "
                         "(or convert the files)")
    if nifti_case is not None:
        image, name = load_nifti_case(nifti_case)[0], str(nifti_case)  # stacked in the canonical order
    else:
        image = load_volume(data_dir, int(volume_id), stored_order=config.kaggle_channel_order)[0]
        name = f"volume {volume_id} of {data_dir}"
    maps_out = uncertainty_paths(out) if uncertainty else {}
    for target in (out, *maps_out.values()):  # before any work: never replace an input
        check_not_input(target, _input_files(data_dir, volume_id, nifti_case))
    if image.shape[0] != config.in_channels:
        raise ValueError(f"{name}: {image.shape[0]} channels, the run's model expects {config.in_channels}")
    image_c, _, entry = prepare_volume(image, None, cache_hw=config.cache_hw, margin=config.cache_margin,
                                       dtype=np.float16)  # the cache's dtype: the labels evaluate scores
    prob = predict_volume(model, image_c, config, dev, tta=tta, amp=amp, progress=progress)
    labels = decode_probabilities(uncrop(prob.cpu().numpy(), entry, fill=0.0), config.threshold)
    header = nifti_header(nifti_case) if nifti_case is not None else brats2020_header()
    _write(out, labels, header, kaggle=nifti_case is None)
    if uncertainty:
        _write_uncertainty(maps_out, header, model, config, image_c, entry, dev, amp)
    return out
