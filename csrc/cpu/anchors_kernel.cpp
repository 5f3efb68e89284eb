// Anchor grids (torchvision AnchorGenerator order: position-major, then cell anchor) and the
// point grids of anchor-free heads (FCOS, YOLO).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <torch/library.h>

#include <vector>

#include "../anchors.h"

namespace pydet {
namespace {

std::vector<at::Tensor> grid_anchors_cpu(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                         at::IntArrayRef strides) {
  check_grid_anchors_args(cell_anchors, feature_sizes, strides);
  std::vector<at::Tensor> out;
  out.reserve(cell_anchors.size());
  for (size_t level = 0; level < cell_anchors.size(); ++level) {
    const auto base = cell_anchors[level].contiguous();
    const int64_t grid_h = feature_sizes[2 * level], grid_w = feature_sizes[2 * level + 1];
    const int64_t stride_h = strides[2 * level], stride_w = strides[2 * level + 1];
    const int64_t a = base.size(0), positions = grid_h * grid_w;
    auto anchors = at::empty({positions * a, 4}, base.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "grid_anchors_cpu", [&] {
      const scalar_t* b = base.const_data_ptr<scalar_t>();
      scalar_t* o = anchors.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, positions, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          // torchvision adds integer shifts to the (float) cell anchors, in the anchors' dtype.
          const scalar_t sx = static_cast<scalar_t>((p % grid_w) * stride_w);
          const scalar_t sy = static_cast<scalar_t>((p / grid_w) * stride_h);
          for (int64_t j = 0; j < a; ++j) {
            scalar_t* oj = o + (p * a + j) * 4;
            oj[0] = sx + b[4 * j];
            oj[1] = sy + b[4 * j + 1];
            oj[2] = sx + b[4 * j + 2];
            oj[3] = sy + b[4 * j + 3];
          }
        }
      });
    });
    out.push_back(std::move(anchors));
  }
  return out;
}

}  // namespace

// Point grids are tiny and device-agnostic: built from ATen factory ops, so one implementation
// serves every backend (and the meta device).
std::vector<at::Tensor> grid_points(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                                    at::ArrayRef<double> offsets, std::optional<at::ScalarType> dtype,
                                    std::optional<at::Device> device) {
  TORCH_CHECK_VALUE(feature_sizes.size() % 2 == 0, "feature_sizes must hold (height, width) pairs");
  TORCH_CHECK_VALUE(strides.size() == feature_sizes.size(),
                    "strides must hold one (stride_h, stride_w) pair per level, got ", strides.size() / 2,
                    " pairs for ", feature_sizes.size() / 2, " levels");
  TORCH_CHECK_VALUE(offsets.size() * 2 == feature_sizes.size(), "offsets must hold one value per level, got ",
                    offsets.size(), " for ", feature_sizes.size() / 2, " levels");
  const auto options = at::TensorOptions().dtype(dtype.value_or(at::kFloat)).device(device.value_or(at::kCPU));
  TORCH_CHECK_VALUE(at::isFloatingType(options.dtype().toScalarType()), "dtype must be floating point");
  std::vector<at::Tensor> out;
  for (size_t level = 0; level < offsets.size(); ++level) {
    const int64_t h = feature_sizes[2 * level], w = feature_sizes[2 * level + 1];
    TORCH_CHECK_VALUE(h >= 0 && w >= 0, "feature_sizes must be non-negative, got (", h, ", ", w, ")");
    const auto xs = at::arange(w, options).mul_(static_cast<double>(strides[2 * level + 1])).add_(offsets[level]);
    const auto ys = at::arange(h, options).mul_(static_cast<double>(strides[2 * level])).add_(offsets[level]);
    out.push_back(at::stack({xs.repeat({h}), ys.repeat_interleave(w)}, 1));
  }
  return out;
}

TORCH_LIBRARY_IMPL(pydet, CPU, m) { m.impl("grid_anchors", &grid_anchors_cpu); }

TORCH_LIBRARY_IMPL(pydet, CompositeExplicitAutograd, m) { m.impl("grid_points", &grid_points); }

}  // namespace pydet
