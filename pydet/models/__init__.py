"""The detection systems, each a short composition of :mod:`pydet.modeling` blocks and pydet kernels.

All share torchvision's calling convention: ``model(images, targets=None)`` with a list of
``[3, H, W]`` float images in [0, 1]; training returns a dict of losses, eval one dict per image.
``build(name, **kwargs)`` builds any of them by name (see ``available()``).
"""
from __future__ import annotations

from functools import partial

from .centermask2 import BACKBONES, CENTERMASK2_SPEC, LITE_BACKBONES, CenterMask2, centermask2
from .generalized_rcnn import (FASTER_RCNN_SPEC, MASK_RCNN_SPEC, SMALL_FASTER_RCNN_SPEC, SMALL_MASK_RCNN_SPEC,
                               faster_rcnn_resnet18_fpn, faster_rcnn_resnet50_fpn, mask_rcnn_resnet18_fpn,
                               mask_rcnn_resnet50_fpn)
from .registry import Converter, ModelSpec, TrainingDefaults, available, build, canonical_name, register, spec
from .yolov7 import YOLOV7_SPEC, yolov7, yolov7_tiny, yolov7_tiny_320

register("faster_rcnn_resnet50_fpn", faster_rcnn_resnet50_fpn, FASTER_RCNN_SPEC)
register("mask_rcnn_resnet50_fpn", mask_rcnn_resnet50_fpn, MASK_RCNN_SPEC)
register("faster_rcnn_resnet18_fpn", faster_rcnn_resnet18_fpn, SMALL_FASTER_RCNN_SPEC)
register("mask_rcnn_resnet18_fpn", mask_rcnn_resnet18_fpn, SMALL_MASK_RCNN_SPEC)
register("yolov7", yolov7, YOLOV7_SPEC)
register("yolov7_tiny", yolov7_tiny, YOLOV7_SPEC)
register("yolov7_tiny_320", yolov7_tiny_320, YOLOV7_SPEC)
register("centermask2", centermask2, CENTERMASK2_SPEC)
for _backbone in BACKBONES:
    register(f"centermask2_{_backbone}", partial(centermask2, _backbone), CENTERMASK2_SPEC)
for _backbone in LITE_BACKBONES:
    register(f"centermask2_lite_{_backbone}", partial(centermask2, _backbone, lite=True), CENTERMASK2_SPEC)

__all__ = ["CenterMask2", "Converter", "ModelSpec", "TrainingDefaults", "available", "build", "canonical_name", "centermask2",
           "faster_rcnn_resnet18_fpn", "faster_rcnn_resnet50_fpn", "mask_rcnn_resnet18_fpn", "mask_rcnn_resnet50_fpn",
           "register", "spec", "yolov7", "yolov7_tiny", "yolov7_tiny_320"]
