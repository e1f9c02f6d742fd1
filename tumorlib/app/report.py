"""``tumorlib report``: a one-page QC report (PNG) and a QC CSV row per predicted case of a run.

For each volume of the run's cache: the sliding-window prediction (labels by the one decoding rule, as
``evaluate`` scores them), the 8 flip members' entropy (``tumorlib.inference.uncertainty``), the QC row
(``tumorlib.evaluation.qc.qc_row``: volumes in mL from the source's voxel size, lesion counts, flags;
the outlier range from the ground-truth volumes of the run's train split) and the page
(``tumorlib.viz.report.plot_case_report``, displayed from the data's geometry: the BraTS2020 affine for
Kaggle HDF5, the case's affine for NIfTI). Everything is computed in the cache's frame, the brain crop
plus margin, so ``flag_touches_border`` means a predicted tumour voxel on a face of that crop. No ET
post-processing exists today: ``et_postprocessing`` is ``"none"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorlib.core.brats import REGION_KEYS
from tumorlib.core.regions import Decoder
from tumorlib.data.splits import run_split
from tumorlib.evaluation.qc import qc_row, region_volumes_ml, write_qc_csv
from tumorlib.inference.run import Run
from tumorlib.inference.uncertainty import predict_with_uncertainty
from tumorlib.data.cache.geometry import cache_affine, cache_spacing
from tumorlib.viz.orientation import display_transform

__all__ = ["case_report", "report_paths"]


def report_paths(run_dir: str | os.PathLike, volume_ids: Sequence[int], out: str | os.PathLike | None = None,
                 csv: str | os.PathLike | None = None) -> tuple[list[Path], Path]:
    """Where ``case_report`` writes: one PNG per volume and one CSV.

    Args:
        run_dir: the run folder.
        volume_ids: the volumes.
        out: the PNG of a single volume; None: ``RUN/reports/volume_<id>.png`` each.
        csv: the CSV; None: ``qc.csv`` beside the (first) PNG.

    Returns:
        ``(pngs, csv)``.

    Raises:
        ValueError: ``out`` with more than one volume, or not a ``.png``.
    """
    ids = [int(v) for v in volume_ids]
    if out is not None:
        if len(ids) != 1:
            raise ValueError(f"--out {out} names one PNG; give one --volume, not {len(ids)}")
        if Path(out).suffix.lower() != ".png":
            raise ValueError(f"--out {out} must end in .png")
        pngs = [Path(out)]
    else:
        pngs = [Path(run_dir) / "reports" / f"volume_{v}.png" for v in ids]
    return pngs, Path(csv) if csv is not None else pngs[0].with_name("qc.csv")


def _train_volumes(run_dir: Path, config: Any, cache: Path, index: dict[str, Any],
                   spacing: Any) -> dict[str, list[float]]:
    from tumorlib.data.cache import load_cached_volume

    ids = run_split(run_dir, config, [int(k) for k in index["volumes"]], "train")
    volumes: dict[str, list[float]] = {r: [] for r in REGION_KEYS}
    for vid in ids:
        mask = np.asarray(load_cached_volume(cache, vid, index=index)[1])
        for r, v in region_volumes_ml(mask, spacing(vid)).items():
            volumes[r].append(v)
    return volumes


def case_report(run_dir: str | os.PathLike, volume_ids: Sequence[int], out: str | os.PathLike | None = None,
                csv: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                amp: bool = True, progress: bool = False) -> tuple[list[dict[str, Any]], list[Path], Path]:
    """Write the QC report page of each volume and the CSV of their QC rows.

    Args:
        run_dir: a trained run folder.
        volume_ids: cached volumes to report.
        out: the PNG (one volume only); None: ``RUN/reports/volume_<id>.png``.
        csv: the QC CSV; None: ``qc.csv`` beside the first PNG.
        data_dir: Kaggle-format data the cache is built from when missing; None: the workspace's.
        cache_dir: the cache; None: the workspace's.
        device: None: CUDA when available, else CPU.
        amp: autocast on CUDA.
        progress: print each file written.

    Returns:
        ``(rows, pngs, csv)``: the ``qc_row`` of each volume and the paths written.

    Raises:
        ValueError: a volume not in the cache, ``out`` with several volumes; see ``load_run``.
        CacheError: a cache read in another channel order than the run's.
    """
    from tumorlib.data.cache import load_cached_volume
    from tumorlib.viz.report import plot_case_report

    from tumorlib.core.outputs import check_output_file

    pngs, csv_path = report_paths(run_dir, volume_ids, out, csv)
    for path, option in [*((p, "--out") for p in pngs), (csv_path, "--csv")]:
        check_output_file(path, option=option, writer="report")  # the one guard, for the default paths too
    run = Run.open(run_dir, device)
    model, config, dev = run.model, run.config, run.device
    cache = run.cache(data_dir, cache_dir, progress=progress)
    index = run.index
    run.split("all", volume_ids)  # every volume asked is in the cache

    def spacing(vid: int) -> tuple[float, ...]:
        return cache_spacing(index, vid)

    train = _train_volumes(Path(run_dir), config, cache, index, spacing)
    rule = run.postprocessing  # what evaluate and predict apply
    rows = []
    for vid, png in zip((int(v) for v in volume_ids), pngs):
        image = load_cached_volume(cache, vid, index=index, check=True)[0]
        prob, maps, _ = predict_with_uncertainty(model, image, config, dev, amp=amp, uncertainty=True)
        done = rule.apply_with_removed(Decoder.of(config).labels(prob), spacing(vid))
        labels = done.labels
        entropy = maps["entropy"]
        row = qc_row(labels, spacing(vid), uncertainty=entropy, train_volumes_ml=train, case=vid,
                     et_postprocessing=rule.describe(), components_removed=done.components)
        transform = display_transform(cache_affine(index, vid), labels.shape)
        png.parent.mkdir(parents=True, exist_ok=True)
        _save(plot_case_report(image, labels, entropy, row, transform, title=f"volume {vid}: {Path(run_dir).name}"),
              png)
        rows.append(row)
        if progress:
            print(f"wrote {png} (flags: {row['flags'] or 'none'})")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_qc_csv(rows, csv_path, writer="report")
    return rows, pngs, csv_path


def _save(fig: Any, path: Path) -> None:
    from tumorlib.core.safety import atomic_path

    with atomic_path(path, writer="report") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
