"""DataLoader workers under the ``spawn`` start method (the Windows and macOS default), forced on Linux.

Both runs build the embedded ``ci`` data and cache, then read two epochs through ``make_loader`` with two
spawned workers and compare every batch with the same epochs read in the main process (workers=0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tumorlib.app.notebook_runner import kernel_manager

# The body shared by the script and the notebook: prints "spawn-ok <batches> <checksum>" on success.
BODY = textwrap.dedent("""
    import hashlib
    import multiprocessing as mp

    import torch

    import tumorlib
    from tumorlib.data import BraTS3DDataset, make_loader, resolve_cache

    mp.set_start_method("spawn", force=True)
    config = tumorlib.get_config("ci")
    cache = resolve_cache(config, progress=False)
    ids = [int(v) for v in tumorlib.data.cached_volume_ids(cache)]


    def epochs(workers):
        ds = BraTS3DDataset(cache, ids, patch_size=config.patch_size, tumor_prob=config.tumor_prob,
                            augment=True, seed=config.seed, samples_per_epoch=6)
        loader = make_loader(ds, config, shuffle=True, batch_size=2, num_workers=workers)
        assert loader.num_workers == workers
        out = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            out += [(img.clone(), msk.clone()) for img, msk in loader]
        if workers:  # persistent workers: still alive, and started by spawn
            kinds = {type(p._popen).__module__ for p in loader._iterator._workers}
            assert len(kinds) == 1 and kinds.pop().startswith("multiprocessing.popen_spawn"), kinds
        return out


    def run():
        assert mp.get_start_method() == "spawn"
        spawned, inline = epochs(2), epochs(0)
        assert len(spawned) == len(inline) == 6
        digest = hashlib.sha256()
        for (a, b), (c, d) in zip(spawned, inline):
            assert torch.equal(a, c) and torch.equal(b, d)
            digest.update(a.numpy().tobytes())
        print("spawn-ok", len(spawned), digest.hexdigest()[:12])
""")


def _env(tmp_path):
    env = dict(os.environ)
    env.update(TUMORLIB_HOME=str(tmp_path / "home"), TUMORLIB_DATA="embedded", TUMORLIB_PRESET="ci")
    for var in ("TUMORLIB_OUT", "TUMORLIB_CACHE"):
        env.pop(var, None)
    return env


@pytest.mark.slow  # subprocesses (or a signal): seconds each
def test_spawn_workers_from_a_script(tmp_path):
    script = tmp_path / "spawn_script.py"
    script.write_text(BODY + '\n\nif __name__ == "__main__":  # required under spawn: workers re-import this file\n    run()\n')
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "spawn-ok 6" in result.stdout


@pytest.mark.slow
def test_spawn_workers_from_a_notebook_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BODY), nbformat.v4.new_code_cell("run()")]
    old = dict(os.environ)
    os.environ.update(_env(tmp_path))  # the kernel inherits this process's environment
    try:
        sockets = Path(tempfile.mkdtemp(prefix="tumorlib-kernel-"))  # IPC: no "running over TCP" warning
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", km=kernel_manager("python3", sockets),
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute(cleanup_kc=True)
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "spawn-ok 6" in text, nb.cells[-1].outputs
