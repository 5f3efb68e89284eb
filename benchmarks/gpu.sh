#!/usr/bin/env bash
# The GPU session, in one call: on a machine with a CUDA build of torch (torchvision optional but wanted),
#   bash benchmarks/gpu.sh
# 1. records the environment;
# 2. builds pydet's CUDA kernels for this GPU's architecture only (pip editable, --no-build-isolation);
# 3. runs every CUDA test (each test whose id names cuda: CPU-vs-CUDA equality, torchvision parity on
#    CUDA, deterministic backward, autocast, no host synchronisation, CUDA graphs);
# 4. runs every CUDA benchmark (pydet against torchvision in the same process);
# 5. writes the targets table (python -m benchmarks.targets);
# 6. with time left and compute-sanitizer on PATH, a memcheck pass over the kernels' CUDA tests.
# Each stage has its own time limit (env: BUILD_S, TESTS_S, BENCH_S, SANITIZER_S) so that a slow stage
# still leaves the earlier results. Everything is written as it is produced to $OUT when that is set
# (the device tool returns it), else to benchmarks/results/: gpu-<device>.json, gpu-<device>-targets.md,
# gpu-logs/. FULL=1 afterwards runs the whole suite and every benchmark, CPU ones included; the training
# tests in it need pydet's dependencies (tqdm, safetensors), which a bare GPU machine may lack.
# Rehearsal without a GPU (plumbing only; every CUDA test and benchmark skips): REHEARSAL=1, with
# BENCH_SELECT="cuda or test_nms" to give the targets stage some results.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results}
LOGS=$DEST/gpu-logs
mkdir -p "$LOGS"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0
stage() { echo "== $(date +%T) $*" | tee -a "$LOGS/stages.log"; }

stage "environment"
# One look at the machine: the log for a person, "<device-slug> <major.minor>" on stdout for the build.
DEVICE=$(ENV_LOG="$LOGS/env.log" $PYTHON - <<'EOF'
import os, re, sys, torch
lines = [f"torch {torch.__version__} cuda {torch.version.cuda} cpus {os.cpu_count()}"]
if torch.cuda.is_available():
    name, (major, minor) = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    lines.append(f"device {name} sm_{major}{minor}")
elif os.environ.get("REHEARSAL"):
    name, (major, minor) = "rehearsal-cpu", (9, 0)
else:
    sys.exit("no CUDA device visible to torch " + torch.__version__)
try:
    import torchvision
    lines.append(f"torchvision {torchvision.__version__}")
except Exception as exc:  # the torchvision comparisons skip without it
    lines.append(f"torchvision unavailable: {exc}")
with open(os.environ["ENV_LOG"], "w") as log:
    log.write("\n".join(lines) + "\n")
print("\n".join(lines), file=sys.stderr)
print(re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-"), f"{major}.{minor}")
EOF
) || exit 1
read -r SLUG ARCH <<<"$DEVICE"
RESULT=$DEST/gpu-$SLUG.json

stage "build for sm_$ARCH with $MAX_JOBS jobs"
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH
timeout "${BUILD_S:-300}" $PYTHON -m pip install --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1
build_rc=$?
[ "$build_rc" -eq 124 ] && { echo "build timed out after ${BUILD_S:-300} s (log: $LOGS/build.log)"; exit 1; }
if [ "$build_rc" -ne 0 ]; then
  # An old pip/setuptools without PEP 660 editable installs: build the extension in place instead.
  stage "pip editable install failed; setup.py build_ext --inplace"
  timeout "${BUILD_S:-300}" $PYTHON setup.py build_ext --inplace >>"$LOGS/build.log" 2>&1 || {
    tail -n 40 "$LOGS/build.log"; echo "build failed (log: $LOGS/build.log)"; exit 1; }
fi
$PYTHON - <<'EOF' 2>&1 | tee -a "$LOGS/build.log"
import torch, pydet
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pydet::"))
has = torch._C._dispatch_has_kernel_for_dispatch_key
missing = [n for n in names if not (has(n, "CUDA") or has(n, "CompositeExplicitAutograd"))]
print(f"pydet {pydet.__file__}: {len(names)} ops, {len(names) - len(missing)} with a CUDA or composite kernel")
if missing:
    raise SystemExit(f"no CUDA kernel for {missing}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

stage "CUDA tests"
timeout "${TESTS_S:-240}" $PYTHON -m pytest tests benchmarks -k cuda -q -rfEs --benchmark-disable \
  --junitxml="$LOGS/tests-cuda.xml" -p no:cacheprovider >"$LOGS/tests-cuda.log" 2>&1 || status=1
tail -n 25 "$LOGS/tests-cuda.log"

stage "CUDA benchmarks"
timeout "${BENCH_S:-300}" $PYTHON -m pytest benchmarks -k "${BENCH_SELECT:-cuda}" -q --benchmark-only --benchmark-json="$RESULT" \
  --benchmark-max-time=0.5 -p no:cacheprovider >"$LOGS/benchmarks-cuda.log" 2>&1 || status=1
tail -n 5 "$LOGS/benchmarks-cuda.log"

stage "targets"
if [ -f "$RESULT" ]; then
  $PYTHON -m benchmarks.targets "$RESULT" --markdown "$DEST/gpu-$SLUG-targets.md" || status=1
else
  echo "no benchmark results at $RESULT"; status=1
fi

if command -v compute-sanitizer >/dev/null 2>&1; then
  stage "compute-sanitizer memcheck"
  timeout "${SANITIZER_S:-120}" compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
    $PYTHON -m pytest tests/ops -k cuda -x -q -p no:cacheprovider >"$LOGS/memcheck.log" 2>&1 || status=1
  tail -n 15 "$LOGS/memcheck.log"
fi

if [ -n "${FULL:-}" ]; then
  stage "the whole suite and every benchmark"
  $PYTHON -m pytest tests -q -rfE -p no:cacheprovider >"$LOGS/tests-all.log" 2>&1 || status=1
  $PYTHON -m pytest benchmarks -q --benchmark-only --benchmark-json="$DEST/gpu-$SLUG-all.json" \
    -p no:cacheprovider >"$LOGS/benchmarks-all.log" 2>&1 || status=1
fi
stage "done, status $status"
exit $status
