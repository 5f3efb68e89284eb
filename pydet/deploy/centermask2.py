"""CenterMask2 for deployment: fixed-size resize, FCOS with fixed-size candidates and NMS, SAG-Mask masks on
the padded detections, boxes back to the input, clipped to it at the end (as the eager model)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ..models.centermask2 import LEVELS, MASK_LEVELS, CenterMask2
from ..modeling.batching import clip_boxes_per_image
from ..modeling.fcos import decode_points
from ..modeling.poolers import infer_scale
from ..ops.roi_align import area_ratio_levels, level_range
from .common import DetectionExport, ResizeNormalize, mask_padding, pad_rows, padded_rois, sort_detections

# Candidates below the score threshold get this score; the NMS threshold sits between it and the real scores
# (>= 0), so exactly the eager model's candidates take part.
_NOT_A_CANDIDATE = -1.0


class CenterMask2Export(DetectionExport):
    """``CenterMask2.export_module``. ``scores`` are FCOS's box scores, as the eager model's ``scores`` (its
    ``mask_scores``, re-scored by MaskIoU, have no place in the fixed output contract). At most the model's
    ``box_detections_per_img`` rows are filled."""

    def __init__(self, model: CenterMask2, image_size, max_detections: int = 100):
        super().__init__(model, image_size, max_detections, has_masks=True)
        self.preprocess = ResizeNormalize(model.transform, self.image_size)
        padded_h, padded_w = self.preprocess.padded_size
        strides = model.fcos.strides[:len(MASK_LEVELS)]
        self.mask_scales = [infer_scale(torch.empty(0, 0, padded_h // s, padded_w // s, device="meta"),
                                        self.preprocess.resized_size) for s in strides]
        # All the eager model's rows: it drops boxes left empty by the final clip before any limit applies.
        self.rows = model.fcos.post_nms_top_n["testing"]

    def candidates(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """FCOS's per-level best pairs as ``boxes [B, K, 4]`` (unclipped, in the resized image) and one-hot
        scores ``[B, K, C]`` (``sqrt(class x centerness)``; non-candidates and other classes below zero)."""
        fcos = self.model.fcos
        cls_logits, box_regression, centerness = fcos.head(features)
        points, point_strides, _, level_sizes = fcos._points([tuple(f.shape[-2:]) for f in features], cls_logits)
        ranking, point_index, classes = fcos.top_candidates(cls_logits, centerness, level_sizes,
                                                            fcos.pre_nms_top_n["testing"])
        image_index = torch.arange(ranking.shape[0], device=ranking.device)[:, None].expand_as(ranking)
        boxes = decode_points(box_regression, points, point_strides, image_index, point_index)
        scores = torch.where(ranking >= 0, ranking.clamp(min=0).sqrt(), _NOT_A_CANDIDATE)
        one_hot = torch.full(scores.shape + (fcos.num_classes,), _NOT_A_CANDIDATE, dtype=scores.dtype,
                             device=scores.device)
        return boxes, one_hot.scatter(2, classes[..., None], scores[..., None])

    def masks(self, features: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """Mask probabilities ``[B, D, M, M]`` of each detection's class."""
        model = self.model
        rois = padded_rois(boxes)
        height, width = self.preprocess.resized_size
        image_areas = torch.full((rois.shape[0],), float(height * width), dtype=torch.float32, device=rois.device)
        levels = area_ratio_levels(rois[:, 1:], image_areas, *level_range(self.mask_scales))
        pooler = model.mask_pooler
        roi_features = ops.multi_scale_roi_align(features, rois, pooler.output_size, self.mask_scales,
                                                 pooler.sampling_ratio, pooler.aligned, levels=levels)
        mask_logits = model.mask_head(roi_features)
        rows = torch.arange(rois.shape[0], device=rois.device)
        classes = labels.clamp(min=0).flatten()
        mask_probs = mask_logits[rows, classes].sigmoid()
        return mask_probs.view(boxes.shape[:2] + mask_probs.shape[-2:])

    def detect(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        features = dict(zip(LEVELS, model.backbone(self.preprocess(images)).values()))
        boxes, scores = self.candidates([features[name] for name in LEVELS])
        boxes, scores, labels, counts = ops.multiclass_nms(boxes, scores, _NOT_A_CANDIDATE / 2, model.fcos.nms_thresh,
                                                           self.rows)
        masks = self.masks([features[name] for name in MASK_LEVELS], boxes, labels)
        boxes, scores, labels, counts, masks = self.clip_to_input(boxes, scores, labels, counts, masks)
        rows = self.max_detections
        boxes, scores, labels, masks = (t[:, :rows] for t in (boxes, scores, labels, masks))
        return pad_rows(rows, boxes, scores, labels, counts.clamp(max=rows), masks)

    def clip_to_input(self, boxes: Tensor, scores: Tensor, labels: Tensor, counts: Tensor, masks: Tensor):
        """Boxes back to the input image and clipped to it; rows left empty dropped, the rest kept in order."""
        size = torch.tensor(self.image_size, dtype=boxes.dtype, device=boxes.device)
        boxes = clip_boxes_per_image(self.preprocess.restore_boxes(boxes), size)
        kept = (torch.arange(self.rows, device=counts.device) < counts[:, None]) & (boxes[..., 2] > boxes[..., 0]) \
            & (boxes[..., 3] > boxes[..., 1])
        scores, boxes, labels, masks = sort_detections(torch.where(kept, scores, float("-inf")), counts, boxes,
                                                       labels, masks)
        counts = kept.sum(1)
        scores, boxes, masks = mask_padding(counts, self.rows, scores, boxes, masks)
        (labels,) = mask_padding(counts, self.rows, labels, fill=-1)
        return boxes, scores, labels, counts, masks
