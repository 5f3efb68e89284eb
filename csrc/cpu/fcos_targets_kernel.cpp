// CPU FCOS target assignment (AdelaiDet semantics, see ../fcos_targets.h): parallel over points, each
// point scans the image's boxes, so memory is O(L + M) whatever L x M is.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../fcos_targets.h"

namespace pydet {
namespace {

using Targets = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Assigns every point of one image to its boxes [num_boxes, 4].
template <typename scalar_t>
void assign_image(const scalar_t* points, const scalar_t* strides, const scalar_t* size_ranges, int64_t num_points,
                  const scalar_t* gt_boxes, const int64_t* gt_labels, int64_t num_boxes, int64_t num_classes,
                  double radius, int64_t* labels, scalar_t* reg, int64_t* matched) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<FcosBox<acc_t>> boxes(num_boxes);
  for (int64_t j = 0; j < num_boxes; ++j) boxes[j] = make_fcos_box<acc_t>(gt_boxes + 4 * j);
  const bool center_sampling = radius > 0;
  at::parallel_for(0, num_points, std::max<int64_t>(1, 8192 / std::max<int64_t>(num_boxes, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const FcosPoint<acc_t> p{points[2 * i], points[2 * i + 1],
                               static_cast<acc_t>(radius * static_cast<double>(strides[i])), size_ranges[2 * i],
                               size_ranges[2 * i + 1]};
      int64_t best = -1;
      acc_t best_area = 0;
      for (int64_t j = 0; j < num_boxes; ++j) {
        if (fcos_is_candidate(p, boxes[j], center_sampling) && fcos_is_better(boxes[j].area, best, best_area)) {
          best = j;
          best_area = boxes[j].area;
        }
      }
      const FcosBox<acc_t> none{};
      fcos_write_targets(p, best >= 0 ? boxes[best] : none, best, best >= 0 ? gt_labels[best] : 0, num_classes,
                         labels + i, reg + 4 * i, matched + i);
    }
  });
}

// A label outside [0, num_classes) would pass through to the targets (or read as "unmatched" when it
// equals num_classes): refused, for the real boxes of each image.
void check_labels_in_range(const at::Tensor& gt_labels, const std::vector<int64_t>& num_gt, int64_t num_classes) {
  const int64_t max_boxes = gt_labels.size(1);
  const int64_t* data = gt_labels.const_data_ptr<int64_t>();
  for (size_t b = 0; b < num_gt.size(); ++b) {
    for (int64_t m = 0; m < num_gt[b]; ++m) {
      const int64_t label = data[b * max_boxes + m];
      TORCH_CHECK_VALUE(label >= 0 && label < num_classes, "gt_labels must be in [0, num_classes) = [0, ",
                        num_classes, "), got ", label);
    }
  }
}

// Both ops: gt_boxes [B, M, 4], gt_labels [B, M], and per image the number of real boxes.
Targets assign_batch(const at::Tensor& points_in, const at::Tensor& strides_in, const at::Tensor& size_ranges_in,
                     const at::Tensor& gt_boxes_in, const at::Tensor& gt_labels_in, const std::vector<int64_t>& num_gt,
                     int64_t num_classes, double radius) {
  const auto points = points_in.contiguous(), strides = strides_in.contiguous();
  const auto size_ranges = size_ranges_in.contiguous(), gt_boxes = gt_boxes_in.contiguous();
  const auto gt_labels = gt_labels_in.contiguous();
  check_labels_in_range(gt_labels, num_gt, num_classes);
  const int64_t batch = gt_boxes.size(0), max_boxes = gt_boxes.size(1), num_points = points.size(0);
  auto labels = at::empty({batch, num_points}, gt_labels.options());
  auto reg = at::empty({batch, num_points, 4}, points.options());
  auto matched = at::empty({batch, num_points}, gt_labels.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(), "fcos_targets_cpu", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      assign_image<scalar_t>(points.const_data_ptr<scalar_t>(), strides.const_data_ptr<scalar_t>(),
                             size_ranges.const_data_ptr<scalar_t>(), num_points,
                             gt_boxes.const_data_ptr<scalar_t>() + b * max_boxes * 4,
                             gt_labels.const_data_ptr<int64_t>() + b * max_boxes, num_gt[b], num_classes, radius,
                             labels.mutable_data_ptr<int64_t>() + b * num_points,
                             reg.mutable_data_ptr<scalar_t>() + b * num_points * 4,
                             matched.mutable_data_ptr<int64_t>() + b * num_points);
    }
  });
  return {labels, reg, matched};
}

Targets fcos_targets_cpu(const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges,
                         const at::Tensor& gt_boxes, const at::Tensor& gt_labels, int64_t num_classes,
                         double center_sampling_radius) {
  check_fcos_targets_args(points, strides, size_ranges, gt_boxes, gt_labels, nullptr, num_classes,
                          center_sampling_radius);
  auto [labels, reg, matched] = assign_batch(points, strides, size_ranges, gt_boxes.unsqueeze(0),
                                             gt_labels.unsqueeze(0), {gt_boxes.size(0)}, num_classes,
                                             center_sampling_radius);
  return {labels.squeeze(0), reg.squeeze(0), matched.squeeze(0)};
}

Targets fcos_targets_batched_cpu(const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges,
                                 const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& num_gt,
                                 int64_t num_classes, double center_sampling_radius) {
  check_fcos_targets_args(points, strides, size_ranges, gt_boxes, gt_labels, &num_gt, num_classes,
                          center_sampling_radius);
  const auto counts_tensor = num_gt.contiguous();
  const int64_t* counts = counts_tensor.const_data_ptr<int64_t>();
  const std::vector<int64_t> counts_vec(counts, counts + counts_tensor.numel());
  for (const int64_t count : counts_vec) {
    TORCH_CHECK_VALUE(count >= 0 && count <= gt_boxes.size(1), "num_gt must be in [0, M] = [0, ", gt_boxes.size(1),
                      "], got ", count);
  }
  return assign_batch(points, strides, size_ranges, gt_boxes, gt_labels, counts_vec, num_classes,
                      center_sampling_radius);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) {
  m.impl("fcos_targets", &fcos_targets_cpu);
  m.impl("fcos_targets_batched", &fcos_targets_batched_cpu);
}

}  // namespace pydet
