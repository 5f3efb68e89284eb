#!/usr/bin/env bash
# On a CPU machine with a python that has torch + torchvision (e.g. a venv; never pip-install a second
# torch into it): build pydet's CPU kernels in place against that torch, run the tests that compare with
# torchvision, then the kernel and R-CNN benchmarks that time pydet and torchvision in the same process.
#   bash benchmarks/torchvision_cpu.sh [PYTHON]          (or PYTHON=... bash benchmarks/torchvision_cpu.sh)
# THREADS (default 1) pins torch's threads for the tests and the benchmarks; MAX_JOBS (default 1) the
# build. Results: benchmarks/results/cpu-vs-torchvision-${THREADS}thread.json (RESULT=... to rename) and
# the logs in benchmarks/results/torchvision-cpu-logs. Exits non-zero if the build, the tests or the
# benchmarks failed. The float64 reference rows are left out (they are timed by the plain CPU runs).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-${PYTHON:-python}}
THREADS=${THREADS:-1}
RESULT=${RESULT:-benchmarks/results/cpu-vs-torchvision-${THREADS}thread.json}
LOGS=benchmarks/results/torchvision-cpu-logs
mkdir -p "$(dirname "$RESULT")" "$LOGS"
export OMP_NUM_THREADS=$THREADS PYDET_BENCH_THREADS=$THREADS

$PYTHON - <<'EOF' 2>&1 | tee "$LOGS/env.log"
import os, platform
import torch
import torchvision  # the point of this script: fail early without it
print("torch", torch.__version__, "torchvision", torchvision.__version__, "threads", torch.get_num_threads())
print("cpu", platform.processor() or platform.machine(), "cores", os.cpu_count(), "load", os.getloadavg())
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "$PYTHON: torch and torchvision must both import"; exit 1; }

FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-1} $PYTHON setup.py build_ext --inplace >"$LOGS/build.log" 2>&1 || {
  tail -n 40 "$LOGS/build.log"; echo "build failed (log: $LOGS/build.log)"; exit 1; }

status=0
$PYTHON -m pytest -q -rs -p no:cacheprovider tests/models/test_rcnn_torchvision.py tests/ops tests/models/test_rcnn.py \
  tests/modeling/test_backbone.py tests/modeling/test_poolers.py 2>&1 | tee "$LOGS/tests.log" || status=1
$PYTHON -m pytest -q -p no:cacheprovider benchmarks/test_bench_nms.py benchmarks/test_bench_roi_align.py \
  benchmarks/test_bench_paste_masks.py benchmarks/test_bench_boxes.py benchmarks/test_bench_rcnn.py \
  --benchmark-only -k "not reference" --benchmark-json="$RESULT" 2>&1 | tee "$LOGS/benchmarks.log" || status=1
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOGS/benchmarks.log"
exit $status
