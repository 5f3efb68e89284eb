// Shared by the CPU and CUDA NMS kernels: argument checks and the exact threshold comparison.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common.h"

namespace pydet {

// The largest T that is <= t. For every T value v, `v > t` compared exactly (as torchvision's CPU
// kernel does, promoting to double) equals `v > threshold_at_or_below<T>(t)`, so kernels can compare
// in T and still agree with a float64 reference.
template <typename T>
T threshold_at_or_below(double t) {
  T v = static_cast<T>(t);
  if (static_cast<double>(v) > t) v = std::nextafter(v, -std::numeric_limits<T>::infinity());
  return v;
}

struct MulticlassNmsOptions {
  double score_threshold;
  double iou_threshold;
  int64_t max_per_image;
  bool class_agnostic;
  int64_t pre_nms_topk;  // < 0: no limit
};

inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes(boxes, "boxes");
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "scores must have shape [N] matching boxes [N, 4], got ", scores.sizes(), " and ",
                    boxes.sizes());
  check_same_dtype(boxes, "boxes", scores, "scores");
  check_same_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK_VALUE(!std::isnan(iou_threshold), "iou_threshold must not be NaN");
}

inline void check_nms_idxs(const at::Tensor& boxes, const at::Tensor& idxs) {
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
                    "idxs must have shape [N] matching boxes [N, 4], got ", idxs.sizes(), " and ", boxes.sizes());
  TORCH_CHECK_VALUE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false),
                    "idxs must be an integer tensor, got ", idxs.scalar_type());
  check_same_device(boxes, "boxes", idxs, "idxs");
}

inline void check_multiclass_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                      const MulticlassNmsOptions& opt) {
  TORCH_CHECK_VALUE(scores.dim() == 3, "scores must have shape [B, N, C], got ", scores.sizes());
  check_floating(scores, "scores");
  const bool shared = boxes.dim() == 3 && boxes.size(0) == scores.size(0) && boxes.size(1) == scores.size(1) &&
                      boxes.size(2) == 4;
  const bool per_class = boxes.dim() == 4 && boxes.size(0) == scores.size(0) &&
                         boxes.size(1) == scores.size(1) && boxes.size(2) == scores.size(2) && boxes.size(3) == 4;
  TORCH_CHECK_VALUE(shared || per_class, "boxes must have shape [B, N, 4] or [B, N, C, 4] for scores ",
                    scores.sizes(), ", got ", boxes.sizes());
  check_same_dtype(boxes, "boxes", scores, "scores");
  check_same_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK_VALUE(!std::isnan(opt.score_threshold), "score_threshold must not be NaN");
  TORCH_CHECK_VALUE(!std::isnan(opt.iou_threshold), "iou_threshold must not be NaN");
  TORCH_CHECK_VALUE(opt.max_per_image > 0, "max_per_image must be positive, got ", opt.max_per_image);
}

}  // namespace pydet
