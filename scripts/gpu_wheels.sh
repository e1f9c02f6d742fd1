#!/usr/bin/env bash
# Download the wheels scripts/gpu_bench.sh needs on a GPU machine that reaches no package registry and lacks
# nibabel and nilearn (the embedded generator reads nilearn's ICBM152 files through nibabel). Run here, in
# the repository root; carry the folder (default .whl, ignored by git) to the GPU machine.
#
#   scripts/gpu_wheels.sh [DIR] [PYTHON_VERSION]     (defaults: .whl 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PYV="${2:-3.12}"
grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
# pure-Python wheels: no platform tags needed; --no-deps: the stock image has numpy and packaging
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    -d "$DIR" "nibabel>=5.2" "nilearn>=0.10"
ls -l "$DIR"
