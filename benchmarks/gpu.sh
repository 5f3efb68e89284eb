#!/usr/bin/env bash
# On a GPU machine (CUDA build of torch, torchvision installed): build pydet's CUDA kernels in place, run
# the whole test suite (CUDA tests included) and every benchmark in benchmarks/, in one go.
#   bash benchmarks/gpu.sh
# Results: benchmarks/results/gpu-h100.json (RESULT=... to rename), plus the logs; all are copied into
# $OUT when that variable is set. Exits non-zero if the build, the tests or the benchmarks failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULT=${RESULT:-benchmarks/results/gpu-h100.json}
LOGS=benchmarks/results/gpu-logs
mkdir -p "$(dirname "$RESULT")" "$LOGS"

copy_out() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -r "$LOGS" "$OUT"/ 2>/dev/null || true
    [ -f "$RESULT" ] && cp "$RESULT" "$OUT"/
  fi
}
trap copy_out EXIT

$PYTHON - <<'EOF' 2>&1 | tee "$LOGS/env.log"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("device", torch.cuda.get_device_name())
try:
    import torchvision
    print("torchvision", torchvision.__version__)
except Exception as exc:  # the torchvision comparisons skip without it
    print("torchvision unavailable:", exc)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $PYTHON setup.py build_ext --inplace >"$LOGS/build.log" 2>&1 || {
  tail -n 40 "$LOGS/build.log"; echo "build failed (log: $LOGS/build.log)"; exit 1; }

status=0
$PYTHON -m pytest tests -q -rs 2>&1 | tee "$LOGS/tests.log" || status=1
$PYTHON -m pytest benchmarks --benchmark-only --benchmark-json="$RESULT" -q 2>&1 | tee "$LOGS/benchmarks.log" || status=1
exit $status
