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

  // ---- FCOS target assignment (pydet/ops/fcos_targets.py) ----
}
