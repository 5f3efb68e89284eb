// CUDA FCOS target assignment (AdelaiDet semantics, see ../fcos_targets.h): one thread per point;
// a block stages its image's boxes in shared memory kBoxTile at a time, so any M works with a fixed
// shared buffer. Batched images run on grid.y and read num_gt on the device (no host sync).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../fcos_targets.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

using Targets = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

constexpr int kBoxTile = 256;

// num_gt == nullptr means every image uses all max_boxes rows; device counts are clamped to [0, M]
// because checking them would need a host synchronisation (the CPU kernel raises instead). Labels are
// checked before the launch, by assert_labels_in_range.
template <typename scalar_t>
__global__ void fcos_targets_kernel(const scalar_t* __restrict__ points, const scalar_t* __restrict__ strides,
                                    const scalar_t* __restrict__ size_ranges, int64_t num_points,
                                    const scalar_t* __restrict__ gt_boxes, const int64_t* __restrict__ gt_labels,
                                    const int64_t* __restrict__ num_gt, int64_t batch, int64_t max_boxes,
                                    int64_t num_classes, double radius, int64_t* __restrict__ labels,
                                    scalar_t* __restrict__ reg, int64_t* __restrict__ matched) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ FcosBox<acc_t> tile[kBoxTile];
  const bool center_sampling = radius > 0;
  for (int64_t image = blockIdx.y; image < batch; image += gridDim.y) {
    const int64_t count = num_gt == nullptr ? max_boxes : min(max(num_gt[image], int64_t(0)), max_boxes);
    const scalar_t* boxes = gt_boxes + image * max_boxes * 4;
    // The loop bound is the same for the whole block, so every thread reaches every __syncthreads.
    for (int64_t first_point = static_cast<int64_t>(blockIdx.x) * blockDim.x; first_point < num_points;
         first_point += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = first_point + threadIdx.x;
      const bool active = i < num_points;
      FcosPoint<acc_t> p{};
      if (active) {
        p = {points[2 * i], points[2 * i + 1], static_cast<acc_t>(radius * static_cast<double>(strides[i])),
             size_ranges[2 * i], size_ranges[2 * i + 1]};
      }
      int64_t best = -1;
      FcosBox<acc_t> best_box{};
      for (int64_t tile_start = 0; tile_start < count; tile_start += kBoxTile) {
        const int64_t tile_size = min(static_cast<int64_t>(kBoxTile), count - tile_start);
        __syncthreads();  // the previous tile is no longer read
        for (int64_t j = threadIdx.x; j < tile_size; j += blockDim.x) {
          tile[j] = make_fcos_box<acc_t>(boxes + 4 * (tile_start + j));
        }
        __syncthreads();
        if (active) {
          for (int64_t j = 0; j < tile_size; ++j) {
            const FcosBox<acc_t> box = tile[j];
            if (fcos_is_candidate(p, box, center_sampling) && fcos_is_better(box.area, best, best_box.area)) {
              best = tile_start + j;
              best_box = box;
            }
          }
        }
      }
      if (active) {
        const int64_t out = image * num_points + i;
        fcos_write_targets(p, best_box, best, best >= 0 ? gt_labels[image * max_boxes + best] : 0, num_classes,
                           labels + out, reg + 4 * out, matched + out);
      }
    }
  }
}

// The CPU kernel raises a ValueError for a real box's label outside [0, num_classes). Here the same check
// runs on the device as an asynchronous assertion (torch._assert_async): no host synchronisation, and a bad
// label fails the CUDA stream (a device-side assert, as an out-of-range index does in torch) instead of being
// written into the targets. Padding rows past num_gt[b] are not checked.
void assert_labels_in_range(const at::Tensor& gt_labels, const at::Tensor& num_gt, int64_t num_classes) {
  if (gt_labels.numel() == 0) return;
  auto out_of_range = gt_labels.lt(0).logical_or_(gt_labels.ge(num_classes));
  if (num_gt.defined()) {
    const auto rows = at::arange(gt_labels.size(1), gt_labels.options()).unsqueeze(0);
    out_of_range.logical_and_(rows.lt(num_gt.unsqueeze(1)));
  }
  at::_assert_async(out_of_range.any().logical_not(), "fcos_targets: gt_labels must be in [0, num_classes)");
}

Targets assign_batch(const at::Tensor& points_in, const at::Tensor& strides_in, const at::Tensor& size_ranges_in,
                     const at::Tensor& gt_boxes_in, const at::Tensor& gt_labels_in, const at::Tensor* num_gt_in,
                     int64_t num_classes, double radius) {
  const c10::cuda::CUDAGuard guard(points_in.device());
  const auto points = points_in.contiguous(), strides = strides_in.contiguous();
  const auto size_ranges = size_ranges_in.contiguous(), gt_boxes = gt_boxes_in.contiguous();
  const auto gt_labels = gt_labels_in.contiguous();
  const auto num_gt = num_gt_in ? num_gt_in->contiguous() : at::Tensor();
  const int64_t batch = gt_boxes.size(0), max_boxes = gt_boxes.size(1), num_points = points.size(0);
  auto labels = at::empty({batch, num_points}, gt_labels.options());
  auto reg = at::empty({batch, num_points, 4}, points.options());
  auto matched = at::empty({batch, num_points}, gt_labels.options());
  if (batch == 0 || num_points == 0) return {labels, reg, matched};
  assert_labels_in_range(gt_labels, num_gt, num_classes);
  const dim3 grid(cuda::blocks_for(num_points), static_cast<unsigned int>(std::min<int64_t>(batch, 65535)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(), "fcos_targets_cuda", [&] {
    fcos_targets_kernel<scalar_t><<<grid, cuda::kThreadsPerBlock, 0, stream>>>(
        points.const_data_ptr<scalar_t>(), strides.const_data_ptr<scalar_t>(), size_ranges.const_data_ptr<scalar_t>(),
        num_points, gt_boxes.const_data_ptr<scalar_t>(), gt_labels.const_data_ptr<int64_t>(),
        num_gt.defined() ? num_gt.const_data_ptr<int64_t>() : nullptr, batch, max_boxes, num_classes, radius,
        labels.mutable_data_ptr<int64_t>(), reg.mutable_data_ptr<scalar_t>(), matched.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, reg, matched};
}

Targets fcos_targets_cuda(const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges,
                          const at::Tensor& gt_boxes, const at::Tensor& gt_labels, int64_t num_classes,
                          double center_sampling_radius) {
  check_fcos_targets_args(points, strides, size_ranges, gt_boxes, gt_labels, nullptr, num_classes,
                          center_sampling_radius);
  auto [labels, reg, matched] = assign_batch(points, strides, size_ranges, gt_boxes.unsqueeze(0),
                                             gt_labels.unsqueeze(0), nullptr, num_classes, center_sampling_radius);
  return {labels.squeeze(0), reg.squeeze(0), matched.squeeze(0)};
}

Targets fcos_targets_batched_cuda(const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges,
                                  const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& num_gt,
                                  int64_t num_classes, double center_sampling_radius) {
  check_fcos_targets_args(points, strides, size_ranges, gt_boxes, gt_labels, &num_gt, num_classes,
                          center_sampling_radius);
  return assign_batch(points, strides, size_ranges, gt_boxes, gt_labels, &num_gt, num_classes,
                      center_sampling_radius);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) {
  m.impl("fcos_targets", &fcos_targets_cuda);
  m.impl("fcos_targets_batched", &fcos_targets_batched_cuda);
}

}  // namespace pydet
