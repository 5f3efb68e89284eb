// CUDA anchor grids: one thread per (position, cell anchor) pair, torchvision's order.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../anchors.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

template <typename scalar_t>
__global__ void grid_anchors_kernel(const scalar_t* __restrict__ base, int64_t a, int64_t grid_w, int64_t total,
                                    int64_t stride_h, int64_t stride_w, scalar_t* __restrict__ out) {
  PYDET_CUDA_1D_LOOP(idx, total) {
    const int64_t p = idx / a, j = idx % a;
    const scalar_t sx = static_cast<scalar_t>((p % grid_w) * stride_w);
    const scalar_t sy = static_cast<scalar_t>((p / grid_w) * stride_h);
    out[4 * idx] = sx + base[4 * j];
    out[4 * idx + 1] = sy + base[4 * j + 1];
    out[4 * idx + 2] = sx + base[4 * j + 2];
    out[4 * idx + 3] = sy + base[4 * j + 3];
  }
}

std::vector<at::Tensor> grid_anchors_cuda(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                          at::IntArrayRef strides) {
  check_grid_anchors_args(cell_anchors, feature_sizes, strides);
  std::vector<at::Tensor> out;
  if (cell_anchors.empty()) return out;
  const c10::cuda::CUDAGuard guard(cell_anchors[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (size_t level = 0; level < cell_anchors.size(); ++level) {
    const auto base = cell_anchors[level].contiguous();
    const int64_t grid_w = feature_sizes[2 * level + 1];
    const int64_t total = feature_sizes[2 * level] * grid_w * base.size(0);
    auto anchors = at::empty({total, 4}, base.options());
    if (total > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "grid_anchors_cuda", [&] {
        grid_anchors_kernel<scalar_t><<<cuda::blocks_for(total), cuda::kThreadsPerBlock, 0, stream>>>(
            base.const_data_ptr<scalar_t>(), base.size(0), grid_w, total, strides[2 * level],
            strides[2 * level + 1], anchors.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    out.push_back(std::move(anchors));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) { m.impl("grid_anchors", &grid_anchors_cuda); }

}  // namespace pydet
