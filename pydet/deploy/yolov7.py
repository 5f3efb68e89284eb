"""YOLOv7 / YOLOv7-tiny for deployment: letterbox for a fixed input size, network, decode, NMS, boxes back."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..models.yolov7 import PAD_VALUE, STRIDES, YOLOv7, letterbox_layout, unletterbox
from .common import DetectionExport, mask_padding, pad_rows


class YOLOv7Export(DetectionExport):
    """``YOLOv7.export_module``: the eager model for ``image_size`` inputs without the eager CPU path's
    objectness pre-filter (which only skips work: the detections are the same). At most the model's
    ``box_detections_per_img`` rows are filled."""

    def __init__(self, model: YOLOv7, image_size, max_detections: int = 100):
        super().__init__(model, image_size, max_detections)
        (scale,), (resized,), batch_size, (padding,) = letterbox_layout(
            [self.image_size], model.img_size, auto=model.letterbox_auto, stride=max(STRIDES))
        self.resized_size, self.batch_size, self.padding = resized, batch_size, padding
        device = model.head.anchor_grid.device
        # The eager model's scale and padding tensors (float32) for a batch of one, broadcast over the batch.
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("offset", torch.tensor([padding], dtype=torch.float32, device=device), persistent=False)
        height, width = self.image_size
        self.register_buffer("limits", torch.tensor([[[width, height, width, height]]], dtype=torch.float32,
                                                    device=device), persistent=False)
        sizes = [(batch_size[0] // s, batch_size[1] // s) for s in STRIDES]
        grids = ops.grid_points(sizes, [1] * len(sizes), offset=0.0, device=device)
        for level, grid in enumerate(grids):
            self.register_buffer(f"grid{level}", grid, persistent=False)

    def letterbox(self, images: Tensor) -> Tensor:
        """``letterbox`` of ``pydet.models.yolov7`` for this size: resize, then centre on the padding colour."""
        height, width = self.batch_size
        h, w = self.resized_size
        left, top = self.padding
        if (h, w) != self.image_size:
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
        return F.pad(images, (left, width - w - left, top, height - h - top), value=PAD_VALUE)

    def detect(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        grids = [getattr(self, f"grid{level}").to(images.dtype) for level in range(len(STRIDES))]
        boxes, objectness, class_probs = model.decode(model.model(self.letterbox(images)), grids)
        rows = min(self.max_detections, model.box_detections_per_img)
        boxes, scores, labels, counts = model.nms(boxes, objectness, class_probs, rows)
        boxes = unletterbox(boxes, self.scale, self.offset, self.limits.to(boxes.dtype))
        (boxes,) = mask_padding(counts, rows, boxes)
        return pad_rows(self.max_detections, boxes, scores, labels, counts)
