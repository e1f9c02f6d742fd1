"""The ``tumorlib`` command: ``tumorlib synth|cache|bench|train|evaluate|predict``.

Each subcommand is a thin wrapper over a library function; the commands that take a config accept
``--preset`` and any config field as ``--<field> value`` (tuples as ``--patch_size 32,64,64``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from tumorlib.config import Config, get_config, parse_field

__all__ = ["main", "build_parser", "add_config_args", "config_from_args"]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and one ``--<field>`` option per config field (all optional)."""
    parser.add_argument("--preset", default=None, help="ci, demo or full (default: $TUMORLIB_PRESET or demo)")
    group = parser.add_argument_group("config fields (override the preset)")
    for field in dataclasses.fields(Config):
        if field.name == "preset":
            continue
        group.add_argument(f"--{field.name}", dest=f"cfg_{field.name}", default=None, metavar="VALUE",
                           help=f"default: preset value ({field.type})")


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset's config with the ``--<field>`` overrides given on the command line."""
    overrides = {}
    for field in dataclasses.fields(Config):
        text = getattr(args, f"cfg_{field.name}", None)
        if text is not None:
            overrides[field.name] = parse_field(field.name, text)
    return get_config(args.preset, **overrides)


def _cmd_synth(args: argparse.Namespace) -> int:
    from tumorlib.data import make_synthetic

    folder = make_synthetic(args.out, args.volumes, tuple(args.shape), seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.volumes} volumes of {tuple(args.shape)} to {folder}")
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tumorlib.config import preset_name, workspace
    from tumorlib.runner import run_notebooks

    out = Path(args.out).resolve()
    os.environ.setdefault("TUMORLIB_OUT", str(out))
    cfg = get_config()
    print(f"running notebooks with preset {preset_name()} -> {out}", flush=True)
    run_notebooks(args.dir, out, timeout=args.timeout, only=args.only)
    ws = workspace(cfg)
    print(f"executed notebooks: {out}")
    print(f"figures:            {ws.fig_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="tumorlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the embedded synthetic dataset in the Kaggle layout")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--volumes", type=int, default=10, help="number of volumes (ids 1..N)")
    p.add_argument("--shape", type=int, nargs=3, default=(155, 240, 240), metavar=("D", "H", "W"),
                   help="slices, rows, columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("notebooks", help="run the numbered notebooks headless, saving executed copies")
    p.add_argument("--dir", default="notebooks", help="folder with the numbered notebooks")
    p.add_argument("--out", default="outputs/demo", help="folder for the executed notebooks")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes to run, e.g. 01 02")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    p.set_defaults(func=_cmd_notebooks)

    # >>> further subcommands register here (one block each) <<<

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors are printed, not raised)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, OSError, RuntimeError) as err:
        print(f"tumorlib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
