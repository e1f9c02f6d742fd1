#!/usr/bin/env python3
"""The Makefile's commands in pure Python, for Windows and macOS (no make, no bash).

    python scripts/dev.py setup          # = make setup: .venv, torch (CPU or CUDA), tumorlib[dev,kaggle,browser]
    python scripts/dev.py demo           # = make demo: the six notebooks on the embedded data (demo preset)
    python scripts/dev.py test           # = make test: every test and pytest --nbval over the notebooks
    python scripts/dev.py test --fast    # = make test-fast
    python scripts/dev.py lab            # = make lab: JupyterLab on the notebooks
    python scripts/dev.py --dry-run test # print the commands (with their environment) without running them

Every command runs ``setup`` first, as the Makefile does. Options: ``demo --preset P`` (default demo,
outputs in ``outputs/P``); arguments after ``--`` go to pytest (``test -- tests/test_metrics.py -q``).
Set-up follows ``scripts/setup_env.sh``: ``PYTHON`` picks the interpreter that creates the venv,
``TORCH_SPEC`` and ``TORCH_INDEX_URL`` choose the torch build, ``TUMORLIB_EXTRAS`` the extras.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
FALLBACK_TORCH = "torch==2.13.0"  # what setup_env.sh installs when no CPU index is reachable


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment on this platform."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


class Runner:
    """Runs (or, dry, prints) commands from the repository root."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry

    def __call__(self, cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> int:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        print((shown + " " if shown else "") + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
        if self.dry:
            return 0
        full_env = {**os.environ, **(env or {})}
        code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env=full_env)
        if check and code:
            raise SystemExit(code)
        return code


def _has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
    return True


def torch_args() -> tuple[list[str], str]:
    """pip arguments for torch and the reason, decided as ``setup_env.sh`` decides."""
    if os.environ.get("TORCH_SPEC"):
        index = os.environ.get("TORCH_INDEX_URL")
        return ([os.environ["TORCH_SPEC"]] + (["--index-url", index] if index else []),
                "TORCH_SPEC from the environment")
    if _has_nvidia_gpu():
        return ["torch>=2.3"], "NVIDIA GPU found: the default (CUDA) torch build"
    if sys.platform == "darwin":
        return ["torch>=2.3"], "macOS: the default torch build (CPU and Apple MPS)"
    if _reachable(CPU_INDEX + "/torch/"):
        return ["torch>=2.3", "--index-url", CPU_INDEX], f"no GPU: a CPU torch build from {CPU_INDEX}"
    return [FALLBACK_TORCH], f"no GPU and no PyTorch CPU index reachable: {FALLBACK_TORCH}"


def _stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"{digest} {extras}"  # the same text as setup_env.sh writes


def setup(run: Runner, venv: Path) -> Path:
    """Create the venv and install torch and tumorlib (idempotent, like ``make setup``).

    Returns:
        The venv's python.
    """
    py = venv_python(venv)
    extras = os.environ.get("TUMORLIB_EXTRAS", "dev,kaggle,browser")
    if not py.exists():
        print(f"[setup] creating {venv}", flush=True)
        run([os.environ.get("PYTHON") or sys.executable, "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    has_torch = py.exists() and subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        args, why = torch_args()
        print(f"[setup] {why}", flush=True)
        run(pip + args + ["numpy"])
        run([str(py), "-c", "import torch"])
    stamp = venv / ".tumorlib-installed"
    want = _stamp(extras)
    if not stamp.is_file() or stamp.read_text().strip() != want:
        print(f"[setup] installing tumorlib[{extras}] (editable)", flush=True)
        run(pip + ["-e", f".[{extras}]"])
        run([str(py), "-c", "import tumorlib, jupytext, nbval"])
        if not run.dry:
            stamp.write_text(want + "\n")
    print(f"[setup] {venv} ready", flush=True)
    return py


def demo_command(py: Path, preset: str) -> tuple[list[str], dict[str, str]]:
    """``make demo``: the notebooks headless, on the embedded data unless TUMORLIB_DATA is set."""
    out = f"outputs/{preset}"
    env = {"TUMORLIB_DATA": os.environ.get("TUMORLIB_DATA") or "embedded", "TUMORLIB_PRESET": preset,
           "TUMORLIB_OUT": str(ROOT / out)}
    return [str(py), "-m", "tumorlib", "notebooks", "--out", out], env


def test_command(py: Path, fast: bool, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """``make test`` (or ``make test-fast``), with extra pytest arguments appended."""
    env = {"TUMORLIB_DATA": "embedded", "TUMORLIB_PRESET": "ci", "TUMORLIB_HOME": str(ROOT / ".tumorlib" / "test")}
    if fast:
        cmd = [str(py), "-m", "pytest", "tests", "-m", "not slow and not browser"]
    else:
        cmd = [str(py), "-m", "pytest", "--nbval", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "tests",
               "notebooks", "-p", "no:cacheprovider", "--durations=30"]
    return cmd + extra, env


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="dev.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--venv", default=str(ROOT / ".venv"), help="the virtual environment (default .venv)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create .venv and install (= make setup)")
    demo = sub.add_parser("demo", help="run the six notebooks (= make demo)")
    demo.add_argument("--preset", default="demo", help="preset (default demo); outputs in outputs/PRESET")
    test = sub.add_parser("test", help="every test and --nbval (= make test)")
    test.add_argument("--fast", action="store_true", help="unit tests only, no slow or browser tests (= make test-fast)")
    sub.add_parser("lab", help="JupyterLab on the notebooks (= make lab)")
    args = parser.parse_args(argv)
    if extra and args.command != "test":
        parser.error("arguments after -- are passed to pytest: only with 'test'")
    run = Runner(args.dry_run)
    py = setup(run, Path(args.venv).resolve())
    if args.command == "demo":
        cmd, env = demo_command(py, args.preset)
    elif args.command == "test":
        cmd, env = test_command(py, args.fast, extra)
    elif args.command == "lab":
        cmd, env = [str(py), "-m", "jupyter", "lab", "notebooks"], {}
    else:
        return 0
    return run(cmd, env, check=False)


if __name__ == "__main__":
    sys.exit(main())
