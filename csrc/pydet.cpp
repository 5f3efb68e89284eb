// Every pydet operator's schema, in one place. Kernels live in cpu/<op>_kernel.cpp and
// cuda/<op>_kernel.cu and register themselves with TORCH_LIBRARY_IMPL; fake (meta) kernels and
// autograd formulas are registered from Python in pydet/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(pydet, m) {
  // ---- boxes: pairwise IoU and the R-CNN box coder (pydet/ops/boxes.py) ----
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("encode_boxes(Tensor reference_boxes, Tensor proposals, float[] weights) -> Tensor");
  m.def("decode_boxes(Tensor rel_codes, Tensor boxes, float[] weights, float scale_clamp) -> Tensor");

  // ---- anchors and grid points (pydet/ops/anchors.py) ----
  // feature_sizes and strides are flattened (h, w) pairs, one pair per level.
  m.def("grid_anchors(Tensor[] cell_anchors, int[] feature_sizes, int[] strides) -> Tensor[]");
  m.def(
      "grid_points(int[] feature_sizes, int[] strides, float[] offsets, *, ScalarType? dtype=None, "
      "Device? device=None) -> Tensor[]");

  // ---- non-maximum suppression (pydet/ops/nms.py) ----
  // Greedy NMS, torchvision semantics; indices of kept boxes by decreasing score.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Per image of a batch, fixed-size outputs (boxes, scores, labels, num_detections); pre_nms_topk < 0: none.
  m.def(
      "multiclass_nms(Tensor boxes, Tensor scores, float score_threshold, float iou_threshold, int max_per_image, "
      "bool class_agnostic, int pre_nms_topk) -> (Tensor, Tensor, Tensor, Tensor)");

  // ---- RoIAlign (pydet/ops/roi_align.py) ----
  // rois: [K, 5] rows (batch index, x1, y1, x2, y2). The multi-scale form pools RoI k from
  // features[levels[k]] (RoIs with a level outside the list give zeros) in one kernel, without host syncs.
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, "
      "SymInt[] widths, int sampling_ratio, bool aligned) -> Tensor[]");

  // ---- mask pasting (pydet/ops/paste_masks.py) ----
  // threshold=None returns probabilities in the masks' dtype, a float returns bool (value >= threshold).
  m.def("paste_masks(Tensor masks, Tensor boxes, int height, int width, float? threshold) -> Tensor");
  // The same binary masks as COCO RLE: (chars uint8, offsets int64 [N + 1]), mask i's compressed counts
  // being chars[offsets[i]:offsets[i + 1]]. CPU outputs for any input device (the encoding is host work).
  m.def("paste_masks_rle(Tensor masks, Tensor boxes, int height, int width, float threshold) -> (Tensor, Tensor)");

  // ---- FCOS target assignment (pydet/ops/fcos_targets.py) ----
  // Returns (labels, reg_targets, matched_gt). The batched form takes gt_boxes [B, M, 4] padded per
  // image, of which the first num_gt[b] rows are real.
  m.def(
      "fcos_targets(Tensor points, Tensor strides, Tensor size_ranges, Tensor gt_boxes, Tensor gt_labels, "
      "int num_classes, float center_sampling_radius) -> (Tensor, Tensor, Tensor)");
  m.def(
      "fcos_targets_batched(Tensor points, Tensor strides, Tensor size_ranges, Tensor gt_boxes, "
      "Tensor gt_labels, Tensor num_gt, int num_classes, float center_sampling_radius) -> (Tensor, Tensor, Tensor)");
}
