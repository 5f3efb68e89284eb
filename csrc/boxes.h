// Shared by the CPU and CUDA box kernels: argument checks and the per-box arithmetic, written once
// as host/device functions so both backends compute the same thing in the same order
// (torchvision's box_iou and BoxCoder formulas, in the opmath type).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include "common.h"

namespace pydet {

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  check_same_dtype(boxes1, "boxes1", boxes2, "boxes2");
  check_same_device(boxes1, "boxes1", boxes2, "boxes2");
}

inline void check_encode_boxes_args(const at::Tensor& reference, const at::Tensor& proposals,
                                    at::ArrayRef<double> weights) {
  check_boxes(reference, "reference_boxes");
  check_boxes(proposals, "proposals");
  check_same_dtype(reference, "reference_boxes", proposals, "proposals");
  check_same_device(reference, "reference_boxes", proposals, "proposals");
  TORCH_CHECK_VALUE(reference.size(0) == proposals.size(0),
                    "reference_boxes and proposals must have the same number of rows, got ", reference.size(0),
                    " and ", proposals.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
}

inline void check_decode_boxes_args(const at::Tensor& rel_codes, const at::Tensor& boxes,
                                    at::ArrayRef<double> weights) {
  TORCH_CHECK_VALUE(rel_codes.dim() == 2 && rel_codes.size(1) % 4 == 0, "rel_codes must have shape [N, K*4], got ",
                    rel_codes.sizes());
  check_floating(rel_codes, "rel_codes");
  check_boxes(boxes, "boxes");
  check_same_device(rel_codes, "rel_codes", boxes, "boxes");
  TORCH_CHECK_VALUE(rel_codes.size(0) == boxes.size(0), "rel_codes and boxes must have the same number of rows, got ",
                    rel_codes.size(0), " and ", boxes.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
}

template <typename acc_t>
struct BoxWeights {
  acc_t x, y, w, h;
};

// An xyxy box with its area, for the IoU tests of NMS (CPU and CUDA) and box_iou.
template <typename T>
struct AreaBox {
  T x1, y1, x2, y2, area;
};

template <typename T, typename scalar_t>
C10_HOST_DEVICE inline AreaBox<T> area_box(const scalar_t* b) {
  const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  return {x1, y1, x2, y2, (x2 - x1) * (y2 - y1)};
}

// torchvision's IoU, the one formula of pydet: inter / (area_a + area_b - inter); 0/0 (two empty boxes)
// is NaN. Built without FMA contraction on both backends, so CPU and CUDA round it identically. A NaN
// coordinate makes an area NaN, so the NaN handling of the min/max here never changes the result.
template <typename T>
C10_HOST_DEVICE inline T area_box_iou(const AreaBox<T>& a, const AreaBox<T>& b) {
  const T right = a.x2 < b.x2 ? a.x2 : b.x2, left = a.x1 > b.x1 ? a.x1 : b.x1;
  const T bottom = a.y2 < b.y2 ? a.y2 : b.y2, top = a.y1 > b.y1 ? a.y1 : b.y1;
  const T w = right - left > T(0) ? right - left : T(0);
  const T h = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = w * h;
  return inter / (a.area + b.area - inter);
}

// IoU of two xyxy boxes given as 4 coordinates each.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t box_pair_iou(const scalar_t* a, const scalar_t* b) {
  return area_box_iou(area_box<acc_t>(a), area_box<acc_t>(b));
}

// (dx, dy, dw, dh) mapping proposal p onto reference g.
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline void encode_box(const scalar_t* g, const scalar_t* p, BoxWeights<acc_t> wt, scalar_t* out) {
  const acc_t ex_w = acc_t(p[2]) - acc_t(p[0]), ex_h = acc_t(p[3]) - acc_t(p[1]);
  const acc_t ex_cx = acc_t(p[0]) + acc_t(0.5) * ex_w, ex_cy = acc_t(p[1]) + acc_t(0.5) * ex_h;
  const acc_t gt_w = acc_t(g[2]) - acc_t(g[0]), gt_h = acc_t(g[3]) - acc_t(g[1]);
  const acc_t gt_cx = acc_t(g[0]) + acc_t(0.5) * gt_w, gt_cy = acc_t(g[1]) + acc_t(0.5) * gt_h;
  out[0] = static_cast<scalar_t>(wt.x * (gt_cx - ex_cx) / ex_w);
  out[1] = static_cast<scalar_t>(wt.y * (gt_cy - ex_cy) / ex_h);
  out[2] = static_cast<scalar_t>(wt.w * log(gt_w / ex_w));
  out[3] = static_cast<scalar_t>(wt.h * log(gt_h / ex_h));
}

// Apply one code to box b. dw/dh are clamped from above only, and NaN stays NaN (torch.clamp).
template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline void decode_box(const scalar_t* code, const scalar_t* b, BoxWeights<acc_t> wt, acc_t clamp,
                                       scalar_t* out) {
  const acc_t w = acc_t(b[2]) - acc_t(b[0]), h = acc_t(b[3]) - acc_t(b[1]);
  const acc_t cx = acc_t(b[0]) + acc_t(0.5) * w, cy = acc_t(b[1]) + acc_t(0.5) * h;
  const acc_t dx = acc_t(code[0]) / wt.x, dy = acc_t(code[1]) / wt.y;
  acc_t dw = acc_t(code[2]) / wt.w, dh = acc_t(code[3]) / wt.h;
  dw = dw > clamp ? clamp : dw;
  dh = dh > clamp ? clamp : dh;
  const acc_t pcx = dx * w + cx, pcy = dy * h + cy;
  const acc_t half_w = acc_t(0.5) * (exp(dw) * w), half_h = acc_t(0.5) * (exp(dh) * h);
  out[0] = static_cast<scalar_t>(pcx - half_w);
  out[1] = static_cast<scalar_t>(pcy - half_h);
  out[2] = static_cast<scalar_t>(pcx + half_w);
  out[3] = static_cast<scalar_t>(pcy + half_h);
}

template <typename acc_t>
inline BoxWeights<acc_t> box_weights(at::ArrayRef<double> w) {
  return {acc_t(w[0]), acc_t(w[1]), acc_t(w[2]), acc_t(w[3])};
}

}  // namespace pydet
