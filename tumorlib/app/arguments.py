"""Arguments shared by the ``tumorlib`` subcommands: ``--preset`` and one ``--<field>`` per config field
(tuples as ``--patch_size 32,64,64``), and bounded integers."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tumorlib.core.config import Config, get_config, parse_field

__all__ = ["add_config_args", "config_from_args", "int_at_least"]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and one ``--<field>`` option per config field (all optional)."""
    parser.add_argument("--preset", default=None, help="ci, demo or full (default: $TUMORLIB_PRESET or demo)")
    group = parser.add_argument_group("config fields (override the preset)")
    for field in dataclasses.fields(Config):
        if field.name == "preset":
            continue
        group.add_argument(f"--{field.name}", dest=f"cfg_{field.name}", default=None, metavar="VALUE",
                           help=f"default: preset value ({field.type})")


def int_at_least(minimum: int) -> Any:
    """An argparse ``type``: an integer >= ``minimum`` (argparse names the option in its one-line error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
        return value

    parse.__name__ = "integer"
    return parse


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset's config with the ``--<field>`` overrides given on the command line."""
    overrides = {}
    for field in dataclasses.fields(Config):
        text = getattr(args, f"cfg_{field.name}", None)
        if text is not None:
            overrides[field.name] = parse_field(field.name, text)
    return get_config(args.preset, **overrides)
