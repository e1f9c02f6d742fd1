"""scripts/dev.py: the Makefile's commands in pure Python run the same commands with the same environment."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "scripts" / "dev.py"
IN_VENV = sys.prefix != sys.base_prefix
VENV = Path(sys.prefix)


def _dev(*args, env=None, timeout=120):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(DEV), *args], capture_output=True, text=True, timeout=timeout,
                          env=full, cwd=ROOT)


def _recipe(target):
    """The tokens of a Makefile target's first recipe line, with its variables filled in."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", text, re.M)
    assert match, f"no recipe for {target} in the Makefile"
    line = match.group(1)
    py = str(VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    line = (line.replace("$(PY)", py).replace("$(CURDIR)", str(ROOT)).replace("$(OUT)", "outputs/demo")
            .replace("$(PRESET)", "demo").replace("$${TUMORLIB_DATA:-embedded}", "embedded"))
    return shlex.split(line)


def _last_command(stdout):
    return shlex.split(stdout.strip().splitlines()[-1])


@pytest.fixture
def env_without_data(monkeypatch):
    monkeypatch.delenv("TUMORLIB_DATA", raising=False)


pytestmark = pytest.mark.skipif(not IN_VENV, reason="the tests run outside a virtual environment")


def _stamp_ok():
    import hashlib

    stamp = VENV / ".tumorlib-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return stamp.is_file() and stamp.read_text().split()[0] == want


needs_setup_done = pytest.mark.skipif(not _stamp_ok(), reason="the venv was not set up by make setup / dev.py")


@needs_setup_done
@pytest.mark.parametrize("command, target", [(["test"], "test"), (["test", "--fast"], "test-fast"),
                                             (["demo"], "demo"), (["lab"], "lab")])
def test_dry_run_prints_the_makefile_command(command, target, env_without_data):
    result = _dev("--dry-run", "--venv", str(VENV), *command)
    assert result.returncode == 0, result.stderr
    assert "[setup]" in result.stdout and "pip" not in result.stdout  # set up already: nothing to install
    assert _last_command(result.stdout) == _recipe(target)


def test_dry_run_setup_on_a_fresh_venv_creates_nothing(tmp_path):
    venv = tmp_path / "fresh venv"
    result = _dev("--dry-run", "--venv", str(venv), "setup",
                  env={"TORCH_SPEC": "torch==2.5.1", "TORCH_INDEX_URL": "https://example.org/cu124",
                       "TUMORLIB_EXTRAS": "dev"})
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(x) for x in result.stdout.splitlines() if not x.startswith("[setup]")]
    assert lines[0][1:] == ["-m", "venv", str(venv)]
    torch_line = next(x for x in lines if "torch==2.5.1" in x)
    assert torch_line[-4:] == ["torch==2.5.1", "--index-url", "https://example.org/cu124", "numpy"]
    assert any(x[-2:] == ["-e", ".[dev]"] for x in lines)
    assert not venv.exists()


def test_arguments_after_dashes_only_for_test():
    result = _dev("--dry-run", "lab", "--", "-q")
    assert result.returncode != 0 and "only with 'test'" in result.stderr


@needs_setup_done
@pytest.mark.slow
def test_real_fast_test_run_of_one_file(tmp_path):
    result = _dev("--venv", str(VENV), "test", "--fast", "--", "tests/test_config.py", "-q", "-k", "parse_field",
                  "-p", "no:cacheprovider", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)
