// pydet's typed C++ entry points: one inline function per operator schema of csrc/pydet.cpp, with the
// schema's argument order and types, so that C++ (libtorch) callers get compile-time signatures instead
// of looking operators up by string. Each call goes through the c10 dispatcher, as torch.ops.pydet.* does,
// so it reaches the CPU or CUDA kernel and the autocast wrapper. The autograd formulas and fake kernels are
// registered from Python (pydet/ops/*.py): without pydet's Python package in the process, take gradients
// with the *_backward entry points.
//
// Header-only (inline functions): nothing to link but the operator library, whose loading (linking
// libpydet_ops.so from CMakeLists.txt, or dlopen'ing it or the Python extension pydet/_C*.so) runs the
// TORCH_LIBRARY registrations. Calling an entry point before that throws a c10::Error ("Could not find
// schema pydet::..."); the lookup is retried on the next call.
//
// The C++ signatures are the schema's: float -> double, int and SymInt -> int64_t, float[] ->
// at::ArrayRef<double>, int[] -> at::IntArrayRef, Tensor[] -> at::TensorList (std::vector<at::Tensor>
// when returned), float? -> std::optional<double>. The Python wrappers' conveniences (defaults, boxes
// as a list of tensors, pre_nms_topk=None) are not here: see pydet/ops/*.py for how they map to these.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <tuple>
#include <vector>

namespace pydet::ops {

// Each function looks its operator up once, typed with its own signature (decltype of the function being
// defined, so that each signature is written once); typed<> checks it against the registered kernels'.

// ---- boxes ----

// Pairwise IoU of xyxy boxes [N, 4] and [M, 4] -> [N, M].
inline at::Tensor box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::box_iou", "")
                             .typed<decltype(box_iou)>();
  return op.call(boxes1, boxes2);
}

// R-CNN box codes (dx, dy, dw, dh) of reference_boxes relative to proposals, both [N, 4]; weights: 4 values.
inline at::Tensor encode_boxes(const at::Tensor& reference_boxes, const at::Tensor& proposals,
                               at::ArrayRef<double> weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::encode_boxes", "")
                             .typed<decltype(encode_boxes)>();
  return op.call(reference_boxes, proposals, weights);
}

// Inverse of encode_boxes: rel_codes [N, K*4] applied to boxes [N, 4], dw/dh clamped at scale_clamp.
inline at::Tensor decode_boxes(const at::Tensor& rel_codes, const at::Tensor& boxes, at::ArrayRef<double> weights,
                               double scale_clamp) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::decode_boxes", "")
                             .typed<decltype(decode_boxes)>();
  return op.call(rel_codes, boxes, weights, scale_clamp);
}

// ---- anchors and grid points ----

// Per level, cell_anchors[level] [A, 4] shifted over the grid: feature_sizes and strides are flattened
// (h, w) pairs, one per level. Returns one [h*w*A, 4] tensor per level, position-major.
inline std::vector<at::Tensor> grid_anchors(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                            at::IntArrayRef strides) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::grid_anchors", "")
                             .typed<decltype(grid_anchors)>();
  return op.call(cell_anchors, feature_sizes, strides);
}

// Per level, the (x, y) points [h*w, 2] of the grid: x = column * stride_w + offsets[level] (y likewise).
// dtype defaults to float32, device to CPU.
inline std::vector<at::Tensor> grid_points(at::IntArrayRef feature_sizes, at::IntArrayRef strides,
                                           at::ArrayRef<double> offsets,
                                           std::optional<at::ScalarType> dtype = std::nullopt,
                                           std::optional<at::Device> device = std::nullopt) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::grid_points", "")
                             .typed<decltype(grid_points)>();
  return op.call(feature_sizes, strides, offsets, dtype, device);
}

// ---- non-maximum suppression ----

// Greedy NMS (suppress where IoU > iou_threshold): int64 indices of the kept boxes by decreasing score.
inline at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::nms", "")
                             .typed<decltype(nms)>();
  return op.call(boxes, scores, iou_threshold);
}

// nms within each value of idxs [N]: boxes of different idxs never suppress each other.
inline at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                              double iou_threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::batched_nms", "")
                             .typed<decltype(batched_nms)>();
  return op.call(boxes, scores, idxs, iou_threshold);
}

// Per image: boxes [B, N, 4] or [B, N, C, 4], scores [B, N, C]. Returns (boxes [B, D, 4], scores [B, D],
// labels [B, D], num_detections [B]) with D = max_per_image, rows past num_detections padded with zero
// boxes, score 0 and label -1. pre_nms_topk < 0: no top-k before NMS.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms(
    const at::Tensor& boxes, const at::Tensor& scores, double score_threshold, double iou_threshold,
    int64_t max_per_image, bool class_agnostic, int64_t pre_nms_topk) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::multiclass_nms", "")
                             .typed<decltype(multiclass_nms)>();
  return op.call(boxes, scores, score_threshold, iou_threshold, max_per_image, class_agnostic, pre_nms_topk);
}

// ---- RoIAlign ----

// rois: [K, 5] rows (batch index, x1, y1, x2, y2) -> [K, C, pooled_height, pooled_width].
inline at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::roi_align", "")
                             .typed<decltype(roi_align)>();
  return op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
}

// Gradient of roi_align with respect to its input [batch_size, channels, height, width].
inline at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                     bool aligned) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::roi_align_backward", "")
                             .typed<decltype(roi_align_backward)>();
  return op.call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
                 sampling_ratio, aligned);
}

// RoI k pooled from features[levels[k]] at spatial_scales[levels[k]] (zeros for a level outside the list).
inline at::Tensor multi_scale_roi_align(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                        at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                        int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::multi_scale_roi_align", "")
                             .typed<decltype(multi_scale_roi_align)>();
  return op.call(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned);
}

// Gradient of multi_scale_roi_align: one tensor [batch_size, channels, heights[i], widths[i]] per level.
inline std::vector<at::Tensor> multi_scale_roi_align_backward(
    const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
    int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels, at::IntArrayRef heights,
    at::IntArrayRef widths, int64_t sampling_ratio, bool aligned) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::multi_scale_roi_align_backward", "")
                             .typed<decltype(multi_scale_roi_align_backward)>();
  return op.call(grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size, channels, heights,
                 widths, sampling_ratio, aligned);
}

// ---- mask pasting ----

// masks [N, h, w] resampled into boxes [N, 4] of a height x width image -> [N, height, width]: bool
// (value >= threshold) with a threshold, probabilities in the masks' dtype with std::nullopt.
inline at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int64_t height, int64_t width,
                              std::optional<double> threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::paste_masks", "")
                             .typed<decltype(paste_masks)>();
  return op.call(masks, boxes, height, width, threshold);
}

// The binary masks of paste_masks as COCO RLE: (chars uint8, offsets int64 [N + 1]) on the CPU, mask i's
// compressed counts string being chars[offsets[i]:offsets[i + 1]].
inline std::tuple<at::Tensor, at::Tensor> paste_masks_rle(const at::Tensor& masks, const at::Tensor& boxes,
                                                          int64_t height, int64_t width, double threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::paste_masks_rle", "")
                             .typed<decltype(paste_masks_rle)>();
  return op.call(masks, boxes, height, width, threshold);
}

// ---- FCOS target assignment ----

// Per point: (labels [L] (num_classes when unmatched), reg_targets [L, 4] (l, t, r, b), matched_gt [L] (-1
// when unmatched)). center_sampling_radius <= 0 samples the whole box.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> fcos_targets(
    const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, int64_t num_classes, double center_sampling_radius) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::fcos_targets", "")
                             .typed<decltype(fcos_targets)>();
  return op.call(points, strides, size_ranges, gt_boxes, gt_labels, num_classes, center_sampling_radius);
}

// fcos_targets for a batch: gt_boxes [B, M, 4] and gt_labels [B, M] padded per image, of which the first
// num_gt[b] rows are real; outputs gain a leading batch dimension.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> fcos_targets_batched(
    const at::Tensor& points, const at::Tensor& strides, const at::Tensor& size_ranges, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, const at::Tensor& num_gt, int64_t num_classes, double center_sampling_radius) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::fcos_targets_batched", "")
                             .typed<decltype(fcos_targets_batched)>();
  return op.call(points, strides, size_ranges, gt_boxes, gt_labels, num_gt, num_classes, center_sampling_radius);
}

}  // namespace pydet::ops
