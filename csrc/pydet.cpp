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

  // ---- mask pasting (pydet/ops/paste_masks.py) ----
  // threshold=None returns probabilities in the masks' dtype, a float returns bool (value >= threshold).
  m.def("paste_masks(Tensor masks, Tensor boxes, int height, int width, float? threshold) -> Tensor");

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
