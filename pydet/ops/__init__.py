"""pydet's operators: thin, validating wrappers over ``torch.ops.pydet.*`` (C++ and CUDA kernels).

Each group has one wrapper module here, one CPU kernel ``csrc/cpu/<group>_kernel.cpp``, one CUDA
kernel ``csrc/cuda/<group>_kernel.cu``, a float64 reference ``pydet/reference/<group>.py`` and tests
``tests/ops/test_<group>.py``. Schemas are all in ``csrc/pydet.cpp``.
"""
from .anchors import cell_anchors, grid_anchors, grid_points
from .boxes import box_area, box_iou, clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes
from .fcos_targets import fcos_centerness, fcos_level_inputs, fcos_targets, fcos_targets_batched
from .paste_masks import paste_masks, paste_masks_rle
from .nms import batched_nms, multiclass_nms, nms
from .roi_align import multi_scale_roi_align, roi_align

__all__ = [
    "box_area", "box_iou", "cell_anchors", "clip_boxes_to_image", "decode_boxes", "encode_boxes",
    "grid_anchors", "grid_points", "remove_small_boxes",
    "fcos_centerness", "fcos_level_inputs", "fcos_targets", "fcos_targets_batched",
    "paste_masks", "paste_masks_rle",
    "batched_nms", "multiclass_nms", "nms",
    "multi_scale_roi_align", "roi_align",
]
