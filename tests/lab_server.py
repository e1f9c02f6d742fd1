"""Start and stop a private JupyterLab server for browser tests.

The server binds 127.0.0.1 on a free port with a random token, keeps its config, runtime, settings and
workspaces in a temporary folder (so nothing from the user's own JupyterLab leaks in), turns the news
pop-up off, and is stopped by its process id.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabServer", "free_port", "start_lab", "stop_lab"]


@dataclass
class LabServer:
    """A running JupyterLab server.

    Attributes:
        process: the ``jupyter lab`` process.
        port: its port on 127.0.0.1.
        token: its access token.
        root_dir: the folder it serves.
        log_path: its combined stdout/stderr.
    """

    process: subprocess.Popen
    port: int
    token: str
    root_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (e.g. ``lab/tree/x.ipynb``) with the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no server log>"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_lab(root_dir: Path, work_dir: Path, env: dict[str, str] | None = None, timeout: float = 60.0) -> LabServer:
    """Start ``jupyter lab`` serving ``root_dir`` and wait until its API answers.

    Args:
        root_dir: the folder the server shows (copy notebooks here: the browser may autosave them).
        work_dir: a scratch folder for config, runtime, settings, workspaces and the log.
        env: the environment of the server and its kernels (default ``os.environ``).
        timeout: seconds to wait for ``/api/status``.

    Returns:
        the running server; stop it with ``stop_lab``.

    Raises:
        RuntimeError: the server exits or does not answer in time (the log tail is included); the
            process is stopped first.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = work_dir / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    for sub in ("config", "runtime", "workspaces"):
        (work_dir / sub).mkdir(exist_ok=True)
    run_env = dict(os.environ if env is None else env)
    run_env["JUPYTER_CONFIG_DIR"] = str(work_dir / "config")
    run_env["JUPYTER_RUNTIME_DIR"] = str(work_dir / "runtime")
    port = free_port()
    token = secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={work_dir / 'workspaces'}",
    ]
    log_path = work_dir / "jupyter_lab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=str(root_dir), start_new_session=True)
    server = LabServer(process=process, port=port, token=token, root_dir=root_dir, log_path=log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            stop_lab(server)
            raise RuntimeError(f"jupyter lab exited with code {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url("api/status"), timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_lab(server)
            raise RuntimeError(f"jupyter lab did not answer on port {port} within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.3)


def stop_lab(server: LabServer, timeout: float = 20.0) -> None:
    """Stop the server by its process id: SIGTERM (its kernels stop with it), SIGKILL if it hangs.

    Kernels it started sit in its own process group (``start_new_session``); if the server had to be
    killed, that group is killed too so no kernel outlives the test.
    """
    process = server.process
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group this server leads (its kernels)
        except (ProcessLookupError, PermissionError):
            pass
    except ProcessLookupError:
        pass
