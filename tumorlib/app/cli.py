"""The ``tumorlib`` command: ``tumorlib synth|cache|bench|train|evaluate|predict``.

The subcommands (options and handlers) live in ``tumorlib.app.commands``; here: the parser, signals
(SIGTERM and Ctrl-C stop a command cleanly), the output guard every command goes through before its
handler (``tumorlib.app.arguments.check_outputs``) and the one-line error report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from tumorlib.app.arguments import check_outputs
from tumorlib.app.commands import register_commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (``tumorlib.app.commands``)."""
    parser = argparse.ArgumentParser(prog="tumorlib", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also TUMORLIB_DEBUG=1); accepted anywhere")
    register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand of ``parser``."""
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so ``finally`` blocks and context managers run (exit 143)."""


_RESUME_HINTS = {
    "train": "rerun with --resume to continue from RUN/checkpoints/last.pth",
    "cache": "rerun the same command: finished volumes are reused",
    "synth": "the output folder was left as it was; rerun the same command",
    "notebooks": "rerun the same command",
}


_MAIN_PID: list[int] = []  # the process that installed the handler; forked workers inherit it
_RECEIVED: list[int] = []  # signals seen, in case library code swallowed the exception
_TIMERS: list = []  # signals to send again (``_resend``), cancelled when main returns


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM -> ``_Terminated``, SIGINT -> ``KeyboardInterrupt``, both recorded in ``_RECEIVED``."""
    import os
    import signal

    if _MAIN_PID and os.getpid() != _MAIN_PID[-1]:
        # a forked worker (process pool, DataLoader): the parent stops it; dying here would break the
        # pool under the parent (seen: a hung ProcessPoolExecutor and a thread traceback)
        return
    _RECEIVED.append(signum)
    if _importing(frame):
        # raised inside an import, the exception can cross a C++ extension's initialisation (torch, OpenVINO:
        # pybind11), which then aborts the process (exit -6, "terminate called"): send it again once the
        # import is done (main reports it if the command finishes first)
        _resend(signum, 0.05)
        return
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside Python's import machinery (a module being imported)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _resend(signum: int, delay: float) -> None:
    """Deliver ``signum`` to this process again after ``delay`` seconds (from a daemon thread)."""
    import os
    import threading

    timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
    timer.daemon = True
    _TIMERS.append(timer)
    timer.start()


def _redeliver(unraisable: object) -> None:
    """``sys.unraisablehook``: an interrupt raised inside a callback (a weakref finaliser, an h5py
    ``__dealloc__``) is swallowed by Python; send the signal again so it stops the command."""
    import signal

    exc = getattr(unraisable, "exc_value", None)
    if isinstance(exc, KeyboardInterrupt):  # not from here: raising inside this hook is swallowed too
        _resend(signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT, 0.01)
    else:
        sys.__unraisablehook__(unraisable)


def _report_error(command: str, err: BaseException) -> int:
    """Print one line for ``err`` on stderr and return the exit code."""
    from tumorlib.core.safety import DiskFullError, is_disk_full

    if isinstance(err, KeyboardInterrupt):
        how, code = ("stopped by SIGTERM", 143) if isinstance(err, _Terminated) else ("interrupted (Ctrl-C)", 130)
        kept = getattr(err, "kept", None)  # what the command itself says it kept, when it knows
        if kept:
            print(f"tumorlib {command}: {how}; {kept}", file=sys.stderr)
            return code
        hint = _RESUME_HINTS.get(command, "rerun the same command")
        print(f"tumorlib {command}: {how}; files already completed were kept and partial ones discarded; "
              f"{hint}", file=sys.stderr)
        return code
    if is_disk_full(err):
        if not isinstance(err, DiskFullError):
            name = getattr(err, "filename", None)
            err = DiskFullError(name if name else "an output file (the system did not say which)")
        print(f"tumorlib {command}: error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # str(KeyError) would add quotes
    else:
        text = str(err) or type(err).__name__
    user_facing = (ValueError, KeyError, OSError, RuntimeError, ArithmeticError, EOFError, ImportError)
    if isinstance(err, user_facing):
        print(f"tumorlib {command}: error: {' '.join(text.split())}", file=sys.stderr)
        return 3 if isinstance(err, FloatingPointError) else 2
    print(f"tumorlib {command}: internal error: {type(err).__name__}: {' '.join(text.split())} "
          f"(rerun with --debug for the traceback)", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors are printed, not raised).

    Every error ends in one line on stderr naming the file or value: exit 2 for bad input or a failed
    file operation (disk full: ``disk full while writing <file>``), 130 after Ctrl-C, 143 after
    SIGTERM, 1 for an internal error. ``--debug`` (anywhere on the line) or ``TUMORLIB_DEBUG=1`` adds
    the traceback.
    """
    import os
    import signal
    import traceback

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TUMORLIB_DEBUG", "").strip().lower() in {"1", "true", "yes"}
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if hasattr(signal, "SIGTERM"):
        try:
            previous = signal.signal(signal.SIGTERM, _on_signal)
            _MAIN_PID.append(os.getpid())
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
                signal.signal(signal.SIGINT, _on_signal)
        except ValueError:  # not the main thread: leave SIGTERM alone
            previous = None
    hook, sys.unraisablehook = sys.unraisablehook, _redeliver
    _RECEIVED.clear()
    try:
        check_outputs(_subparser(parser, args.command), args, args.command)  # before anything is written
        code = int(args.func(args) or 0)
        if _RECEIVED:  # the exception was swallowed on the way (rare: inside a library's callback)
            term = _RECEIVED[0] == signal.SIGTERM
            print(f"tumorlib {args.command}: {'stopped by SIGTERM' if term else 'interrupted (Ctrl-C)'} as the "
                  f"work finished; its results were kept", file=sys.stderr)
            return 143 if term else 130
        return code
    except (Exception, KeyboardInterrupt) as err:
        if debug:
            traceback.print_exc()
        return _report_error(args.command, err)
    finally:
        for timer in _TIMERS:  # a signal deferred past the end of the command was reported above
            timer.cancel()
        _TIMERS.clear()
        sys.unraisablehook = hook
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            if signal.getsignal(signal.SIGINT) is _on_signal:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            _MAIN_PID.pop()


if __name__ == "__main__":
    sys.exit(main())
