"""The ``tumorlib`` subcommands that score and apply trained runs: evaluate, predict, tune-postprocessing, report.

``tumorlib.app.commands`` registers them (``register_evaluate``, ``register_predict``,
``register_tune_postprocessing``, ``register_report``) in its ``--help`` order; each has one ``_add_<name>``
and ``_cmd_<name>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tumorlib.app.arguments import add_output_arg, int_at_least
from tumorlib.app.commands_cpu import add_engine_arg
from tumorlib.core.label_conventions import LABEL_CONVENTIONS

__all__ = ["register_evaluate", "register_predict", "register_report", "register_tune_postprocessing"]

_CONVENTIONS = tuple(LABEL_CONVENTIONS)  # brats2020, brats2023, msd


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.run is not None and (args.pred is not None or args.ref is not None):
        raise ValueError("give --run RUN or --pred DIR --ref DIR, not both")
    if args.run is None:
        if args.pred is None or args.ref is None or args.out is None:
            raise ValueError("give --run RUN, or --pred DIR --ref DIR --out CSV")
        from tumorlib.evaluation.label_files import evaluate_label_files

        evaluate_label_files(args.pred, args.ref, args.out, progress=not args.quiet, pred_labels=args.pred_labels,
                             ref_labels=args.ref_labels)
        return 0
    from tumorlib.evaluation.evaluate import evaluate

    evaluate(args.run, args.data, args.cache, split=args.split, tta=args.tta, out=args.out, device=args.device,
             amp=args.amp, progress=not args.quiet, engine=args.engine, uncertainty=args.uncertainty)
    return 0


def _check_evaluate_out(out: str, args: argparse.Namespace) -> None:
    """With ``--pred``/``--ref``: the label files' CSV rules (``check_label_files_out``) come first."""
    if args.pred is not None and args.ref is not None:
        from tumorlib.evaluation.label_files import check_label_files_out

        check_label_files_out(out, args.pred, args.ref)


def _check_predict_out(out: str, args: argparse.Namespace) -> None:
    """The label file's name rule comes before the guard: ``--out x.txt`` says what it must end in."""
    if not out.endswith((".nii.gz", ".nii")):
        raise ValueError(f"output {out} must end in .nii.gz or .nii")


def _cmd_predict(args: argparse.Namespace) -> int:
    from tumorlib.inference.predict import predict

    if args.nifti is not None and (args.data is not None or args.volume is not None):
        raise ValueError("give --nifti CASE_DIR or --data DIR --volume ID, not both")
    if args.nifti is None and (args.data is None or args.volume is None):
        raise ValueError("give --data DIR and --volume ID, or --nifti CASE_DIR")
    import warnings

    with warnings.catch_warnings(record=True) as seen:  # each warning as one line, even under --quiet
        warnings.simplefilter("always")
        path = predict(args.run, args.out, data_dir=args.data, volume_id=args.volume, nifti_case=args.nifti,
                       labels=args.labels,
                       tta=args.tta, device=args.device, amp=args.amp, progress=not args.quiet,
                       stored_order=args.kaggle_channel_order, engine=args.engine,
                       save_probabilities=args.save_probabilities, uncertainty=args.uncertainty)
    for w in seen:
        if issubclass(w.category, UserWarning):
            print(f"tumorlib predict: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # as before: the filters decide
    print(f"wrote {path}")
    if args.save_probabilities:
        from tumorlib.inference.predict import probabilities_path

        print(f"wrote {probabilities_path(path)}")
    if args.uncertainty:
        from tumorlib.inference.predict import uncertainty_paths

        for written in uncertainty_paths(path).values():
            print(f"wrote {written}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tumorlib.app.report import case_report

    case_report(args.run, args.volume, out=args.out, csv=args.csv, data_dir=args.data, cache_dir=args.cache,
                device=args.device, amp=args.amp, progress=not args.quiet)
    return 0


def _cmd_tune_postprocessing(args: argparse.Namespace) -> int:
    from tumorlib.evaluation.tuning import tune_postprocessing

    tune_postprocessing(args.run, args.data, args.cache, device=args.device, amp=args.amp, progress=not args.quiet)
    return 0


def _add_evaluate(sub: Any) -> None:
    """Register ``tumorlib evaluate``."""
    p = sub.add_parser("evaluate", help="score a trained run on whole volumes of a split, or label files "
                                        "against references (Dice, HD95, lesion-wise BraTS 2023)")
    p.add_argument("--run", default=None, action="append",
                   help="run folder (config.json, checkpoints/best_model.pth); repeat it to average several runs' "
                        "probabilities (same channel order, patch size, classes)")
    p.add_argument("--pred", default=None, metavar="DIR",
                   help="instead of --run: a folder of label files X.nii.gz to score")
    p.add_argument("--ref", default=None, metavar="DIR",
                   help="with --pred: the reference folder (X.nii.gz, X_seg.nii.gz or X-seg.nii.gz)")
    for side in ("pred", "ref"):
        p.add_argument(f"--{side}-labels", default=None, choices=_CONVENTIONS,
                       help=f"the --{side} files' label convention (default: from each file's name and values; "
                            "ambiguous is an error)")
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--cache", default=None, help=".npy cache folder, built when missing (default: the workspace's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--tta", action="store_true", help="average over the 8 flips")
    add_output_arg(p, "--out", default=None, check=_check_evaluate_out, help="metrics CSV (default RUN/metrics_<split>.csv; required with "
                                               "--pred); summary beside it")
    p.add_argument("--uncertainty", action="store_true",
                   help="add mean_entropy_tumour, uncertain_fraction (8 flip members) and ece_wt/tc/et (15 bins)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32, whatever the run's amp_dtype")
    add_engine_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub: Any) -> None:
    """Register ``tumorlib predict``."""
    p = sub.add_parser("predict", help="write a label NIfTI (the input's convention) for one volume or NIfTI case")
    p.add_argument("--run", required=True, action="append",
                   help="run folder (config.json, checkpoints/best_model.pth); repeat it to average several runs' "
                        "probabilities (same channel order, patch size, classes)")
    p.add_argument("--data", default=None, help="Kaggle-format data folder (with --volume)")
    p.add_argument("--volume", type=int_at_least(0), default=None, help="volume id in --data")
    p.add_argument("--nifti", default=None, metavar="CASE_DIR",
                   help="a NIfTI case (BraTS 2020/2021/2023+ folder, MSD imagesTr/BRATS_001.nii.gz) instead of "
                        "--data/--volume")
    add_output_arg(p, "--out", required=True, check=_check_predict_out, help="output file, *.nii.gz")
    p.add_argument("--labels", default=None, choices=_CONVENTIONS,
                   help="label convention written (default: the --nifti case's; brats2020 for --data)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32, whatever the run's amp_dtype")
    add_engine_arg(p)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUT_probabilities.nii.gz: the ncr, ed, et probabilities, (H, W, D, 3) 16-bit")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write OUT_entropy.nii.gz and OUT_variance.nii.gz (8 flip members) beside the labels")
    p.add_argument("--kaggle_channel_order", default=None, metavar="ORDER",
                   help="channel order of the --data files (e.g. flair,t1,t1ce,t2); refused when it differs "
                        "from the run's (default: the run's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _add_run_inputs(p: argparse.ArgumentParser) -> None:
    """The options a command that predicts cached volumes of a run shares: data, cache, device, precision, quiet."""
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--cache", default=None, help=".npy cache folder, built when missing (default: the workspace's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32, whatever the run's amp_dtype")
    p.add_argument("--quiet", action="store_true")


def _add_tune_postprocessing(sub: Any) -> None:
    """Register ``tumorlib tune-postprocessing``."""
    p = sub.add_parser("tune-postprocessing",
                       help="choose the per-region small-component rule on the run's validation split "
                            "(mean lesion-wise Dice); predict, evaluate and report apply it")
    p.add_argument("--run", required=True, help="run folder; the choice goes to RUN/postprocessing.json")
    _add_run_inputs(p)
    p.set_defaults(func=_cmd_tune_postprocessing)


def _add_report(sub: Any) -> None:
    """Register ``tumorlib report``."""
    p = sub.add_parser("report", help="one-page QC report (PNG) and QC CSV rows of predicted volumes")
    p.add_argument("--run", required=True, help="run folder (config.json, checkpoints/best_model.pth)")
    p.add_argument("--volume", type=int_at_least(0), nargs="+", required=True, metavar="ID", help="cached volume id(s)")
    add_output_arg(p, "--out", default=None, help="the PNG of one volume (default RUN/reports/volume_<id>.png)")
    add_output_arg(p, "--csv", default=None, help="QC CSV, one row per volume (default qc.csv beside the PNG)")
    _add_run_inputs(p)
    p.set_defaults(func=_cmd_report)


def register_report(sub: Any) -> None:
    """Add ``tumorlib report`` to ``sub``."""
    _add_report(sub)


def register_evaluate(sub: Any) -> None:
    """Add ``tumorlib evaluate`` to ``sub`` (the parser's subparsers action)."""
    _add_evaluate(sub)


def register_predict(sub: Any) -> None:
    """Add ``tumorlib predict`` to ``sub``."""
    _add_predict(sub)


def register_tune_postprocessing(sub: Any) -> None:
    """Add ``tumorlib tune-postprocessing`` to ``sub``."""
    _add_tune_postprocessing(sub)
