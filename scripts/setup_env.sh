#!/usr/bin/env bash
# Create .venv at the repo root and install tumorlib with its dev extras (idempotent); the CPU inference
# engine OpenVINO is a dependency where wheels exist (a platform without one gets a one-line note).
#
# torch: a CPU build where no NVIDIA GPU is visible, the default (CUDA) build where one is.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.5.1") and TORCH_INDEX_URL (e.g. a CUDA wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
EXTRAS=${TUMORLIB_EXTRAS:-dev,kaggle,browser}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec=("$TORCH_SPEC"); args=(${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"})
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing the default (CUDA) torch build"
    spec=("torch>=2.3"); args=()
  else
    cpu_index=https://download.pytorch.org/whl/cpu
    if "$VENV/bin/python" - "$cpu_index" <<'PYEOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)
PYEOF
      echo "[setup] no GPU: installing a CPU torch build from $cpu_index"
      spec=("torch>=2.3"); args=(--index-url "$cpu_index")
    else
      echo "[setup] no GPU and no PyTorch CPU index reachable: installing torch==2.13.0 (local CPU wheel here)"
      spec=("torch==2.13.0"); args=()
    fi
  fi
  "${PIP[@]}" "${args[@]}" "${spec[@]}" numpy 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import torch" || { echo "[setup] torch install failed" >&2; exit 1; }
fi

stamp="$VENV/.tumorlib-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing tumorlib[$EXTRAS] (editable)"
  "${PIP[@]}" -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import tumorlib, jupytext, nbval" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# OpenVINO (the CPU inference engine) comes with the dependencies where wheels exist; say when it did not.
"$VENV/bin/python" -c "import openvino" 2>/dev/null \
  || echo "[setup] note: no openvino wheel for this platform; inference runs on torch (--engine auto says so)"
echo "[setup] $VENV ready: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
