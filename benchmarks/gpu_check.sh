#!/usr/bin/env bash
# benchmarks/gpu_check.sh -- ONE command on a machine with a GPU:
#   1. builds fairattack in place with its CUDA kernels for this GPU (build_ext --inplace),
#   2. runs the CUDA tests (pytest -m cuda, and -k cuda in tests/test_api.py),
#   3. runs benchmarks/gpu_check.py: CUDA against CPU on a real model, and the timing table.
# Needs python3 with torch, numpy and pytest (timm, torchvision, torchattacks optional), a C++
# compiler and nvcc (without nvcc the extension is built without kernels: the model still runs on
# the GPU, the attack's state on the host; the table says so). No network.
# Writes gpu_check.md (and the logs) to $OUT if set, else to the current folder. Each step has a
# time budget; the whole run stays under 8 minutes.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${OUT:-$PWD}"
PY="${PYTHON:-python3}"
START=$(date +%s)
LIMIT=${GPU_CHECK_SECONDS:-470}
mkdir -p "$DEST"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

say() { echo "[gpu_check $(($(date +%s) - START)) s] $*"; }
left() { echo $((LIMIT - ($(date +%s) - START))); }
budget() { local want=$1 rest; rest=$(left); echo $((want < rest ? want : (rest > 1 ? rest : 1))); }

# 1. build: kernels for this GPU's architecture only (fast); TORCH_CUDA_ARCH_LIST overrides
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
if [ -z "$ARCH" ]; then
    echo "gpu_check: torch sees no CUDA device (for the CPU dry run: python3 benchmarks/gpu_check.py --dry-run)" >&2
    exit 2
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
say "building in place for compute capability $TORCH_CUDA_ARCH_LIST"
if ! timeout "$(budget 210)" "$PY" setup.py -q build_ext --inplace \
        > "$DEST/gpu_check_build.log" 2>&1; then
    tail -30 "$DEST/gpu_check_build.log"
    echo "gpu_check: the build failed (log: $DEST/gpu_check_build.log)" >&2
    exit 1
fi
say "built: $("$PY" -c 'import fairattack._core as c; print("CUDA kernels" if c.cuda_available() else "no CUDA kernels")' 2>&1 | tail -1)"

# 2. the CUDA tests
NOTES=()
run_tests() { # label, then pytest arguments
    local label=$1 line
    shift
    timeout "$(budget 75)" "$PY" benchmarks/gpu_check.py --pytest -q -p no:cacheprovider "$@" \
        > "$DEST/gpu_check_$label.log" 2>&1
    line=$(grep -E "passed|failed|error|no tests ran" "$DEST/gpu_check_$label.log" | tail -1)
    say "$label: ${line:-timed out or crashed (see gpu_check_$label.log)}"
    NOTES+=(--note "CUDA tests, $label: ${line:-timed out or crashed}")
}
run_tests cuda_tests -m cuda tests/test_shim.py
run_tests api_cuda_tests -k cuda tests/test_api.py

# 3. CUDA against CPU and the timings
REST=$(left)
say "gpu_check.py with $((REST - 15)) s"
timeout "$((REST > 20 ? REST - 5 : 15))" "$PY" benchmarks/gpu_check.py --budget "$((REST > 40 ? REST - 30 : 10))" \
    --out "$DEST/gpu_check.md" "${NOTES[@]}"
RC=$?
say "done (exit $RC); table: $DEST/gpu_check.md"
exit $RC
