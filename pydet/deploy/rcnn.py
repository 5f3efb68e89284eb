"""Faster / Mask R-CNN as a fixed-shape module for ``torch.export``, ONNX and AOTInductor.

``RCNNExport`` runs the eager model's own modules and kernels on a ``[B, 3, H, W]`` batch of one fixed
size and re-expresses the data-dependent steps of its inference with fixed shapes:

* RPN: per-level top-k, decode, clip and the small-box / score filter are computed on every image's
  ``sum_l min(pre_nms_top_n, anchors_l)`` candidates; filtered-out ones get a ``-inf`` score, and the NMS
  per (image, level) with the best ``post_nms_top_n`` kept is ``multiclass_nms`` with one class per
  level. Its fixed-size output (``num_detections`` proposals per image, padding after them) replaces
  the eager per-image proposal lists.
* RoI heads: every proposal slot is pooled and classified; padding slots, scores not above
  ``score_thresh`` and boxes under the minimum size get ``-inf`` scores, and the class-aware NMS with the
  best ``detections_per_img`` kept is ``multiclass_nms`` on the per-class boxes.
* Masks: the mask head runs on the ``D`` detection slots; padding rows get zero masks.

``multiclass_nms`` ranks with the same stable order (score, then box index, then class) and the same
greedy IoU test as the eager ``batched_nms``, and the candidates are laid out in the eager order, so the
detections are the eager ones, padded. Nothing reads a value back to the host and no Python branch
depends on data, so the batch dimension stays dynamic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..modeling.batching import clip_boxes_per_image, gather_rows
from ..modeling.rpn import flatten_levels
from .common import DetectionExport, ResizeNormalize, mask_padding, padded_rois

# Candidates are chosen by giving the others a -inf score, so multiclass_nms's threshold only has to lie below
# every probability. It is finite because AOTInductor packages store the op's float arguments as JSON numbers.
_BELOW_PROBABILITIES = -1.0


def _pad_rows(x: Tensor, rows: int, value: float) -> Tensor:
    """Pad dimension 1 of ``x`` to ``rows`` entries with ``value``."""
    if x.shape[1] == rows:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, rows - x.shape[1]]
    return F.pad(x, pad, value=value)


class RCNNExport(DetectionExport):
    """``GeneralizedRCNN.export_module``: its inference on ``[B, 3, H, W]`` images in [0, 1] of one
    ``image_size``, with the fixed-size outputs of :class:`DetectionExport` (``masks [B, D, M, M]`` for Mask
    R-CNN): the first ``D = max_detections`` of the detections ``model(list(images))`` returns, in its
    order, padded. The modules are the model's own (not copies).
    """

    def __init__(self, model: nn.Module, image_size, max_detections: int = 100):
        super().__init__(model, image_size, max_detections, has_masks=model.roi_heads.has_mask)
        self.resize = ResizeNormalize(model.transform, self.image_size)
        parameter = next(model.parameters())
        self.register_buffer("clip_size", torch.tensor(self.resize.resized_size, dtype=parameter.dtype,
                                                       device=parameter.device), persistent=False)
        self.register_buffer("anchors", self._anchors_and_pooler_scales(parameter.dtype, parameter.device),
                             persistent=False)

    @torch.no_grad()
    def _anchors_and_pooler_scales(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The RPN's anchors for the padded size (which depend on the feature map sizes: found by one
        backbone pass on a blank image), and the RoI poolers' level scales set as eager inference sets them
        on its first call."""
        padded_size = self.resize.padded_size
        blank = torch.zeros(1, 3, *padded_size, dtype=dtype, device=device)
        features = self.model.backbone(blank)
        levels = self.model.rpn.anchor_generator.grid_anchors(
            padded_size, [tuple(f.shape[-2:]) for f in features.values()], dtype, device)
        heads = self.model.roi_heads
        for pooler in (heads.box_roi_pool, heads.mask_roi_pool):
            if pooler is not None:
                pooler(features, blank.new_zeros(0, 5), [self.resize.resized_size])
        return torch.cat(levels)

    def detect(self, images: Tensor) -> tuple[Tensor, ...]:
        # Channels-last, as the eager inference runs the backbone (its convolutions round the same way).
        features = self.model.backbone(self.resize(images).contiguous(memory_format=torch.channels_last))
        proposals, num_proposals = self.propose(features)
        boxes, scores, labels, num_detections = self.detect_boxes(features, proposals, num_proposals)
        # Rows past the model's detections_per_img (when max_detections is larger) are padding.
        rows = self.max_detections
        outputs = (_pad_rows(self.resize.restore_boxes(boxes), rows, 0.0), _pad_rows(scores, rows, 0.0),
                   _pad_rows(labels, rows, -1), num_detections)
        if self.has_masks:
            outputs += (_pad_rows(self.mask_probabilities(features, boxes, labels, num_detections), rows, 0.0),)
        return outputs

    def propose(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``[B, post_nms_top_n, 4]`` proposals sorted by objectness, and the number of real ones per image."""
        rpn = self.model.rpn
        logits, deltas = rpn.head(list(features.values()))
        logits, deltas, per_level = flatten_levels(logits, deltas)
        num_images = logits.shape[0]
        top_idx, level_of = [], []
        offset = 0
        for level, (level_logits, count) in enumerate(zip(logits.split(per_level, 1), per_level)):
            k = min(rpn.pre_nms_top_n_test, count)
            top_idx.append(level_logits.topk(k, dim=1).indices + offset)
            level_of += [level] * k
            offset += count
        top_idx = torch.cat(top_idx, 1)
        scores = logits.gather(1, top_idx).sigmoid()
        boxes = ops.decode_boxes(gather_rows(deltas, top_idx).reshape(-1, 4), self.anchors[top_idx.reshape(-1)])
        boxes = clip_boxes_per_image(boxes.view(num_images, -1, 4), self.clip_size)
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        candidate = (widths >= rpn.min_size) & (heights >= rpn.min_size) & (scores >= rpn.score_thresh)
        # One NMS class per level: each candidate scores in its level's column only.
        levels = torch.arange(len(per_level), device=logits.device)
        own_level = torch.tensor(level_of, device=logits.device)[:, None] == levels
        level_scores = torch.where(candidate[..., None] & own_level, scores[..., None], float("-inf"))
        proposals, _, _, num_proposals = ops.multiclass_nms(
            boxes, level_scores, _BELOW_PROBABILITIES, rpn.nms_thresh, rpn.post_nms_top_n_test)
        return proposals, num_proposals

    def detect_boxes(self, features: dict[str, Tensor], proposals: Tensor,
                     num_proposals: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Box head, decode, clip, score / size filter, class-aware NMS: the eager ``postprocess_detections``
        with fixed shapes. Boxes are in the resized image's pixels; labels include the background offset."""
        heads = self.model.roi_heads
        num_images, slots = proposals.shape[:2]
        pooled = heads.box_roi_pool(features, padded_rois(proposals), [self.resize.resized_size])
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        num_classes = class_logits.shape[-1]
        boxes = ops.decode_boxes(box_regression, proposals.reshape(-1, 4), heads.bbox_reg_weights)
        boxes = clip_boxes_per_image(boxes.view(num_images, slots, num_classes, 4), self.clip_size)[:, :, 1:]
        scores = F.softmax(class_logits, -1).view(num_images, slots, num_classes)[..., 1:]
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        real = torch.arange(slots, device=proposals.device) < num_proposals[:, None]
        candidate = ((scores > heads.score_thresh) & (widths >= heads.min_box_size) & (heights >= heads.min_box_size)
                     & real[..., None])
        scores = torch.where(candidate, scores, float("-inf"))
        limit = min(self.max_detections, heads.detections_per_img)
        boxes, scores, labels, num_detections = ops.multiclass_nms(
            boxes, scores, _BELOW_PROBABILITIES, heads.nms_thresh, limit)
        return boxes, scores, torch.where(labels >= 0, labels + 1, labels), num_detections

    def mask_probabilities(self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor,
                           num_detections: Tensor) -> Tensor:
        """``[B, D, M, M]`` sigmoid of the mask head's logits at each detection's class; zero on padding."""
        num_images, slots = boxes.shape[:2]
        logits = self.model.roi_heads.mask_logits(features, padded_rois(boxes), [self.resize.resized_size])
        size = logits.shape[-2:]
        index = labels.clamp(min=0).reshape(-1, 1, 1, 1).expand(-1, 1, *size)
        probs = logits.gather(1, index).sigmoid().view(num_images, slots, *size)
        (probs,) = mask_padding(num_detections, slots, probs)
        return probs
