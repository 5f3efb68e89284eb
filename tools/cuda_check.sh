#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 against the installed torch's headers.
# The CPU wheel has no CUDA libraries to link against, so this is a compile (and ptxas) check; any
# error fails it. Prints ptxas register/spill lines so regressions in register pressure show up.
# The device code goes through the front end once (compute_80 PTX, the oldest target, so no newer
# feature slips in) and ptxas assembles that PTX for both sm_80 and sm_90: a second front-end pass
# would double the check's time for no new diagnostic (no kernel branches on __CUDA_ARCH__ >= 900).
# nvcc's -O is the host compiler's level: the host objects are thrown away, so -O0 (device code is
# optimised by cicc and ptxas whatever -O says: the register counts are the -O3 build's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
OUT=.cuda-check
mkdir -p "$OUT"
INCLUDES=$($PYTHON -c "import sysconfig, torch.utils.cpp_extension as c; \
print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))")
# torch's own nvcc flags (no implicit half conversions, --expt-relaxed-constexpr) so that this compiles what setup.py compiles.
TORCH_NVCC_FLAGS=$($PYTHON -c "import torch.utils.cpp_extension as c; print(' '.join(c.COMMON_NVCC_FLAGS))")
FLAGS="$TORCH_NVCC_FLAGS -std=c++20 -O0 --fmad=false -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -Xptxas -v \
-gencode arch=compute_80,code=[sm_80,sm_90] -Xcompiler -fPIC -w"
export NVCC FLAGS INCLUDES OUT PYTHON
compile_one() {
  local src=$1 log="$OUT/$(basename "$1" .cu).log"
  if ! $NVCC $FLAGS $INCLUDES -c "$src" -o "$OUT/$(basename "$src" .cu).o" >"$log" 2>&1; then
    echo "FAILED: $src"; grep -E "error" "$log" | head -20; return 1
  fi
  echo "ok: $src"
  $PYTHON tools/ptxas_summary.py "$log"
}
export -f compile_one
# Largest first, so that the two workers finish together.
ls -S csrc/cuda/*.cu | xargs -P "${MAX_JOBS:-2}" -I{} bash -c 'compile_one {}'
echo "CUDA compile check passed: $(ls csrc/cuda/*.cu | wc -l) files for sm_80 and sm_90"
