"""The ``tumorlib`` subcommands: each one's options and its handler, a thin wrapper over a library function.

The commands that take a config accept ``--preset`` and any config field as ``--<field> value`` (tuples
as ``--patch_size 32,64,64``). ``tumorlib.app.cli`` builds the parser from ``register_commands`` and
runs the chosen handler.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tumorlib.app.commands_cpu import add_cpu_bench_args, register_cpu_commands, run_cpu_bench
from tumorlib.app.arguments import add_config_args, add_output_arg, config_from_args, int_at_least
from tumorlib.app.scoring_commands import (register_evaluate, register_predict, register_report,
                                           register_tune_postprocessing)
from tumorlib.core.config import get_config

__all__ = ["register_commands"]


def _cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tumorlib.core.folders import check_free_space, replace_folder
    from tumorlib.core.outputs import record_folder
    from tumorlib.data import make_synthetic

    # --out was guarded before this handler (tumorlib.app.cli): never a file, a run or a cache, and with
    # --overwrite only a folder synth recorded writing, unchanged since
    d, h, w = args.shape
    per_slice = -(-(h * w * 35 + 2112) // 4096) * 4096  # float64 x4 + uint8 x3 + HDF5 header, in 4 KiB blocks
    check_free_space(Path(args.out).absolute().parent, max(args.volumes, 0) * d * per_slice + 65536,
                     f"{args.volumes} volumes of {tuple(args.shape)}")
    made = {}

    def build(tmp: Path) -> None:  # generated beside --out, swapped in whole only when complete
        made["rel"] = make_synthetic(tmp, args.volumes, tuple(args.shape), seed=args.seed,
                                     progress=not args.quiet).relative_to(tmp)
        record_folder(tmp, "synth")  # what --overwrite may replace later: exactly these files

    out = replace_folder(args.out, build, overwrite=args.overwrite, what="synth --out")
    folder = out / made["rel"]
    print(f"wrote {args.volumes} volumes of {tuple(args.shape)} to {folder}")
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tumorlib.app.notebook_runner import run_notebooks
    from tumorlib.core.config import preset_name, workspace

    out = Path(args.out).resolve()
    os.environ.setdefault("TUMORLIB_OUT", str(out))
    cfg = get_config()
    print(f"running notebooks with preset {preset_name()} -> {out}", flush=True)
    run_notebooks(args.dir, out, timeout=args.timeout, only=args.only)
    ws = workspace(cfg)
    print(f"executed notebooks: {out}")
    print(f"figures:            {ws.fig_dir}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tumorlib.core.config import workspace
    from tumorlib.data import build_cache, ensure_data
    from tumorlib.data.cache import load_cache_index

    cfg = config_from_args(args)
    workers = args.workers if args.workers is not None else cfg.cache_workers
    out = Path(args.out) if args.out else workspace(cfg).cache_dir
    from tumorlib.core.outputs import check_output_folder

    check_output_folder(out, "cache")  # never into the data, a slice folder or a run
    if args.layout and not args.nifti:
        raise ValueError(f"--layout {args.layout} describes a --nifti ROOT folder; give --nifti too")
    from tumorlib.data.cache.nifti import build_nifti_cache
    from tumorlib.io.layouts import data_layout

    data, layout = args.nifti, args.layout
    if data is None:  # --data, or the workspace's (TUMORLIB_DATA): Kaggle slices or NIfTI cases, as detected
        data = args.data or ensure_data(cfg, progress=not args.quiet)
        kind = data_layout(data)
        layout = None if kind == "kaggle" else kind
    if layout is not None or args.nifti:
        cache = build_nifti_cache(data, out, workers=workers, cache_hw=cfg.cache_hw,
                                  margin=cfg.cache_margin, progress=not args.quiet, layout=layout)
    else:
        cache = build_cache(data, out, workers=workers, cache_hw=cfg.cache_hw, margin=cfg.cache_margin,
                            progress=not args.quiet, stored_order=cfg.kaggle_channel_order)
    index = load_cache_index(cache)
    size = sum(p.stat().st_size for p in Path(cache).glob("v*.npy"))
    print(f"cached {len(index['volumes'])} volumes ({size / 2**20:.1f} MiB) in {cache}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tumorlib.benchmarks.loading import benchmark_loading
    from tumorlib.benchmarks.loading_report import format_loading_result, write_benchmark
    from tumorlib.core.config import workspace
    from tumorlib.data import ensure_data

    if args.cpu:
        result = run_cpu_bench(args)
        if args.out:
            print(f"wrote {write_benchmark(result, args.out)}")
        return 0
    cfg = config_from_args(args)
    data = args.data or ensure_data(cfg, progress=not args.quiet)
    cache = Path(args.cache) if args.cache else workspace(cfg).cache_dir
    result = benchmark_loading(data, cache, cfg, n_volumes=args.volumes, repeats=args.repeats,
                               n_patches=args.patches, cold=args.cold, build=args.build,
                               progress=not args.quiet)
    print(format_loading_result(result))
    if args.train:
        from tumorlib.benchmarks.training import bench_train, format_train_result

        result.update(bench_train(cfg, cache, device=args.device, steps=args.train_steps, progress=not args.quiet))
        print(format_train_result(result))
        if args.throughput:
            from tumorlib.benchmarks.gpu import benchmark_throughput, format_throughput

            result["throughput"] = benchmark_throughput(
                cfg, cache, device=args.device, steps=args.train_steps, warmup=args.train_warmup,
                loss_steps=args.loss_steps, compile_mode=args.compile_mode, progress=not args.quiet)
            print(format_throughput(result["throughput"], result))
    if args.out:
        print(f"wrote {write_benchmark(result, args.out)}")
    elif args.quiet:
        print(json.dumps(result))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from tumorlib.app.workflows import train

    cfg = config_from_args(args)
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(cfg.table(), flush=True)
    try:
        history = train(cfg, args.data, args.cache, args.out, resume=args.resume, progress=not args.quiet,
                        device=args.device, stop_after_epoch=args.stop_after_epoch, overwrite=args.overwrite)
    except FloatingPointError as err:
        print(f"tumorlib train: error: {err}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0 and len(history):
        best = history.loc[history.val_dice_mean.idxmax()]
        print(f"{len(history)} epochs; best validation mean Dice {best.val_dice_mean:.4f} at epoch "
              f"{int(best.epoch)}; run folder {args.out or 'the workspace run_dir'}")
    return 0


def _cmd_inspect_modalities(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tumorlib.data.embedded import ensure_data
    from tumorlib.data.modalities import format_modality_report, inspect_modalities

    config = config_from_args(args)
    if args.json is not None:  # --json was guarded before this handler (tumorlib.app.cli); a full disk now
        from tumorlib.core.outputs import reserve_space

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        reserve_space(args.json)
    data = args.data if args.data is not None else ensure_data(config, progress=not args.quiet)
    report = inspect_modalities(data, volumes=args.volumes, configured=config.kaggle_channel_order,
                                progress=not args.quiet)
    print(format_modality_report(report))
    if args.json is not None:
        from tumorlib.core.safety import atomic_write

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(report, indent=2) + "\n", writer="inspect-modalities")
        print(f"wrote {out}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from tumorlib.evaluation.baseline import baseline

    baseline(config_from_args(args), args.data, args.cache, out=args.out, progress=not args.quiet)
    return 0


def _add_synth(sub: Any) -> None:
    """Register ``tumorlib synth``."""
    p = sub.add_parser("synth", help="write the embedded synthetic dataset in the Kaggle layout")
    add_output_arg(p, "--out", kind="folder", makes="dataset", replaces=True, required=True,
                   help="dataset root to create")
    p.add_argument("--volumes", type=int_at_least(1), default=10, help="number of volumes (ids 1..N)")
    p.add_argument("--shape", type=int_at_least(1), nargs=3, default=(155, 240, 240), metavar=("D", "H", "W"),
                   help="slices, rows, columns")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed, >= 0")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out whole (the old folder stays until the new one is complete)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

def _add_notebooks(sub: Any) -> None:
    """Register ``tumorlib notebooks``."""
    p = sub.add_parser("notebooks", help="run the numbered notebooks headless, saving executed copies")
    p.add_argument("--dir", default="notebooks", help="folder with the numbered notebooks")
    add_output_arg(p, "--out", kind="folder", makes="notebooks", default="outputs/demo",
                   help="folder for the executed notebooks")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 01 02")
    p.add_argument("--timeout", type=int_at_least(0), default=1800,
                   help="seconds allowed per cell (0: no limit, for full-preset training cells)")
    p.set_defaults(func=_cmd_notebooks)

def _add_inspect_modalities(sub: Any) -> None:
    """Register ``tumorlib inspect-modalities``."""
    p = sub.add_parser("inspect-modalities",
                       help="infer which stored image channel is which modality from the images and masks")
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--volumes", type=int_at_least(1), default=5, help="volumes read, spread over the ids")
    add_output_arg(p, "--json", default=None, metavar="OUT", help="write the votes and verdict as JSON")
    p.add_argument("--quiet", action="store_true")
    add_config_args(p)
    p.set_defaults(func=_cmd_inspect_modalities)

def _add_cache(sub: Any) -> None:
    """Register ``tumorlib cache``."""
    p = sub.add_parser("cache", help="pre-cache volumes as normalised, cropped float16 .npy files")
    p.add_argument("--data", default=None, help="data folder: Kaggle slices or NIfTI cases of a known layout, "
                                                "detected (default: the workspace's, generated if needed)")
    p.add_argument("--nifti", default=None, metavar="ROOT",
                   help="a folder of NIfTI cases (BraTS 2020/2021/2023+, MSD Task01) instead of --data")
    p.add_argument("--layout", default=None, choices=["brats2020", "brats2021", "brats2023", "msd"],
                   help="the --nifti folder's layout (default: detected from its file names and dataset.json)")
    add_output_arg(p, "--out", kind="folder", makes="cache", default=None,
                   help="cache folder CACHE (default: the workspace's)")
    p.add_argument("--workers", type=int_at_least(1), default=None, help="parallel processes (default: cache_workers)")
    p.add_argument("--quiet", action="store_true")
    add_config_args(p)
    p.set_defaults(func=_cmd_cache)

def _add_bench(sub: Any) -> None:
    """Register ``tumorlib bench``."""
    p = sub.add_parser("bench", help="loading benchmark: HDF5 slices against the cache, build, patches/s")
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--cache", default=None, help="cache folder, built when missing (default: the workspace's)")
    add_output_arg(p, "--out", default=None, help="write the results as JSON to this file")
    p.add_argument("--volumes", type=int_at_least(1), default=3, help="volumes measured (the first N)")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="warm loads per volume and source")
    p.add_argument("--patches", type=int_at_least(1), default=200, help="patches timed")
    p.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold-cache loads")
    p.add_argument("--no-build", dest="build", action="store_false", help="skip timing the cache build")
    p.add_argument("--train", action="store_true",
                   help="add training throughput (train_patches_per_s: model step alone and with data loading)")
    p.add_argument("--train-steps", type=int_at_least(1), default=5, help="timed optimizer steps for --train")
    p.add_argument("--device", default=None, help="device for --train: cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--train-warmup", type=int_at_least(0), default=3,
                   help="untimed optimizer steps before each seed/default measurement (compilation, autotuning)")
    p.add_argument("--loss-steps", type=int_at_least(0), default=5,
                   help="optimizer steps of the reference/default loss check (0 skips it)")
    p.add_argument("--compile-mode", default="auto",
                   help="torch.compile mode of the default variant: auto (on CUDA only), none, default, "
                        "reduce-overhead, max-autotune, max-autotune-no-cudagraphs")
    p.add_argument("--no-throughput", dest="throughput", action="store_false",
                   help="with --train, skip the reference/default comparison (tumorlib.benchmarks.gpu; key 'throughput')")
    p.add_argument("--quiet", action="store_true")
    add_cpu_bench_args(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_bench)

def _add_train(sub: Any) -> None:
    """Register ``tumorlib train``."""
    p = sub.add_parser("train", help="train the UNet3D (under torchrun: DistributedDataParallel)")
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--cache", default=None, help=".npy cache folder, built when missing (default: the workspace's)")
    add_output_arg(p, "--out", kind="folder", makes="run", default=None,
                   help="run folder RUN (default: the workspace's run_dir)")
    either = p.add_mutually_exclusive_group()  # continue a run, or replace it: never both
    either.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pth")
    either.add_argument("--overwrite", action="store_true",
                   help="start a new run over a finished one (its files wait in RUN/previous-<time>/ until the "
                        "new run has its first best_model.pth)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--stop-after-epoch", type=int_at_least(1), default=None, metavar="N",
                   help="stop after epoch N as if interrupted (resume later with --resume)")
    p.add_argument("--quiet", action="store_true")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

def _add_baseline(sub: Any) -> None:
    """Register ``tumorlib baseline``."""
    p = sub.add_parser("baseline", help="intensity-only per-voxel classifier: fit on the train split, score the test split")
    p.add_argument("--data", default=None, help="Kaggle-format data (default: the workspace's)")
    p.add_argument("--cache", default=None, help=".npy cache folder, built when missing (default: the workspace's)")
    add_output_arg(p, "--out", default=None, help="metrics CSV (default OUT/baseline_test.csv); summary beside it")
    p.add_argument("--quiet", action="store_true")
    add_config_args(p)
    p.set_defaults(func=_cmd_baseline)


def register_commands(sub: Any) -> None:
    """Add every subcommand to ``sub`` (the parser's ``add_subparsers()``), in ``--help`` order.

    Args:
        sub: the subparsers action of the ``tumorlib`` parser.
    """
    _add_synth(sub)
    _add_notebooks(sub)
    _add_inspect_modalities(sub)
    _add_cache(sub)
    _add_bench(sub)
    _add_train(sub)
    register_evaluate(sub)
    register_predict(sub)
    register_report(sub)
    register_tune_postprocessing(sub)
    register_cpu_commands(sub)
    _add_baseline(sub)
