#!/usr/bin/env bash
# GPU throughput benchmark: the reference design's settings against tumorlib's default, in one run.
#
#   scripts/gpu_bench.sh [OUT.json]          (default OUT: gpu_bench.json in the current folder)
#
# Needs what a stock PyTorch CUDA image has (torch, numpy, h5py, scipy, pandas, matplotlib), plus nibabel
# and nilearn's ICBM152 files for the embedded generator: where the image lacks them, put their wheels in
# WHEELS (made here by `scripts/gpu_wheels.sh`), which are installed with --no-index into the scratch
# folder; the repository is put on PYTHONPATH. It generates its own full-size synthetic volumes
# (`tumorlib synth`), caches them, then runs
#   python -m tumorlib bench --train --device cuda --preset full --out OUT.json
# and prints the table. Budget: under 8 minutes on one H100 (the bench is killed at the deadline).
#
# Environment (all optional):
#   PYTHON        interpreter (default: python)
#   WORK          scratch folder for data, cache and TUMORLIB_HOME (default: a new temporary folder;
#                 data and cache found there are reused)
#   VOLUMES       synthetic volumes to generate (default 6: 4 train, 1 validation, 1 test)
#   SHAPE         volume shape "D H W" (default "155 240 240")
#   DEVICE        cuda, cuda:1, cpu (default cuda)
#   PRESET        config preset (default full)
#   STEPS         timed optimizer steps per measurement (default 20)
#   COMPILE_MODE  torch.compile mode of the default variant: auto, none, default, reduce-overhead,
#                 max-autotune, ... (default auto: compiled on CUDA)
#   BUDGET_S      seconds for the whole script (default 470)
#   EXTRA         more arguments for `tumorlib bench` (e.g. "--loss-steps 10")
#   WHEELS        folder of .whl files installed (--no-index --target) when nibabel or nilearn is missing
#                 (default: .whl in the repository)
# CPU smoke test: DEVICE=cpu PRESET=ci SHAPE="24 48 48" VOLUMES=8 scripts/gpu_bench.sh /tmp/b.json
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-gpu_bench.json}")"
PYTHON="${PYTHON:-python}"
WORK="${WORK:-$(mktemp -d -t tumorlib-gpu-bench-XXXXXX)}"
VOLUMES="${VOLUMES:-6}"
SHAPE="${SHAPE:-155 240 240}"
DEVICE="${DEVICE:-cuda}"
PRESET="${PRESET:-full}"
STEPS="${STEPS:-20}"
COMPILE_MODE="${COMPILE_MODE:-auto}"
BUDGET_S="${BUDGET_S:-470}"
EXTRA="${EXTRA:-}"

mkdir -p "$WORK"
export TUMORLIB_HOME="$WORK/home"
unset TUMORLIB_DATA TUMORLIB_OUT TUMORLIB_CACHE
PYPATH="$REPO"

# tqdm, nibabel and kagglehub are imported only where used (tumorlib.core.progress draws no bars without
# tqdm), so the stock image's packages are enough.
WHEELS="${WHEELS:-$REPO/.whl}"
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('nibabel') and u.find_spec('nilearn')))"; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_bench.sh: nibabel or nilearn missing and no wheels in WHEELS=$WHEELS (run scripts/gpu_wheels.sh)" >&2
        exit 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl
    PYPATH="$PYPATH:$WORK/site"
fi
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

"$PYTHON" - "$DEVICE" <<'PY'
import sys
import h5py, matplotlib, numpy, pandas, scipy, torch  # noqa: F401  (the stock image's packages)
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu_bench.sh: DEVICE={device} but torch {torch.__version__} sees no CUDA device")
name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {name}")
PY

CPUS="$(nproc 2>/dev/null || echo 2)"
WORKERS=$(( CPUS > 8 ? 8 : CPUS ))
DATA="$WORK/data"
if [[ ! -f "$DATA/.gpu_bench_done_${VOLUMES}_${SHAPE// /x}" ]]; then
    echo "generating $VOLUMES synthetic volumes of ${SHAPE// /x} in $DATA ..."
    rm -rf "$DATA"
    # one process per volume group would need ids; the generator is serial: ~5-15 s per full volume
    "$PYTHON" -m tumorlib synth --out "$DATA" --volumes "$VOLUMES" --shape $SHAPE --quiet
    touch "$DATA/.gpu_bench_done_${VOLUMES}_${SHAPE// /x}"
fi
echo "data ready after ${SECONDS} s"

LEFT=$(( BUDGET_S - SECONDS ))
if (( LEFT < 60 )); then
    echo "gpu_bench.sh: only $LEFT s left of BUDGET_S=$BUDGET_S after generating the data" >&2
    exit 1
fi
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=10 "$LEFT" "$PYTHON" -m tumorlib bench --train --device "$DEVICE" \
    --preset "$PRESET" --data "$DATA" --cache "$WORK/cache" --out "$OUT" \
    --volumes 1 --repeats 1 --patches 20 --no-cold --no-build \
    --train-steps "$STEPS" --compile-mode "$COMPILE_MODE" --cache_workers "$WORKERS" $EXTRA
echo "done in ${SECONDS} s; results in $OUT (scratch: $WORK)"
