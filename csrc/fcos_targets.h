// FCOS target assignment shared by the CPU and CUDA kernels: argument checks and the per-(point, box)
// test, following AdelaiDet's FCOSOutputs.compute_targets_for_locations and get_sample_region.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace pydet {

// gt_boxes is [M, 4] and gt_labels [M] (batched: [B, M, 4], [B, M] and num_gt [B]).
inline void check_fcos_targets_args(const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges,
                                    const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                                    const at::Tensor* num_gt, int64_t num_classes, double radius) {
  const bool batched = num_gt != nullptr;
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 2, "points must have shape [L, 2], got ", points.sizes());
  check_floating(points, "points");
  const int64_t num_points = points.size(0);
  TORCH_CHECK_VALUE(strides.dim() == 1 && strides.size(0) == num_points, "strides must have shape [L] = [",
                    num_points, "], got ", strides.sizes());
  TORCH_CHECK_VALUE(size_ranges.dim() == 2 && size_ranges.size(0) == num_points && size_ranges.size(1) == 2,
                    "size_ranges must have shape [L, 2] = [", num_points, ", 2], got ", size_ranges.sizes());
  if (batched) {
    TORCH_CHECK_VALUE(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, "gt_boxes must have shape [B, M, 4], got ",
                      gt_boxes.sizes());
    TORCH_CHECK_VALUE(gt_labels.dim() == 2 && gt_labels.size(0) == gt_boxes.size(0) &&
                          gt_labels.size(1) == gt_boxes.size(1),
                      "gt_labels must have shape [B, M] matching gt_boxes ", gt_boxes.sizes(), ", got ",
                      gt_labels.sizes());
    TORCH_CHECK_VALUE(num_gt->dim() == 1 && num_gt->size(0) == gt_boxes.size(0), "num_gt must have shape [B] = [",
                      gt_boxes.size(0), "], got ", num_gt->sizes());
    TORCH_CHECK_VALUE(num_gt->scalar_type() == at::kLong, "num_gt must be int64, got ", num_gt->scalar_type());
    check_same_device(points, "points", *num_gt, "num_gt");
  } else {
    check_boxes(gt_boxes, "gt_boxes");
    TORCH_CHECK_VALUE(gt_labels.dim() == 1 && gt_labels.size(0) == gt_boxes.size(0),
                      "gt_labels must have shape [M] = [", gt_boxes.size(0), "], got ", gt_labels.sizes());
  }
  TORCH_CHECK_VALUE(gt_labels.scalar_type() == at::kLong, "gt_labels must be int64, got ", gt_labels.scalar_type());
  check_same_dtype(points, "points", strides, "strides");
  check_same_dtype(points, "points", size_ranges, "size_ranges");
  check_same_dtype(points, "points", gt_boxes, "gt_boxes");
  check_same_device(points, "points", strides, "strides");
  check_same_device(points, "points", size_ranges, "size_ranges");
  check_same_device(points, "points", gt_boxes, "gt_boxes");
  check_same_device(points, "points", gt_labels, "gt_labels");
  TORCH_CHECK_VALUE(num_classes >= 0, "num_classes must be non-negative, got ", num_classes);
  TORCH_CHECK_VALUE(std::isfinite(radius) && radius >= 0, "center_sampling_radius must be finite and >= 0, got ",
                    radius);
}

// One ground-truth box with what every point's test needs, computed once per box.
template <typename acc_t>
struct FcosBox {
  acc_t x0, y0, x1, y1, center_x, center_y, area;
};

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline FcosBox<acc_t> make_fcos_box(const scalar_t* box) {
  const acc_t x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
  return {x0, y0, x1, y1, (x0 + x1) * acc_t(0.5), (y0 + y1) * acc_t(0.5), (x1 - x0) * (y1 - y0)};
}

// One point: its position, centre-sampling reach (radius * stride) and the inclusive range allowed
// for its largest distance to a box side.
template <typename acc_t>
struct FcosPoint {
  acc_t x, y, reach, size_low, size_high;
};

// Whether `box` may be assigned to `point`: the point is strictly inside the sampling region (the box,
// or with centre sampling the box clipped to center +- reach) and max(l, t, r, b) is in the size range.
// NaN anywhere makes a comparison false, so NaN boxes are never candidates.
template <typename acc_t>
C10_HOST_DEVICE inline bool fcos_is_candidate(const FcosPoint<acc_t>& p, const FcosBox<acc_t>& box,
                                              bool center_sampling) {
  const acc_t l = p.x - box.x0, t = p.y - box.y0, r = box.x1 - p.x, b = box.y1 - p.y;
  // The sampling region lies inside the box, so a point outside the box is rejected early.
  if (!(l > 0 && t > 0 && r > 0 && b > 0)) return false;
  const acc_t horizontal = l > r ? l : r, vertical = t > b ? t : b;
  const acc_t largest = horizontal > vertical ? horizontal : vertical;
  if (!(largest >= p.size_low && largest <= p.size_high)) return false;
  if (!center_sampling) return true;
  // AdelaiDet's clipping (torch.where(xmin > x0, xmin, x0), ...), spelled the same way.
  const acc_t xmin = box.center_x - p.reach, ymin = box.center_y - p.reach;
  const acc_t xmax = box.center_x + p.reach, ymax = box.center_y + p.reach;
  const acc_t region_x0 = xmin > box.x0 ? xmin : box.x0;
  const acc_t region_y0 = ymin > box.y0 ? ymin : box.y0;
  const acc_t region_x1 = xmax > box.x1 ? box.x1 : xmax;
  const acc_t region_y1 = ymax > box.y1 ? box.y1 : ymax;
  return p.x - region_x0 > 0 && p.y - region_y0 > 0 && region_x1 - p.x > 0 && region_y1 - p.y > 0;
}

// Candidates are visited in index order; the smallest area wins and the first index wins a tie.
template <typename acc_t>
C10_HOST_DEVICE inline bool fcos_is_better(acc_t area, int64_t best, acc_t best_area) {
  return best < 0 || area < best_area;
}

// Writes one point's targets: the matched box's label and (l, t, r, b), or num_classes, zeros and -1.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline void fcos_write_targets(const FcosPoint<acc_t>& p, const FcosBox<acc_t>& box, int64_t best,
                                               int64_t best_label, int64_t num_classes, int64_t* label,
                                               scalar_t* reg, int64_t* matched) {
  const bool found = best >= 0;
  *label = found ? best_label : num_classes;
  *matched = best;
  reg[0] = static_cast<scalar_t>(found ? p.x - box.x0 : acc_t(0));
  reg[1] = static_cast<scalar_t>(found ? p.y - box.y0 : acc_t(0));
  reg[2] = static_cast<scalar_t>(found ? box.x1 - p.x : acc_t(0));
  reg[3] = static_cast<scalar_t>(found ? box.y1 - p.y : acc_t(0));
}

}  // namespace pydet
