"""Faster R-CNN and Mask R-CNN with a ResNet-FPN backbone (torchvision's ``GeneralizedRCNN``).

``faster_rcnn_resnet50_fpn`` / ``mask_rcnn_resnet50_fpn`` have torchvision's architecture, defaults and
parameter names: a torchvision state dict passed through ``pydet.convert.from_torchvision`` loads with
``strict=True`` and gives the same detections. The ``*_resnet18_fpn`` presets are small models for
training from scratch on a CPU (short side 320, narrower heads, whole backbone trainable with BatchNorm
that learns its statistics, as torchvision builds its detectors when no pretrained weights are loaded).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from ..convert.detectron2 import from_detectron2, is_detectron2_rcnn
from ..convert.torchvision import from_torchvision
from ..modeling.anchor_generator import AnchorGenerator
from ..modeling.backbones.resnet import resnet_fpn_backbone
from ..modeling.layers import FrozenBatchNorm2d, conv_with_weights, fold_batchnorm
from ..modeling.poolers import MultiScaleRoIAlign
from ..modeling.roi_heads import FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from ..modeling.rpn import RegionProposalNetwork, RPNHead
from ..modeling.transform import IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform, check_images_and_targets
from .registry import Converter, ModelSpec


class GeneralizedRCNN(nn.Module):
    """transform -> backbone -> RPN -> RoI heads, with torchvision's calling convention.

    Training (``model.train()``, targets required): returns ``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg`` (and ``loss_mask``). Images may have no ground-truth box
    (all their samples are negatives). A ground-truth box with zero or negative width or height, or a
    non-finite coordinate, raises ``ValueError`` naming the image and the box (as torchvision does); so
    does a label outside ``[0, num_classes)``.

    Eval: one dict per image with ``boxes [D, 4]`` in the input image's pixels, ``scores [D]``,
    ``labels [D]`` int64 and for mask models ``masks [D, 1, H, W]`` float probabilities pasted into the
    input image with ``pydet.ops.paste_masks``; with ``box_relative_masks = True`` they stay box-relative
    instead, as ``mask_probs [D, M, M]`` (for ``pydet.ops.paste_masks_rle``, which never needs full-frame masks).
    """

    box_relative_masks = False

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: RegionProposalNetwork,
                 roi_heads: RoIHeads, num_classes: int):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            check_images_and_targets(images, targets, need_masks=self.roi_heads.has_mask,
                                     num_classes=self.num_classes)
        else:
            check_images_and_targets(images, None)
            targets = None
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        images_tensor = batch.tensors
        if not self.training:
            # Inference runs the backbone, FPN and RPN head (the layout propagates through them) on
            # channels-last (NHWC) tensors, the layout oneDNN's CPU kernels compute in natively: on NCHW
            # each convolution would reorder its input and output. cuDNN has native NHWC kernels too,
            # and pydet's RoIAlign reads either layout. Training keeps the default layout.
            images_tensor = images_tensor.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images_tensor)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**head_losses, **rpn_losses}
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        for det, size in zip(detections, original_sizes):
            if "masks" in det and self.box_relative_masks:
                det["mask_probs"] = det.pop("masks")[:, 0]
            elif "masks" in det:
                det["masks"] = ops.paste_masks(det["masks"][:, 0], det["boxes"], size, threshold=None)[:, None]
        return detections

    def export_module(self, image_size=None, max_detections: int = 100) -> nn.Module:
        """The deployment module of fixed-size ``image_size`` inputs (default: a square of the short side the
        transform resizes to); see :mod:`pydet.deploy`. Shares this model's weights and puts it in eval mode."""
        from ..deploy.rcnn import RCNNExport
        return RCNNExport(self, image_size or self.transform.min_size[-1], max_detections)

    @torch.no_grad()
    def fuse(self) -> "GeneralizedRCNN":
        """Fold every BatchNorm of the backbone (frozen, or the running statistics of a trainable one)
        into the convolution before it, for deployment.

        The eval forward already folds them on the fly (``pydet.modeling.layers.conv_norm``), with the
        same arithmetic; fusing only saves recomputing the folded weights at each call (a few ms) and
        leaves plain convolutions, for export. The state dict changes (BatchNorm buffers become conv
        biases): load weights first, and do not train the fused model.
        """
        if any(isinstance(m, nn.BatchNorm2d) and m.training for m in self.backbone.modules()):
            raise RuntimeError("fuse() folds BatchNorm2d running statistics: call model.eval() first")
        for module in list(self.backbone.modules()):
            children = dict(module.named_children())
            pairs = [(f"conv{i}", f"bn{i}") for i in range(1, 4)] + [("0", "1")]  # ResNet stem/blocks, downsample
            for conv_name, bn_name in pairs:
                conv, bn = children.get(conv_name), children.get(bn_name)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                    setattr(module, conv_name, conv_with_weights(conv, *fold_batchnorm(conv, bn)))
                    setattr(module, bn_name, nn.Identity())
        return self


_TORCHVISION_DEFAULTS: dict[str, Any] = {
    "min_size": 800, "max_size": 1333, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
    "rpn_pre_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000, "rpn_post_nms_top_n_test": 1000,
    "rpn_nms_thresh": 0.7, "rpn_fg_iou_thresh": 0.7, "rpn_bg_iou_thresh": 0.3,
    "rpn_batch_size_per_image": 256, "rpn_positive_fraction": 0.5, "rpn_score_thresh": 0.0,
    "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_detections_per_img": 100,
    "box_fg_iou_thresh": 0.5, "box_bg_iou_thresh": 0.5, "box_batch_size_per_image": 512,
    "box_positive_fraction": 0.25, "bbox_reg_weights": None, "trainable_backbone_layers": 3,
    # Settings where detectron2 differs (see _DETECTRON2_STYLE); torchvision's values here.
    "stride_in_1x1": False, "round_anchors": True, "anchor_strides": None, "roi_align_aligned": False,
    "roi_sampling_ratio": 2, "roi_level_rule": "torchvision", "rpn_min_size": 1e-3, "rpn_strict_min_size": False,
    "rpn_nms_on_logits": False, "box_min_size": 1e-2, "clip_detections": False, "resize_rule": "torchvision",
    "rpn_smooth_l1_beta": 1 / 9, "rpn_normalize_by_batch_size": False, "box_smooth_l1_beta": 1 / 9,
}

# style="detectron2": detectron2's R-CNN FPN (Base-RCNN-FPN.yaml and its defaults.py) where it differs from
# torchvision: its resize (size rounded, antialiased like PIL); the MSRA ResNet (stride in the 1x1 conv);
# anchors not rounded, at fixed strides 4 ... 64 (torchvision derives P6's stride from the padded image and
# gets 61 at 800x1088); ROIAlignV2 (aligned, adaptive sampling) with its level rule; RPN proposals strictly
# non-empty, ranked by logits; no minimum box size before the final NMS, but boxes clipped to the input
# image and empty ones dropped after it; in training 1000 proposals per image, L1 box losses and RPN losses
# divided by the anchors sampled for (256 per image). Its input normalisation (BGR, 0-255) and predictor
# layouts (background last, no background box or mask row) are converted with the weights
# (pydet.convert.from_detectron2).
_DETECTRON2_STYLE: dict[str, Any] = {
    "stride_in_1x1": True, "round_anchors": False, "anchor_strides": (4, 8, 16, 32, 64), "roi_align_aligned": True,
    "roi_sampling_ratio": 0, "roi_level_rule": "detectron2", "rpn_min_size": 0.0, "rpn_strict_min_size": True,
    "rpn_nms_on_logits": True, "box_min_size": 0.0, "clip_detections": True, "resize_rule": "detectron2",
    "rpn_post_nms_top_n_train": 1000,
    "rpn_smooth_l1_beta": 0.0, "rpn_normalize_by_batch_size": True, "box_smooth_l1_beta": 0.0,
}
STYLES = {"torchvision": {}, "detectron2": _DETECTRON2_STYLE}

# Small presets train from scratch: every backbone stage trains, with trainable BatchNorm (frozen identity
# statistics would leave a from-scratch backbone unnormalised), and fewer proposals and RoIs keep a CPU
# step short.
_SMALL_DEFAULTS: dict[str, Any] = {
    **_TORCHVISION_DEFAULTS, "min_size": 320, "max_size": 533, "trainable_backbone_layers": 5,
    "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 1000,
    "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 500, "box_batch_size_per_image": 256,
}


def build_rcnn(*, depth: int, num_classes: int, with_masks: bool, defaults: dict[str, Any],
               overrides: dict[str, Any], style: str = "torchvision", fpn_channels: int = 256,
               representation_size: int = 1024, mask_channels: int = 256, norm_layer=FrozenBatchNorm2d) -> GeneralizedRCNN:
    """Assemble a Faster (or Mask) R-CNN; ``overrides`` use torchvision's keyword names and win over the
    settings ``style`` ("torchvision" or "detectron2") sets."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(map(repr, STYLES))}, got {style!r}")
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; accepted: "
                        f"{', '.join(sorted(defaults))}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
    cfg = {**defaults, **STYLES[style], **overrides}
    backbone = resnet_fpn_backbone(depth, trainable_layers=cfg["trainable_backbone_layers"], out_channels=fpn_channels,
                                   norm_layer=norm_layer, stride_in_1x1=cfg["stride_in_1x1"])
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),),
                              rounded=cfg["round_anchors"], strides=cfg["anchor_strides"])
    rpn = RegionProposalNetwork(
        anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=cfg["rpn_fg_iou_thresh"], bg_iou_thresh=cfg["rpn_bg_iou_thresh"],
        batch_size_per_image=cfg["rpn_batch_size_per_image"], positive_fraction=cfg["rpn_positive_fraction"],
        pre_nms_top_n_train=cfg["rpn_pre_nms_top_n_train"], pre_nms_top_n_test=cfg["rpn_pre_nms_top_n_test"],
        post_nms_top_n_train=cfg["rpn_post_nms_top_n_train"], post_nms_top_n_test=cfg["rpn_post_nms_top_n_test"],
        nms_thresh=cfg["rpn_nms_thresh"], score_thresh=cfg["rpn_score_thresh"], min_size=cfg["rpn_min_size"],
        strict_min_size=cfg["rpn_strict_min_size"], nms_on_logits=cfg["rpn_nms_on_logits"],
        smooth_l1_beta=cfg["rpn_smooth_l1_beta"], normalize_by_batch_size=cfg["rpn_normalize_by_batch_size"])
    levels = ["0", "1", "2", "3"]

    def pooler(size: int) -> MultiScaleRoIAlign:
        return MultiScaleRoIAlign(levels, size, cfg["roi_sampling_ratio"], aligned=cfg["roi_align_aligned"],
                                  assign_rule=cfg["roi_level_rule"])

    mask_parts = {}
    if with_masks:
        mask_parts = {"mask_roi_pool": pooler(14),
                      "mask_head": MaskRCNNHeads(fpn_channels, (mask_channels,) * 4),
                      "mask_predictor": MaskRCNNPredictor(mask_channels, mask_channels, num_classes)}
    roi_heads = RoIHeads(
        pooler(7), TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        FastRCNNPredictor(representation_size, num_classes),
        fg_iou_thresh=cfg["box_fg_iou_thresh"], bg_iou_thresh=cfg["box_bg_iou_thresh"],
        batch_size_per_image=cfg["box_batch_size_per_image"], positive_fraction=cfg["box_positive_fraction"],
        bbox_reg_weights=cfg["bbox_reg_weights"], score_thresh=cfg["box_score_thresh"],
        nms_thresh=cfg["box_nms_thresh"], detections_per_img=cfg["box_detections_per_img"],
        min_box_size=cfg["box_min_size"], smooth_l1_beta=cfg["box_smooth_l1_beta"], **mask_parts)
    transform = GeneralizedRCNNTransform(cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"],
                                         resize_rule=cfg["resize_rule"], clip_output=cfg["clip_detections"])
    return GeneralizedRCNN(transform, backbone, rpn, roi_heads, num_classes)


def faster_rcnn_resnet50_fpn(num_classes: int = 91, *, style: str = "torchvision", **overrides) -> GeneralizedRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (41,755,286 parameters at 91 classes); ``style="detectron2"``
    is detectron2's ``faster_rcnn_R_50_FPN`` (weights: ``pydet.convert.from_detectron2``, ``num_classes=81``)."""
    return build_rcnn(depth=50, num_classes=num_classes, with_masks=False, defaults=_TORCHVISION_DEFAULTS,
                      overrides=overrides, style=style)


def mask_rcnn_resnet50_fpn(num_classes: int = 91, *, style: str = "torchvision", **overrides) -> GeneralizedRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (44,401,393 parameters at 91 classes); ``style="detectron2"``
    is detectron2's ``mask_rcnn_R_50_FPN`` (weights: ``pydet.convert.from_detectron2``, ``num_classes=81``)."""
    return build_rcnn(depth=50, num_classes=num_classes, with_masks=True, defaults=_TORCHVISION_DEFAULTS,
                      overrides=overrides, style=style)


def faster_rcnn_resnet18_fpn(num_classes: int = 91, *, style: str = "torchvision", **overrides) -> GeneralizedRCNN:
    """Small Faster R-CNN: ResNet-18 with BatchNorm2d, 128-channel FPN, 512-wide box head, short side 320."""
    return build_rcnn(depth=18, num_classes=num_classes, with_masks=False, defaults=_SMALL_DEFAULTS,
                      overrides=overrides, style=style, fpn_channels=128, representation_size=512, norm_layer=nn.BatchNorm2d)


def mask_rcnn_resnet18_fpn(num_classes: int = 91, *, style: str = "torchvision", **overrides) -> GeneralizedRCNN:
    """Small Mask R-CNN: the small Faster R-CNN plus a 64-channel mask head."""
    return build_rcnn(depth=18, num_classes=num_classes, with_masks=True, defaults=_SMALL_DEFAULTS,
                      overrides=overrides, style=style, fpn_channels=128, representation_size=512, mask_channels=64,
                      norm_layer=nn.BatchNorm2d)


def _detectron2_build_kwargs(state) -> dict:
    classes = state.get("roi_heads.box_predictor.cls_score.weight")
    return {"style": "detectron2", **({"num_classes": int(classes.shape[0])} if classes is not None else {})}


# torchvision's label convention (0 is the background, COCO's 91 ids); the ResNet-50 models load torchvision's
# checkpoints and detectron2's model zoo (which builds them with style="detectron2").
_R50_CONVERTERS = (Converter("torchvision R-CNN", from_torchvision),
                   Converter("detectron2 R-CNN", from_detectron2, recognise=is_detectron2_rcnn,
                             build_kwargs=_detectron2_build_kwargs))
FASTER_RCNN_SPEC = ModelSpec(has_masks=False, label_offset=1, num_classes=91, converters=_R50_CONVERTERS)
MASK_RCNN_SPEC = ModelSpec(has_masks=True, label_offset=1, num_classes=91, converters=_R50_CONVERTERS)
SMALL_FASTER_RCNN_SPEC = ModelSpec(has_masks=False, label_offset=1, num_classes=91)
SMALL_MASK_RCNN_SPEC = ModelSpec(has_masks=True, label_offset=1, num_classes=91)
