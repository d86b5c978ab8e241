#!/usr/bin/env bash
# benchmarks/gpu_check.sh -- ONE command on a machine with a GPU:
#   1. rebuilds fairattack in place with its CUDA kernels for this GPU (FAIRATTACK_CUDA=1,
#      build_ext --inplace --force: the machine keeps build outputs between calls, and a header
#      or arch-list change must not leave a stale build), and fails unless _core has the kernels,
#   2. runs the backend conformance suite (tests/test_conformance.py: CUDA against CPU) and the
#      CUDA tests (pytest -m cuda, and -k cuda in tests/test_api.py),
#   3. runs benchmarks/gpu_check.py: it judges those pytest runs, checks CUDA against CPU on a
#      real model and writes the timing table.
# Exits non-zero on any failure: a build without kernels, a failed, erroring, crashed or
# timed-out test run, a run where nothing passed, a FAIL in the parity table.
# Needs python3 with torch, numpy and pytest (timm, torchvision, torchattacks optional), a C++
# compiler and nvcc. No network.
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
if ! FAIRATTACK_CUDA=1 timeout "$(budget 210)" "$PY" setup.py -q build_ext --inplace --force \
        > "$DEST/gpu_check_build.log" 2>&1; then
    tail -30 "$DEST/gpu_check_build.log"
    echo "gpu_check: FAIL: the build failed (log: $DEST/gpu_check_build.log)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys, fairattack._core as c; sys.exit(0 if c.WITH_CUDA and c.cuda_available() else 1)'; then
    echo "gpu_check: FAIL: fairattack._core has no CUDA kernels or sees no GPU after the build" >&2
    exit 1
fi
say "built with CUDA kernels"

# 2. the conformance suite and the CUDA tests; gpu_check.py judges each run
TESTS=()
run_tests() { # label, then pytest arguments
    local label=$1 rc
    shift
    timeout "$(budget 90)" "$PY" benchmarks/gpu_check.py --pytest -q -p no:cacheprovider "$@" \
        > "$DEST/gpu_check_$label.log" 2>&1
    rc=$?
    say "$label: exit $rc, $(grep -E "passed|failed|error|no tests ran" "$DEST/gpu_check_$label.log" | tail -1)"
    TESTS+=(--tests "$label" "$rc" "$DEST/gpu_check_$label.log")
}
run_tests conformance tests/test_conformance.py
run_tests cuda_tests -m cuda tests/test_shim.py
run_tests api_cuda_tests -k cuda tests/test_api.py

# 3. CUDA against CPU and the timings
REST=$(left)
say "gpu_check.py with $((REST - 15)) s"
timeout "$((REST > 20 ? REST - 5 : 15))" "$PY" benchmarks/gpu_check.py --budget "$((REST > 40 ? REST - 30 : 10))" \
    --out "$DEST/gpu_check.md" "${TESTS[@]}"
RC=$?
say "done (exit $RC); table: $DEST/gpu_check.md"
exit $RC
