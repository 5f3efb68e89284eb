"""CenterMask2 (Lee & Park, CenterMask, CVPR 2020; detectron2 implementation youngwanLEE/centermask2).

Backbone (VoVNetV2 or ResNet-50) -> FPN on stages 3-5 with P6/P7 from P5 -> FCOS detections ->
RoIAlign 14x14 on P3-P5 with CenterMask's scale-adaptive level rule -> SAG-Mask 28x28 masks ->
MaskIoU re-scoring. In training the mask branch learns from FCOS's detections plus the ground-truth
boxes, matched at IoU 0.5 and subsampled (foreground only); at inference it runs on the detections.
``lite=True`` is CenterMask-Lite: 128-channel FPN and heads, 2-conv towers, 600 px images.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..modeling import LastLevelP6P7, MultiScaleRoIAlign
from ..modeling.backbones.resnet import BackboneWithFPN, ResNet
from ..modeling.backbones.vovnet import VoVNet
from ..modeling.fcos import FCOS, FCOSHead
from ..modeling.fpn import FeaturePyramidNetwork
from ..modeling.layers import norm_layer
from ..modeling.matcher import BalancedPositiveNegativeSampler, Matcher
from ..modeling.sag_mask import (MaskIoUHead, SAGMaskHead, mask_area_inside_box, mask_targets, maskiou_loss,
                                 maskiou_targets)
from ..modeling.transform import GeneralizedRCNNTransform, check_images_and_targets
from . import register

LEVELS = ("p3", "p4", "p5", "p6", "p7")
MASK_LEVELS = ("p3", "p4", "p5")
BACKBONES = ("vovnet19", "vovnet19_slim", "vovnet39", "vovnet57", "vovnet99", "resnet50")


class CenterMask2(nn.Module):
    """``model(images, targets=None)`` with torchvision's calling convention (labels ``0..num_classes-1``).

    ``backbone`` maps a ``[B, 3, H, W]`` batch to five feature maps (P3-P7, strides 8-128) with
    ``backbone.out_channels`` channels. The keyword arguments are the settings of the official configs.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 80, *,
                 min_size: int | Sequence[int] = (640, 672, 704, 736, 768, 800), max_size: int = 1333,
                 head_convs: int = 4, mask_convs: int = 4, maskiou_convs: int = 4, mask_channels: int = 256,
                 center_sampling_radius: float = 1.5, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.6,
                 pre_nms_top_n_train: int = 1000, pre_nms_top_n_test: int = 1000,
                 post_nms_top_n_train: int = 100, box_detections_per_img: int = 50,
                 box_fg_iou_thresh: float = 0.5, box_batch_size_per_image: int = 512,
                 box_positive_fraction: float = 0.25, mask_pooler_resolution: int = 14,
                 maskiou_loss_weight: float = 1.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.transform = GeneralizedRCNNTransform(min_size, max_size)
        self.backbone = backbone
        channels = backbone.out_channels
        self.fcos = FCOS(FCOSHead(channels, num_classes, num_convs=head_convs, num_levels=len(LEVELS)),
                         center_sampling_radius=center_sampling_radius, score_thresh=box_score_thresh,
                         nms_thresh=box_nms_thresh, pre_nms_top_n_train=pre_nms_top_n_train,
                         pre_nms_top_n_test=pre_nms_top_n_test, post_nms_top_n_train=post_nms_top_n_train,
                         post_nms_top_n_test=box_detections_per_img)
        self.mask_pooler = MultiScaleRoIAlign(list(MASK_LEVELS), mask_pooler_resolution, 0,
                                              assign_rule="centermask", aligned=True)
        self.mask_head = SAGMaskHead(channels, num_classes, num_convs=mask_convs, conv_channels=mask_channels)
        self.maskiou_head = MaskIoUHead(channels, num_classes, num_convs=maskiou_convs, conv_channels=mask_channels,
                                        resolution=mask_pooler_resolution)
        self.matcher = Matcher(box_fg_iou_thresh, box_fg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(box_batch_size_per_image, box_positive_fraction)
        self.maskiou_loss_weight = maskiou_loss_weight
        self.mask_pooler_resolution = mask_pooler_resolution

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            check_images_and_targets(images, targets, need_masks=True)
            self._check_target_values(images, targets)
        else:
            check_images_and_targets(images, None)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        features = dict(zip(LEVELS, self.backbone(image_list.tensors).values()))
        detections, losses = self.fcos([features[name] for name in LEVELS], image_list.image_sizes, targets)
        if self.training:
            losses.update(self._mask_losses(features, detections, targets, image_list.image_sizes))
            return losses
        detections = self._predict_masks(features, detections, image_list.image_sizes)
        return self._postprocess(detections, image_list.image_sizes, original_sizes)

    def export_module(self, image_size=None, max_detections: int = 100) -> nn.Module:
        """The deployment module of fixed-size ``image_size`` inputs (default: a square of the test size);
        see :mod:`pydet.deploy`. Shares this model's weights and puts it in eval mode."""
        from ..deploy.centermask2 import CenterMask2Export
        return CenterMask2Export(self, image_size or self.transform.min_size[-1], max_detections)

    def _check_target_values(self, images: list[Tensor], targets: list[dict]) -> None:
        for i, (image, target) in enumerate(zip(images, targets)):
            boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"targets[{i}]['labels'] must be in [0, {self.num_classes - 1}] "
                                 f"(CenterMask2 has no background class), got {labels.tolist()}")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]['boxes'] must be finite")
            degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if degenerate.any():
                raise ValueError(f"targets[{i}]['boxes'] must have positive width and height, got "
                                 f"{boxes[degenerate].tolist()}")
            if masks.shape[-2:] != image.shape[-2:]:
                raise ValueError(f"targets[{i}]['masks'] must match the image's size {tuple(image.shape[-2:])}, "
                                 f"got {tuple(masks.shape[-2:])}")

    def _sample_foreground(self, detections: list[dict], targets: list[dict]):
        """Per image, the proposals (detections and ground-truth boxes) sampled as foreground, with their
        matched ground-truth index."""
        boxes, matched = [], []
        for det, target in zip(detections, targets):
            gt_boxes = target["boxes"].to(det["boxes"].dtype)
            proposals = torch.cat([det["boxes"], gt_boxes])
            matches = self.matcher(ops.box_iou(gt_boxes, proposals))  # all -1 without ground truth
            positive, _ = self.sampler((matches >= 0).to(torch.int64))
            index = torch.nonzero(positive).squeeze(1)
            boxes.append(proposals[index])
            matched.append(matches[index])
        return boxes, matched

    def _mask_losses(self, features: dict[str, Tensor], detections: list[dict], targets: list[dict],
                     image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        boxes, matched = self._sample_foreground(detections, targets)
        roi_features = self._pool(features, boxes, image_sizes)
        mask_logits = self.mask_head(roi_features)
        size = mask_logits.shape[-1]
        labels, gt_masks, inside = [], [], []
        for image_boxes, image_matched, target in zip(boxes, matched, targets):
            labels.append(target["labels"][image_matched])
            if len(image_boxes):
                gt_masks.append(mask_targets(target["masks"], image_boxes, image_matched, size))
                inside.append(mask_area_inside_box(target["masks"], image_boxes, image_matched))
        labels = torch.cat(labels)
        if len(labels) == 0:  # no foreground in the whole batch: zero losses that still reach both heads
            empty_iou = self.maskiou_head(roi_features, mask_logits[:, :1].sigmoid())
            return {"loss_mask": mask_logits.sum() * 0, "loss_maskiou": empty_iou.sum() * 0}
        gt_masks, inside = torch.cat(gt_masks), torch.cat(inside)
        rows = torch.arange(len(labels), device=labels.device)
        selected_logits = mask_logits[rows, labels]
        loss_mask = F.binary_cross_entropy_with_logits(selected_logits, gt_masks.to(selected_logits.dtype))
        iou_targets = maskiou_targets(selected_logits.detach(), gt_masks, inside.to(selected_logits.dtype))
        predicted_iou = self.maskiou_head(roi_features, selected_logits.sigmoid()[:, None])[rows, labels]
        loss_maskiou = self.maskiou_loss_weight * maskiou_loss(predicted_iou, iou_targets)
        return {"loss_mask": loss_mask, "loss_maskiou": loss_maskiou}

    def _pool(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        if sum(len(b) for b in boxes) == 0:
            p3 = features[MASK_LEVELS[0]]
            return p3.new_zeros((0, p3.shape[1], self.mask_pooler_resolution, self.mask_pooler_resolution))
        return self.mask_pooler({name: features[name] for name in MASK_LEVELS}, boxes, image_sizes)

    def _predict_masks(self, features: dict[str, Tensor], detections: list[dict],
                       image_sizes: list[tuple[int, int]]) -> list[dict]:
        boxes = [det["boxes"] for det in detections]
        roi_features = self._pool(features, boxes, image_sizes)
        mask_logits = self.mask_head(roi_features)
        labels = torch.cat([det["labels"] for det in detections])
        rows = torch.arange(len(labels), device=labels.device)
        mask_probs = mask_logits[rows, labels].sigmoid()[:, None]
        predicted_iou = self.maskiou_head(roi_features, mask_probs)[rows, labels]
        counts = [len(b) for b in boxes]
        for det, probs, iou in zip(detections, mask_probs.split(counts), predicted_iou.split(counts)):
            det["masks"] = probs
            det["scores"] = det["scores"] * iou
        return detections

    def _postprocess(self, detections: list[dict], image_sizes: list[tuple[int, int]],
                     original_sizes: list[tuple[int, int]]) -> list[dict]:
        detections = self.transform.postprocess(detections, image_sizes, original_sizes)
        for det, (height, width) in zip(detections, original_sizes):
            det["masks"] = ops.paste_masks(det["masks"][:, 0], det["boxes"], (height, width), threshold=None)[:, None]
        return detections


def _backbone(name: str, out_channels: int, norm: type[nn.Module]) -> BackboneWithFPN:
    if name == "resnet50":
        body = ResNet(50, norm_layer=norm, returned_layers=(2, 3, 4))
        body.freeze(3)  # detectron2's FREEZE_AT=2: the stem and res2 stay at their pretrained values
    else:
        depth, _, variant = name[len("vovnet"):].partition("_")
        body = VoVNet(int(depth), slim=variant == "slim", norm_layer=norm, returned_stages=(3, 4, 5))
    fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels,
                                extra_blocks=LastLevelP6P7(out_channels, out_channels, use_p5=True))
    return BackboneWithFPN(body, fpn)


@register("centermask2")
def centermask2(backbone: str = "vovnet39", num_classes: int = 80, lite: bool = False, *,
                backbone_norm: str = "frozen_bn", **overrides) -> CenterMask2:
    """CenterMask2 on ``backbone`` (``vovnet19/39/57/99`` = VoVNetV2-eSE, ``vovnet19_slim``, or ``resnet50``).

    ``lite=True`` gives CenterMask-Lite: FPN and heads at 128 channels, 2-conv FCOS towers, mask and
    MaskIoU heads, images resized to 580-600 px (600 at test) with a 1000 px cap. ``overrides`` are
    :class:`CenterMask2` keyword arguments (``min_size``, ``max_size``, ``box_score_thresh``,
    ``box_nms_thresh``, ``box_detections_per_img``, ``pre_nms_top_n_test``, ...). ``backbone_norm``:
    ``"frozen_bn"`` (the official configs, for pretrained backbones) or ``"bn"`` (training from scratch).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if lite:
        settings = dict(min_size=(580, 600), max_size=1000, head_convs=2, mask_convs=2, maskiou_convs=2,
                        mask_channels=128)
        channels = 128
    else:
        settings, channels = {}, 256
    settings.update(overrides)
    return CenterMask2(_backbone(backbone, channels, norm_layer(backbone_norm)), num_classes, **settings)


for _name in BACKBONES:
    register(f"centermask2_{_name}")(partial(centermask2, _name))
for _name in ("vovnet19_slim", "vovnet19", "vovnet39"):
    register(f"centermask2_lite_{_name}")(partial(centermask2, _name, lite=True))
