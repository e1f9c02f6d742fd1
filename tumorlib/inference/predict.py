"""Predicting BraTS label files (NIfTI) for raw volumes with a trained run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tumorlib.core.brats import check_order
from tumorlib.core.regions import Decoder, output_keys, targets_of
from tumorlib.inference.run import Run
from tumorlib.inference.uncertainty import predict_with_uncertainty
from tumorlib.core.outputs import check_output_file
from tumorlib.core.safety import atomic_path

__all__ = ["UNCERTAINTY_MAPS", "output_convention", "predict", "probabilities_description", "probabilities_path", "uncertainty_paths"]

#: The uncertainty maps ``predict(uncertainty=True)`` writes, in order (``uncertainty_maps`` keys).
UNCERTAINTY_MAPS = ("entropy", "variance")
#: What ``predict`` appends to a label file's name for the maps it writes beside it (``X_entropy.nii.gz``...).
SIDECAR_SUFFIXES = ("_probabilities", *(f"_{name}" for name in UNCERTAINTY_MAPS))


def probabilities_path(out: str | os.PathLike) -> Path:
    """Where ``predict --save-probabilities`` writes: ``X.nii.gz`` -> ``X_probabilities.nii.gz``."""
    out = Path(out)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else out.suffix
    return out.with_name(out.name[: len(out.name) - len(suffix)] + "_probabilities" + suffix)


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


def _write_uncertainty(paths: dict[str, Path], header: object, maps: dict, entry: dict) -> None:
    """Entropy and tumour-probability variance of the 8 flip members (of each run of an ensemble), uncropped
    to the full grid (0 outside the crop) and written with the label file's header."""
    from tumorlib.data.cache import uncrop
    from tumorlib.io.nifti_write import save_map_nifti

    for name in UNCERTAINTY_MAPS:
        with atomic_path(paths[name], writer="predict") as tmp:
            save_map_nifti(uncrop(maps[name], entry, fill=0.0), tmp, header=header)


def _input_files(data_dir: str | os.PathLike | None, volume_id: int | None,
                 nifti_case: str | os.PathLike | None) -> list[Path]:
    """The files a prediction reads: the case's modality and ``_seg`` files, or the volume's slices."""
    if nifti_case is not None:
        from tumorlib.io.layouts import case_from_path

        return case_from_path(nifti_case).files
    from tumorlib.io.kaggle import find_slices

    return list(find_slices(data_dir).get(int(volume_id), {}).values())


def _warn_if_swapped(case: str | os.PathLike, image: np.ndarray) -> None:
    """Warn when a NIfTI case's contrasts contradict its file names (``check_case_order``)."""
    import warnings

    from tumorlib.core.brats import CANONICAL_ORDER
    from tumorlib.data.modalities import check_case_order

    looks = check_case_order(image)
    if looks is not None:
        seen = ", ".join(f"the {name} file looks like {(got or 't1/t1ce').upper()}"
                         for name, got in zip(CANONICAL_ORDER, looks) if got != name and (got or name[:2] != "t1"))
        warnings.warn(f"{case}: the modality files look swapped by their contrasts ({seen}); check the file "
                      "names, the prediction assumes them", stacklevel=4)


def _check_stored_order(stored_order: Sequence[str] | None, config: object, run_dir: object, source: object) -> None:
    """Refuse input files stored in another channel order than the run was trained with."""
    if stored_order is not None and check_order(stored_order) != config.kaggle_channel_order:
        have, want = ",".join(check_order(stored_order)), ",".join(config.kaggle_channel_order)
        raise ValueError(f"{source}: channel order {have}, the run {run_dir} was trained with "
                         f"kaggle_channel_order {want}; train again with --kaggle_channel_order {have} "
                         "(or convert the files)")


def probabilities_description(config: object) -> str:
    """The ``descrip`` of a probabilities file: which outputs its 3 volumes are, e.g.
    ``tumorlib sigmoid outputs ncr,ed,et (targets=classes)``."""
    return f"tumorlib sigmoid outputs {','.join(output_keys(config))} (targets={targets_of(config)})"


def output_convention(nifti_case: str | os.PathLike | None, labels: str | None = None) -> str:
    """The label convention ``predict`` writes: ``labels`` when given, else the NIfTI case's (its layout's:
    brats2023 for a ``BraTS-GLI-...`` case, msd for an MSD image), else brats2020 (Kaggle input)."""
    from tumorlib.core.label_conventions import label_convention

    if labels is not None:
        return label_convention(labels).name
    if nifti_case is None:
        return "brats2020"
    from tumorlib.io.layouts import case_from_path

    return case_from_path(nifti_case).convention


def _write_outputs(out: Path, labels: np.ndarray, prob: np.ndarray | None, header: object,
                   description: str | None = None, convention: str = "brats2020") -> Path:
    """The label file (BraTS2020 ``labels`` written in ``convention``) and, when ``prob`` is given, the
    probabilities beside it, each atomically."""
    from tumorlib.core.label_conventions import relabel
    from tumorlib.io.nifti_write import save_probabilities_nifti, save_segmentation_nifti

    labels = relabel(labels, "brats2020", convention)
    with atomic_path(out, writer="predict") as tmp:  # a failure or a kill leaves an earlier file at ``out`` whole
        save_segmentation_nifti(labels, tmp, header=header, convention=convention)
    if prob is not None:
        with atomic_path(probabilities_path(out), writer="predict") as tmp:
            save_probabilities_nifti(prob, tmp, header=header, description=description)
    return out


def _read_input(data_dir: str | os.PathLike | None, volume_id: int | None, nifti_case: str | os.PathLike | None,
                order: Sequence[str]) -> tuple[np.ndarray, str]:
    """The (4, D, H, W) image of a NIfTI case (warned when its contrasts contradict its file names) or of a
    Kaggle volume read in ``order``, and its name for messages."""
    if nifti_case is not None:
        from tumorlib.io.nifti import load_nifti_case

        image, _mask, _affine = load_nifti_case(nifti_case)  # stacked in the canonical order
        _warn_if_swapped(nifti_case, image)
        return image, str(nifti_case)
    from tumorlib.data import load_volume

    image, _mask = load_volume(data_dir, int(volume_id), stored_order=order)
    return image, f"volume {volume_id} of {data_dir}"


def _check_request(out: str | os.PathLike, data_dir: object, volume_id: object, nifti_case: object) -> Path:
    """``out`` as a Path, refused unless it is a NIfTI name and exactly one input is given."""
    out = Path(out)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise ValueError(f"output {out} must end in .nii.gz or .nii")
    if (nifti_case is None) == (data_dir is None or volume_id is None):
        raise ValueError("give either nifti_case, or data_dir and volume_id")
    return out


def predict(run_dir: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            volume_id: int | None = None, nifti_case: str | os.PathLike | None = None, tta: bool = False,
            device: str | torch.device | None = None, amp: bool = True,
            progress: bool = False, stored_order: Sequence[str] | None = None, engine: str = "torch",
            save_probabilities: bool = False, uncertainty: bool = False, labels: str | None = None) -> Path:
    """Segment one raw volume and write its labels as NIfTI, in the input's label convention.

    The input is prepared exactly as the cache prepares it (``prepare_volume``: optional in-plane
    zoom to ``cache_hw``, crop to the brain plus ``cache_margin``, per-channel z-score), predicted by
    sliding window, mapped back to the full input size (``uncrop``, probabilities outside the crop
    are 0) and decoded by the run's rule (``tumorlib.core.regions.Decoder``, its ``targets``, at
    ``config.threshold``), then post-processed by the run's rule at the input's voxel size
    (``run_postprocessing``), the labels ``evaluate`` scores. Kaggle HDF5 input is read with the run's ``kaggle_channel_order`` and
    written on the BraTS2020 grid with the BraTS2020 header (``brats2020_header``, as
    ``save_kaggle_segmentation``), so it overlays the official ``*_seg.nii.gz``; NIfTI input keeps its own
    header (``nifti_header``).

    Args:
        run_dir: the run folder, or several (``load_runs``: their mean probability; the first run's
            post-processing).
        out: the output file, ``*.nii.gz`` or ``*.nii``.
        data_dir: a Kaggle-format folder (with ``volume_id``).
        volume_id: the volume to predict from ``data_dir``.
        nifti_case: a NIfTI case (``tumorlib.io.layouts``: a case folder, an MSD image file), not ``data_dir``.
        tta: average over the 8 flips.
        device: None: CUDA when available, else CPU.
        amp: autocast at the run's ``amp_dtype`` (``inference_precision``); False: float32.
        progress: tqdm bar over the windows.
        stored_order: the channel order of the ``data_dir`` files, when the caller knows it (e.g. from
            ``tumorlib inspect-modalities``); None: the run's ``kaggle_channel_order``.
        engine: ``"torch"``, ``"openvino"`` or ``"auto"`` (OpenVINO on the CPU when installed).
        save_probabilities: also write the network's 3 sigmoid outputs (ncr, ed, et; wt, tc, et for
            ``targets`` regions: the ``descrip``) to ``probabilities_path(out)`` (same grid and header).
        uncertainty: also write the flip members' entropy and tumour-probability variance (float32 NIfTI,
            the labels' header and grid, 0 outside the crop) at ``uncertainty_paths(out)``, from the 8 flip
            passes (per run of an ensemble) that, without ``tta``, also give the labels.
        labels: the convention written (brats2020, brats2023, msd); None: the case's (``output_convention``).

    Returns:
        The path written: uint8 labels, array shape (H, W, D) (slice index last, as BraTS files, 3-D also for
        a 4-D MSD input), with the case's header (NIfTI input) or the BraTS2020 header (Kaggle input).

    Raises:
        ValueError: neither or both inputs given, an output name that is not NIfTI, a volume with the wrong
            number of channels, a ``stored_order`` other than the run's, or a run whose config and weights disagree.
        KeyError: ``volume_id`` not in ``data_dir``.
        FileNotFoundError: a missing run, folder or modality file (names it).
        OutputIsInputError: ``out`` is one of the input files (a modality, the case's ``_seg``, a slice).
    """
    from tumorlib.data.cache import prepare_volume, uncrop
    from tumorlib.io.nifti import nifti_header, nifti_spacing
    from tumorlib.io.nifti_write import brats2020_header

    out = _check_request(out, data_dir, volume_id, nifti_case)
    run = Run.open(run_dir, device)
    model, config, dev, run_dir = run.model, run.config, run.device, run.run_dir
    _check_stored_order(stored_order, config, run_dir, data_dir or nifti_case)
    convention = output_convention(nifti_case, labels)  # before any work: a bad name is refused at once
    image, name = _read_input(data_dir, volume_id, nifti_case, config.kaggle_channel_order)
    sidecars = [*([probabilities_path(out)] if save_probabilities else []),
                *(uncertainty_paths(out).values() if uncertainty else [])]
    for path in (out, *sidecars):
        check_output_file(path, _input_files(data_dir, volume_id, nifti_case), writer="predict")  # the one guard
    if image.shape[0] != config.in_channels:
        raise ValueError(f"{name}: {image.shape[0]} channels, the run's model expects {config.in_channels}")
    image_c, _, entry = prepare_volume(image, None, cache_hw=config.cache_hw, margin=config.cache_margin,
                                       dtype=np.float16)  # the cache's dtype: the labels evaluate scores
    prob, maps, _ = predict_with_uncertainty(model, image_c, config, dev, tta=tta, amp=amp,
                                             engine=run.engine(engine, amp), uncertainty=uncertainty,
                                             progress=progress)
    full = uncrop(prob.cpu().numpy(), entry, fill=0.0)
    header = nifti_header(nifti_case) if nifti_case is not None else brats2020_header()
    decoded = run.postprocessing.apply(Decoder.of(config).labels(full),
                                       nifti_spacing(header.get_best_affine()))
    _write_outputs(out, decoded, full if save_probabilities else None, header, probabilities_description(config),
                   convention)
    if uncertainty:
        _write_uncertainty(uncertainty_paths(out), header, maps, entry)
    return out
