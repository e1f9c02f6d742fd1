"""Arguments shared by the ``tumorlib`` subcommands: ``--preset`` and one ``--<field>`` per config field
(tuples as ``--patch_size 32,64,64``), bounded integers, and output options.

An option that names something a command writes is declared with ``add_output_arg``: it carries an
``OutputSpec`` (attribute ``tumorlib_output`` of its argparse action), and ``check_outputs`` (called by
``tumorlib.app.cli.main`` before the handler) puts each one given through ``tumorlib.core.outputs.guard_output``.
That attribute is the rule for "which options are outputs": tests enumerate them from the parser."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from tumorlib.core.config import Config, get_config, parse_field

__all__ = ["OutputSpec", "add_config_args", "add_output_arg", "check_outputs", "config_from_args", "int_at_least",
           "output_actions"]


@dataclass(frozen=True)
class OutputSpec:
    """What an output option names.

    Attributes:
        kind: ``"file"`` or ``"folder"``.
        makes: for a folder, the kind of folder the command makes (``"run"``, ``"cache"``, ``"dataset"``,
            ``"export"``, ``"notebooks"``): a folder of that kind is its own.
        replaces: ``--overwrite`` replaces the whole folder (then only a folder the command recorded writing).
        check: the command's own rules on the name (``check(value, args)``, e.g. a suffix), run before the
            guard so their messages come first; raises ``ValueError``.
    """

    kind: str = "file"
    makes: str | None = None
    replaces: bool = False
    check: Callable[[str, argparse.Namespace], None] | None = None


def add_output_arg(parser: argparse.ArgumentParser, *flags: str, kind: str = "file", makes: str | None = None,
                   replaces: bool = False, check: Callable[[str, argparse.Namespace], None] | None = None,
                   **kwargs: Any) -> argparse.Action:
    """Add an option naming something the command writes; ``check_outputs`` guards it before the handler.

    Args:
        parser: the subcommand's parser (or an argument group of it).
        *flags: the option strings (``"--out"``).
        kind, makes, replaces, check: see ``OutputSpec``.
        **kwargs: passed to ``add_argument`` (``default``, ``help``, ``required``, ``metavar``).

    Returns:
        The argparse action, marked with ``tumorlib_output``.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"output kind must be 'file' or 'folder', got {kind!r}")
    action = parser.add_argument(*flags, **kwargs)
    action.tumorlib_output = OutputSpec(kind, makes, replaces, check)
    return action


def output_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The output options of one subcommand's parser (those declared with ``add_output_arg``)."""
    return [a for a in parser._actions if getattr(a, "tumorlib_output", None) is not None]


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> None:
    """Guard every output option given to ``command`` (``tumorlib.core.outputs.guard_output``).

    Options left at None (a default the library resolves) are guarded where the library resolves them.

    Raises:
        OutputIsInputError, FileExistsError, IsADirectoryError, NotADirectoryError: one line naming the option.
    """
    from tumorlib.core.outputs import guard_output

    for action in output_actions(parser):
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        spec = action.tumorlib_output
        if spec.check is not None:
            spec.check(value, args)
        guard_output(value, spec.kind, action.option_strings[0], writer=command, makes=spec.makes,
                     overwrite=bool(getattr(args, "overwrite", False)), replaces=spec.replaces)


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
    parse.minimum = minimum  # type: ignore[attr-defined]  # read by the parser-generated range test
    return parse


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset's config with the ``--<field>`` overrides given on the command line."""
    overrides = {}
    for field in dataclasses.fields(Config):
        text = getattr(args, f"cfg_{field.name}", None)
        if text is not None:
            overrides[field.name] = parse_field(field.name, text)
    return get_config(args.preset, **overrides)
