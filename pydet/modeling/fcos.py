"""FCOS (Tian et al. 2019) as CenterMask2 uses it: the anchor-free detector in front of the mask branch.

Per FPN level P3-P7 the head predicts, at each point ``index * stride + stride // 2``, class logits,
(l, t, r, b) distances in stride units (scaled by a learnable per-level factor and passed through a
ReLU) and a centerness logit from the box tower. Point-to-box assignment is ``pydet.ops.fcos_targets``;
losses are the sigmoid focal loss, the GIoU loss weighted by the centerness target and the
centerness BCE (AdelaiDet's FCOSOutputs). Inference scores are ``sqrt(class x centerness)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops.fcos_targets import DEFAULT_SIZE_RANGES
from .batching import clip_boxes_per_image, keep_first_per_image

FPN_STRIDES = (8, 16, 32, 64, 128)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level for the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared classification and box towers over all levels.

    ``forward`` returns, concatenated over levels in the order of ``features`` (points x fastest):
    class logits ``[B, P, C]``, box distances in stride units ``[B, P, 4]`` and centerness logits ``[B, P]``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, num_convs: int = 4, num_levels: int = 5,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs)
        self.bbox_tower = _tower(in_channels, num_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # Focal-loss prior: every class starts at probability prior_prob, so the many easy negatives
        # do not swamp the first iterations.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if len(features) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} feature levels, got {len(features)}")
        logits, boxes, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            cls_features = self.cls_tower(feature)
            box_features = self.bbox_tower(feature)
            logits.append(_flatten_points(self.cls_logits(cls_features)))
            boxes.append(_flatten_points(F.relu(scale(self.bbox_pred(box_features)))))
            centerness.append(_flatten_points(self.centerness(box_features))[..., 0])
        return torch.cat(logits, dim=1), torch.cat(boxes, dim=1), torch.cat(centerness, dim=1)


def _flatten_points(x: Tensor) -> Tensor:
    """``[B, K, H, W] -> [B, H * W, K]``, the order of ``pydet.ops.grid_points``."""
    return x.flatten(2).transpose(1, 2)


def decode_points(box_regression: Tensor, points: Tensor, point_strides: Tensor, image_index: Tensor,
                  point_index: Tensor) -> Tensor:
    """xyxy boxes of the (image, point) pairs indexed by ``image_index`` and ``point_index`` (any shape ``S``):
    the point minus / plus its (l, t, r, b) distances in stride units; ``[*S, 4]``."""
    distances = box_regression[image_index, point_index] * point_strides[point_index][..., None]
    xy = points[point_index]
    return torch.cat([xy - distances[..., :2], xy + distances[..., 2:]], dim=-1)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss on sigmoid probabilities (torchvision's ``sigmoid_focal_loss``, no reduction)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def giou_loss_ltrb(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - GIoU`` of boxes given as (l, t, r, b) distances from a shared point, ``[N, 4] -> [N]``.

    As in FCOS, the IoU is smoothed by +1 in numerator and denominator (distances are in stride units,
    so this keeps tiny boxes from dominating) and the enclosing area by 1e-7.
    """
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    inter_h = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = inter_w * inter_h
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    enclosing_w = torch.max(pred[:, 0], target[:, 0]) + torch.max(pred[:, 2], target[:, 2])
    enclosing_h = torch.max(pred[:, 1], target[:, 1]) + torch.max(pred[:, 3], target[:, 3])
    enclosing = enclosing_w * enclosing_h + 1e-7
    return 1 - (iou - (enclosing - union) / enclosing)


class FCOS(nn.Module):
    """FCOS head with its target assignment, losses and post-processing.

    ``forward(features, image_sizes, targets=None)`` returns ``(detections, losses)``: one dict per
    image with ``boxes`` (clipped to the image), ``scores`` and ``labels``, and in training the three
    losses (the detections are then computed without gradients, as proposals for the mask branch).
    """

    def __init__(self, head: FCOSHead, *, strides: Sequence[int] = FPN_STRIDES,
                 sizes_of_interest: Sequence[tuple[float, float]] = DEFAULT_SIZE_RANGES,
                 center_sampling_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, pre_nms_top_n_train: int = 1000,
                 pre_nms_top_n_test: int = 1000, post_nms_top_n_train: int = 100, post_nms_top_n_test: int = 50):
        super().__init__()
        if len(strides) != len(sizes_of_interest) or len(strides) != len(head.scales):
            raise ValueError(f"strides ({len(strides)}), sizes_of_interest ({len(sizes_of_interest)}) and the "
                             f"head's levels ({len(head.scales)}) must have the same length")
        self.head = head
        self.num_classes = head.num_classes
        self.strides = tuple(int(s) for s in strides)
        self.sizes_of_interest = tuple((float(lo), float(hi)) for lo, hi in sizes_of_interest)
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.pre_nms_top_n = {"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test}
        self.post_nms_top_n = {"training": post_nms_top_n_train, "testing": post_nms_top_n_test}

    def forward(self, features: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                targets: list[dict] | None = None) -> tuple[list[dict], dict[str, Tensor]]:
        cls_logits, box_regression, centerness = self.head(features)
        feature_sizes = [tuple(f.shape[-2:]) for f in features]
        points, point_strides, size_ranges, level_sizes = self._points(feature_sizes, cls_logits)
        mode = "training" if self.training else "testing"
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses = self.losses(cls_logits, box_regression, centerness, points, point_strides, size_ranges, targets)
        with torch.no_grad():
            detections = self.postprocess(cls_logits.detach(), box_regression.detach(), centerness.detach(),
                                          points, point_strides, level_sizes, image_sizes,
                                          self.pre_nms_top_n[mode], self.post_nms_top_n[mode])
        return detections, losses

    def _points(self, feature_sizes: list[tuple[int, int]], like: Tensor):
        """Every level's points concatenated, with each point's stride and size range, and the level sizes."""
        points, point_strides, size_ranges = ops.fcos_level_inputs(feature_sizes, self.strides, self.sizes_of_interest,
                                                                   dtype=like.dtype, device=like.device)
        return points, point_strides, size_ranges, [h * w for h, w in feature_sizes]

    def losses(self, cls_logits: Tensor, box_regression: Tensor, centerness: Tensor, points: Tensor,
               point_strides: Tensor, size_ranges: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        labels, reg_targets, _ = ops.fcos_targets_batched(
            points, point_strides, size_ranges, [t["boxes"].to(points.dtype) for t in targets],
            [t["labels"] for t in targets], None, self.num_classes, self.center_sampling_radius)
        # Regression is learned in stride units so that every level sees targets of similar scale.
        reg_targets = reg_targets / point_strides[:, None]

        positive = labels != self.num_classes
        num_positive = positive.sum().clamp(min=1).to(cls_logits.dtype)
        class_targets = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].to(cls_logits.dtype)
        focal = sigmoid_focal_loss(cls_logits, class_targets, self.focal_alpha, self.focal_gamma)
        loss_cls = focal.sum() / num_positive

        reg_targets = reg_targets[positive]
        centerness_targets = ops.fcos_centerness(reg_targets)
        loss_loc = ((giou_loss_ltrb(box_regression[positive], reg_targets) * centerness_targets).sum()
                    / centerness_targets.sum().clamp(min=1e-6))
        loss_ctr = F.binary_cross_entropy_with_logits(centerness[positive], centerness_targets,
                                                      reduction="sum") / num_positive
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}

    def top_candidates(self, cls_logits: Tensor, centerness: Tensor, level_sizes: list[int],
                       pre_nms_top_n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each level's ``pre_nms_top_n`` best (point, class) pairs by class x centerness probability, as
        fixed-size ``[B, K]`` ranking scores (-1 for pairs below ``score_thresh``), point and class indices."""
        num_classes = self.num_classes
        probs = cls_logits.sigmoid()
        candidates = probs > self.score_thresh
        ranking = torch.where(candidates, probs * centerness.sigmoid()[..., None], -1.0)
        kept_scores, kept_points, kept_classes = [], [], []
        start = 0
        for size in level_sizes:
            level = ranking[:, start:start + size].flatten(1)  # [B, size * C], class fastest
            top, index = level.topk(min(pre_nms_top_n, level.shape[1]), dim=1)
            kept_scores.append(top)
            kept_points.append(torch.div(index, num_classes, rounding_mode="floor") + start)
            kept_classes.append(index % num_classes)
            start += size
        return tuple(torch.cat(t, dim=1) for t in (kept_scores, kept_points, kept_classes))

    def postprocess(self, cls_logits: Tensor, box_regression: Tensor, centerness: Tensor, points: Tensor,
                    point_strides: Tensor, level_sizes: list[int], image_sizes: Sequence[tuple[int, int]],
                    pre_nms_top_n: int, post_nms_top_n: int) -> list[dict]:
        """Threshold the class probability, keep each level's ``pre_nms_top_n`` best (point, class) pairs by
        class x centerness, decode, clip, then one class-aware NMS over all images and classes."""
        num_images, num_classes = cls_logits.shape[0], self.num_classes
        scores, point_index, classes = self.top_candidates(cls_logits, centerness, level_sizes, pre_nms_top_n)
        image_index = torch.arange(num_images, device=scores.device)[:, None].expand_as(scores)
        valid = scores >= 0  # non-candidates ranked -1
        scores, point_index = scores[valid], point_index[valid]
        classes, image_index = classes[valid], image_index[valid]

        boxes = decode_points(box_regression, points, point_strides, image_index, point_index)
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # (h, w) per image
        boxes = clip_boxes_per_image(boxes, sizes[image_index])
        non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[non_empty], scores[non_empty].sqrt()
        classes, image_index = classes[non_empty], image_index[non_empty]

        keep = ops.batched_nms(boxes, scores, image_index * num_classes + classes, self.nms_thresh)
        keep, counts = keep_first_per_image(keep, image_index[keep], post_nms_top_n, num_images)
        detections = []
        for image_keep in keep.split(counts):
            detections.append({"boxes": boxes[image_keep], "scores": scores[image_keep],
                               "labels": classes[image_keep]})
        return detections
