"""The CPU-side subcommands: ``tumorlib export`` (ONNX / OpenVINO IR for deployment), the ``--engine``
option of ``predict`` and ``evaluate``, and ``tumorlib bench --cpu`` (the CPU table: engines x precisions).

``tumorlib.app.commands`` registers them beside the other subcommands.
"""

from __future__ import annotations

import argparse
from typing import Any

from tumorlib.app.arguments import add_output_arg, int_at_least

__all__ = ["add_cpu_bench_args", "add_engine_arg", "register_cpu_commands", "run_cpu_bench"]


def add_engine_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine auto|torch|openvino`` (default auto: OpenVINO on the CPU when installed, else torch)."""
    parser.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino"],
                        help="what runs the windows: auto (OpenVINO on the CPU when it is installed, else torch), "
                             "torch or openvino; sliding window, TTA and decoding are the same for each")


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"expected comma-separated integers such as 32,64,64, got {text!r}") from err


def add_cpu_bench_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--cpu`` and the sizes of the CPU table to ``tumorlib bench`` (all default to the README's)."""
    g = parser.add_argument_group("CPU table (--cpu): training and one full-size case, engines x precisions")
    g.add_argument("--cpu", action="store_true",
                   help="print the CPU table for this machine instead of the loading benchmark")
    g.add_argument("--cpu-train-patch", default="32,64,64", metavar="D,H,W", help="training patch")
    g.add_argument("--cpu-train-features", default=None, metavar="F,...", help="training U-Net widths (demo's)")
    g.add_argument("--cpu-no-compile", dest="cpu_compile", action="store_false",
                   help="skip the bf16 + torch.compile column (compiling takes minutes on a CPU)")
    g.add_argument("--cpu-volume", default="155,240,240", metavar="D,H,W", help="the case's size")
    g.add_argument("--cpu-infer-patch", default=None, metavar="D,H,W", help="window (the full preset's)")
    g.add_argument("--cpu-infer-features", default=None, metavar="F,...", help="U-Net widths (the full preset's)")
    g.add_argument("--cpu-skip", default=None, choices=["train", "infer"], help="leave one row out")
    g.add_argument("--cpu-sw-batch", type=int_at_least(1), default=None, metavar="N",
                   help="windows per call (the full preset's; OpenVINO's static batch: a case of fewer windows "
                        "than N computes N)")
    g.add_argument("--cpu-repeats", type=int_at_least(1), default=3, metavar="N",
                   help="timed runs of the case per engine after a warm-up call, interleaved across engines "
                        "(min and median reported)")
    g.add_argument("--cpu-no-tta", dest="cpu_tta", action="store_false", help="skip the 8-flip TTA row")
    g.add_argument("--cpu-tta-repeats", type=int_at_least(1), default=1, metavar="N", help="timed TTA runs per engine")


def run_cpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    """``tumorlib bench --cpu``: run ``benchmark_cpu`` with the options and print ``format_cpu_table``.

    Returns:
        The ``benchmark_cpu`` result.
    """
    from tumorlib.benchmarks.cpu import benchmark_cpu, format_cpu_table

    result = benchmark_cpu(train_patch=_sizes(args.cpu_train_patch), train_features=_sizes(args.cpu_train_features),
                           train_steps=args.train_steps, train_warmup=args.train_warmup, compile=args.cpu_compile,
                           volume=_sizes(args.cpu_volume), infer_patch=_sizes(args.cpu_infer_patch),
                           infer_features=_sizes(args.cpu_infer_features), train=args.cpu_skip != "train",
                           infer=args.cpu_skip != "infer", repeats=args.cpu_repeats, tta=args.cpu_tta,
                           tta_repeats=args.cpu_tta_repeats, infer_sw_batch=args.cpu_sw_batch,
                           log=None if args.quiet else print)
    print(format_cpu_table(result))
    return result


def _cmd_export(args: argparse.Namespace) -> int:
    from tumorlib.inference.export import export_model

    path = export_model(args.run, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {path.parent} ({args.format}; input contract in {path.name})")
    return 0


def _add_export(sub: Any) -> None:
    """Register ``tumorlib export``."""
    p = sub.add_parser("export", help="export a run's model as ONNX or OpenVINO IR, with its input contract (JSON)")
    p.add_argument("--run", required=True, help="run folder (config.json, checkpoints/best_model.pth)")
    p.add_argument("--format", required=True, choices=["onnx", "openvino"],
                   help="onnx (model.onnx) or openvino (model.xml + model.bin, needs the openvino extra)")
    add_output_arg(p, "--out", kind="folder", makes="export", default=None,
                   help="output folder (default RUN/export-<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export (tumorlib's own files only)")
    p.set_defaults(func=_cmd_export)


def register_cpu_commands(sub: Any) -> None:
    """Add ``tumorlib export`` to ``sub`` (the parser's ``add_subparsers()``)."""
    _add_export(sub)
