// Launch helpers shared by pydet's CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace pydet::cuda {

constexpr int kThreadsPerBlock = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n elements; capped so huge n still launches.
inline unsigned int blocks_for(int64_t n, int threads = kThreadsPerBlock) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(ceil_div(n, threads), 1), 65535 * 8));
}

}  // namespace pydet::cuda

// Grid-stride loop with 64-bit indices, so tensors past 2^31 elements are safe.
#define PYDET_CUDA_1D_LOOP(i, n)                                                                    \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);             \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
