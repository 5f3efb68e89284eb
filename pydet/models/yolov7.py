"""YOLOv7 and YOLOv7-tiny (Wang, Bochkovskiy, Liao, 2022), layer for layer as the official training configs.

The network is ``self.model``, a :class:`~pydet.modeling.yolo.LayerGraph` built from the layer tables below,
which list the same layers in the same order as the official ``cfg/training/yolov7.yaml`` and
``yolov7-tiny.yaml``: state-dict keys are the official ones (``model.0.conv.weight`` ...
``model.105.ia.0.implicit``), so official weights load after :func:`pydet.convert.from_yolov7`.

Around the network the model does what the official ``detect.py`` / ``train.py`` do: letterbox (long side to
``img_size``, centred padding with grey 114/255, to a multiple of 32 or to a square), decode the head, score
``objectness x class probability``, class-aware NMS (``pydet.ops.multiclass_nms``, batched) and map boxes back
to each input image. In training it letterboxes the targets the same way and returns the official losses.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..modeling.yolo import IDetect, build_layer_graph, fuse_modules
from ..modeling.transform import check_images_and_targets
from ..modeling.yolo_loss import ComputeLoss, ComputeLossOTA
from ..convert.yolov7 import from_yolov7
from .registry import Converter, ModelSpec, TrainingDefaults

STRIDES = (8, 16, 32)
PAD_VALUE = 114 / 255
YOLOV7_ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
YOLOV5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
# The official test.py settings for COCO mAP: ``yolov7(**EVAL_PRESET)``.
EVAL_PRESET = {"box_score_thresh": 0.001, "box_nms_thresh": 0.65, "multi_label": True}


def _elan(width: int, out: int) -> list[tuple]:
    """Backbone ELAN: two 1x1 branches, a chain of four 3x3 convs, four outputs concatenated, 1x1 transition."""
    return [(-1, "conv", width, 1, 1), (-2, "conv", width, 1, 1), *[(-1, "conv", width, 3, 1)] * 4,
            ([-1, -3, -5, -6], "concat"), (-1, "conv", out, 1, 1)]


def _elan_h(width: int, out: int) -> list[tuple]:
    """Head ELAN-H: as ELAN with half-width 3x3 convs and all six outputs concatenated."""
    return [(-1, "conv", width, 1, 1), (-2, "conv", width, 1, 1), *[(-1, "conv", width // 2, 3, 1)] * 4,
            ([-1, -2, -3, -4, -5, -6], "concat"), (-1, "conv", out, 1, 1)]


def _mp1(width: int, route: Sequence[int] = ()) -> list[tuple]:
    """MP-1 down-sampling: a max-pool branch beside a strided 3x3 branch (plus a route in the head)."""
    return [(-1, "mp"), (-1, "conv", width, 1, 1), (-3, "conv", width, 1, 1), (-1, "conv", width, 3, 2),
            ([-1, -3, *route], "concat")]


def _elan_tiny(width: int, out: int) -> list[tuple]:
    """Tiny ELAN: two 1x1 branches, two 3x3 convs, four outputs concatenated, 1x1 transition."""
    return [(-1, "conv", width, 1, 1), (-2, "conv", width, 1, 1), *[(-1, "conv", width, 3, 1)] * 2,
            ([-1, -2, -3, -4], "concat"), (-1, "conv", out, 1, 1)]


# Rows (from, kind, *args); comments give the official layer index of each block's first row.
YOLOV7_LAYERS = (
    [(-1, "conv", 32, 3, 1), (-1, "conv", 64, 3, 2), (-1, "conv", 64, 3, 1), (-1, "conv", 128, 3, 2)]  # 0
    + _elan(64, 256)                                                  # 4, P2/4 out 11
    + _mp1(128) + _elan(128, 512)                                     # 12, P3/8 out 24
    + _mp1(256) + _elan(256, 1024)                                    # 25, P4/16 out 37
    + _mp1(512) + _elan(256, 1024)                                    # 38, P5/32 out 50
    + [(-1, "sppcspc", 512), (-1, "conv", 256, 1, 1), (-1, "upsample"),  # 51
       (37, "conv", 256, 1, 1), ([-1, -2], "concat")]
    + _elan_h(256, 256)                                               # 56, out 63
    + [(-1, "conv", 128, 1, 1), (-1, "upsample"), (24, "conv", 128, 1, 1), ([-1, -2], "concat")]  # 64
    + _elan_h(128, 128)                                               # 68, P3 out 75
    + _mp1(128, [63]) + _elan_h(256, 256)                             # 76, P4 out 88
    + _mp1(256, [51]) + _elan_h(512, 512)                             # 89, P5 out 101
    + [(75, "repconv", 256, 3, 1), (88, "repconv", 512, 3, 1), (101, "repconv", 1024, 3, 1),  # 102
       ([102, 103, 104], "idetect")]                                  # 105
)

YOLOV7_TINY_LAYERS = (
    [(-1, "conv", 32, 3, 2), (-1, "conv", 64, 3, 2)]                  # 0
    + _elan_tiny(32, 64) + [(-1, "mp")]                               # 2, out 7; 8
    + _elan_tiny(64, 128) + [(-1, "mp")]                              # 9, P3/8 out 14; 15
    + _elan_tiny(128, 256) + [(-1, "mp")]                             # 16, P4/16 out 21; 22
    + _elan_tiny(256, 512)                                            # 23, P5/32 out 28
    + [(-1, "conv", 256, 1, 1), (-2, "conv", 256, 1, 1),              # 29: SPP of max-pools, CSP style
       (-1, "sp", 5), (-2, "sp", 9), (-3, "sp", 13), ([-1, -2, -3, -4], "concat"),
       (-1, "conv", 256, 1, 1), ([-1, -7], "concat"), (-1, "conv", 256, 1, 1)]  # out 37
    + [(-1, "conv", 128, 1, 1), (-1, "upsample"), (21, "conv", 128, 1, 1), ([-1, -2], "concat")]  # 38
    + _elan_tiny(64, 128)                                             # 42, out 47
    + [(-1, "conv", 64, 1, 1), (-1, "upsample"), (14, "conv", 64, 1, 1), ([-1, -2], "concat")]  # 48
    + _elan_tiny(32, 64)                                              # 52, P3 out 57
    + [(-1, "conv", 128, 3, 2), ([-1, 47], "concat")] + _elan_tiny(64, 128)    # 58, P4 out 65
    + [(-1, "conv", 256, 3, 2), ([-1, 37], "concat")] + _elan_tiny(128, 256)   # 66, P5 out 73
    + [(57, "conv", 128, 3, 1), (65, "conv", 256, 3, 1), (73, "conv", 512, 3, 1),  # 74
       ([74, 75, 76], "idetect")]                                     # 77
)

# layer table, anchors, activation, loss gains of the official hyper-parameter file
VARIANTS = {
    "yolov7": (YOLOV7_LAYERS, YOLOV7_ANCHORS, "silu", {"box_gain": 0.05, "obj_gain": 0.7, "cls_gain": 0.3}),
    "yolov7-tiny": (YOLOV7_TINY_LAYERS, YOLOV5_ANCHORS, "leaky",
                    {"box_gain": 0.05, "obj_gain": 1.0, "cls_gain": 0.5}),
}


def letterbox_layout(image_sizes: Sequence[tuple[int, int]], img_size: int, *, auto: bool = True, stride: int = 32):
    """Where :func:`letterbox` puts images of these ``(h, w)`` sizes: per-image scales and resized sizes, the
    batch's ``(height, width)`` and per-image ``(left, top)`` paddings."""
    scales = [img_size / max(h, w) for h, w in image_sizes]
    resized_sizes = [(max(1, round(h * scale)), max(1, round(w * scale))) for (h, w), scale in zip(image_sizes, scales)]
    if auto:
        height = math.ceil(max(s[0] for s in resized_sizes) / stride) * stride
        width = math.ceil(max(s[1] for s in resized_sizes) / stride) * stride
    else:
        height = width = img_size
    paddings = [((width - w) // 2, (height - h) // 2) for h, w in resized_sizes]
    return scales, resized_sizes, (height, width), paddings


def letterbox(images: Sequence[Tensor], img_size: int, *, auto: bool = True, stride: int = 32,
              pad_value: float = PAD_VALUE) -> tuple[Tensor, Tensor, Tensor]:
    """Resize each image so its long side is ``img_size`` and pad all to one ``[B, 3, H, W]`` batch.

    Each image is centred in the batch shape, which is the smallest multiple of ``stride`` holding every resized
    image when ``auto``, else ``img_size x img_size``. Returns the batch, the per-image scale ``[B]`` and the
    per-image ``(left, top)`` padding ``[B, 2]``: letterboxed = original * scale + padding.
    """
    scales, resized_sizes, (height, width), paddings = letterbox_layout(
        [tuple(img.shape[-2:]) for img in images], img_size, auto=auto, stride=stride)
    ref = images[0]
    # Small host-to-device copies first, before this batch's image work is queued on the device.
    scale_tensor = torch.tensor(scales, dtype=torch.float32, device=ref.device)
    padding_tensor = torch.tensor(paddings, dtype=torch.float32, device=ref.device)
    batch = ref.new_full((len(images), 3, height, width), pad_value)
    for i, (img, (h, w), (left, top)) in enumerate(zip(images, resized_sizes, paddings)):
        if (h, w) != tuple(img.shape[-2:]):
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        batch[i, :, top:top + h, left:left + w] = img
    return batch, scale_tensor, padding_tensor


def unletterbox(boxes: Tensor, scales: Tensor, padding: Tensor, limits: Tensor) -> Tensor:
    """Boxes ``[B, D, 4]`` from letterboxed pixels back to each input image (``scales [B]``, ``padding [B, 2]``),
    clipped to ``[0, limits]`` (``[B, 1, 4]``: ``w, h, w, h``)."""
    boxes = (boxes - padding.repeat(1, 2)[:, None].to(boxes.dtype)) / scales[:, None, None]
    return torch.min(boxes.clamp(min=0), limits)


def _check_inputs(images, targets, num_classes: int, training: bool) -> None:
    if training and targets is None:
        raise ValueError("targets are required in training mode")
    # YOLOv7 trains on boxes of any size (augmentation can leave zero-width ones), as the official code
    check_images_and_targets(images, targets, num_classes=num_classes, positive_boxes=False)


class YOLOv7(nn.Module):
    """YOLOv7 detector with torchvision's calling convention (see :mod:`pydet.models`).

    Training (``model.train()``, targets given) returns ``{"loss_box", "loss_obj", "loss_cls"}``, each multiplied
    by the batch size as the official loss (their sum is the official ``loss``). Eval returns per image
    ``boxes [D, 4]`` xyxy in the input image's pixels, ``scores [D]``, ``labels`` int64 ``[D]`` in
    ``0..num_classes-1``.

    Args:
        variant: ``"yolov7"`` or ``"yolov7-tiny"``.
        img_size: letterbox size (long side), also the image size the objectness gain is scaled with.
        box_score_thresh, box_nms_thresh, box_detections_per_img: confidence threshold, NMS IoU threshold and
            detections kept per image (official detect.py: 0.25, 0.45, 300; ``EVAL_PRESET`` has test.py's).
        multi_label: keep every class whose score passes the threshold (one box per class), else only the best.
        letterbox_auto: pad batches to the smallest multiple of 32 (official detect.py) instead of a square.
        loss: ``"ota"`` (the official default, :class:`ComputeLossOTA`) or ``"plain"`` (:class:`ComputeLoss`).
        pre_nms_topk: at most this many (box, class) candidates per image enter NMS (official max_nms).
    """

    def __init__(self, variant: str = "yolov7", num_classes: int = 80, *, img_size: int = 640,
                 box_score_thresh: float = 0.25, box_nms_thresh: float = 0.45, box_detections_per_img: int = 300,
                 multi_label: bool = False, letterbox_auto: bool = True, loss: str = "ota",
                 pre_nms_topk: int = 30000):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(img_size, int) or img_size < 32 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32, got {img_size!r}")
        if loss not in ("ota", "plain"):
            raise ValueError(f"loss must be 'ota' or 'plain', got {loss!r}")
        table, anchors, act, gains = VARIANTS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.img_size = img_size
        self.box_score_thresh = box_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.box_detections_per_img = box_detections_per_img
        self.multi_label = multi_label
        self.letterbox_auto = letterbox_auto
        self.pre_nms_topk = pre_nms_topk
        self.model = build_layer_graph(table, num_classes=num_classes, anchors=anchors, strides=STRIDES, act=act)
        loss_class = ComputeLossOTA if loss == "ota" else ComputeLoss
        self.compute_loss = loss_class(self.head, img_size=img_size, **gains)
        self._grids: dict[tuple, list[Tensor]] = {}

    @property
    def head(self) -> IDetect:
        """The detection head (IDetect), the network's last layer."""
        return self.model[-1]

    def fuse(self) -> "YOLOv7":
        """Re-parameterise for deployment in place: BN into convs, RepConv into one 3x3 conv, implicit layers
        into the head convs. Uses the BN running statistics, so outputs match eval mode."""
        fuse_modules(self.model)
        return self

    def preprocess(self, images, targets=None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Letterboxed batch, scales, paddings and (with ``targets``) the official ``[T, 6]`` target rows."""
        batch, scales, padding = letterbox(list(images), self.img_size, auto=self.letterbox_auto,
                                           stride=max(STRIDES))
        if targets is None:
            return batch, scales, padding, None
        height, width = batch.shape[-2:]
        rows = []
        for i, (img, t) in enumerate(zip(images, targets)):
            h, w = img.shape[-2:]
            offset = padding[i].repeat(2).to(t["boxes"].dtype)
            limits = t["boxes"].new_tensor([w, h, w, h])
            boxes = torch.min(t["boxes"].clamp(min=0), limits) * scales[i] + offset
            xywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)
            # Boxes of no area (after clipping to the image) cannot be matched; the official data never has them.
            valid = (xywh[:, 2:] > 0).all(1)
            xywh = xywh / xywh.new_tensor([width, height, width, height])
            label = t["labels"].to(xywh.dtype)[:, None]
            rows.append(torch.cat((torch.full_like(label, i), label, xywh), 1)[valid])
        return batch, scales, padding, torch.cat(rows).float()

    def _grid(self, sizes: list[tuple[int, int]], device, dtype) -> list[Tensor]:
        key = (tuple(sizes), device, dtype)
        if key not in self._grids:
            if len(self._grids) >= 16:
                self._grids.clear()
            self._grids[key] = ops.grid_points(sizes, [1] * len(sizes), offset=0.0, dtype=dtype, device=device)
        return self._grids[key]

    def decode(self, predictions: list[Tensor], grids: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes ``[B, N, 4]`` xyxy in letterboxed pixels, objectness ``[B, N]`` and class probabilities
        ``[B, N, C]``; ``N`` runs over levels, then anchors, then cells row by row, as the official output.
        ``grids``: the cell grids of these levels (default: built and cached per size)."""
        if grids is None:
            sizes = [tuple(p.shape[2:4]) for p in predictions]
            grids = self._grid(sizes, predictions[0].device, predictions[0].dtype)
        boxes, confidences = [], []
        for p, grid, stride, anchors in zip(predictions, grids, STRIDES, self.head.anchor_grid):
            b, a, h, w, o = p.shape
            y = p.sigmoid().view(b, a, h * w, o)
            xy = (y[..., :2] * 2 - 0.5 + grid) * stride
            wh = (y[..., 2:4] * 2) ** 2 * anchors.view(1, a, 1, 2).to(y.dtype)
            boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), -1).view(b, -1, 4))
            confidences.append(y[..., 4:].reshape(b, -1, o - 4))
        confidences = torch.cat(confidences, 1)
        return torch.cat(boxes, 1), confidences[..., 0], confidences[..., 1:]

    def postprocess(self, boxes: Tensor, objectness: Tensor, class_probs: Tensor,
                    image_sizes: list[tuple[int, int]], scales: Tensor, padding: Tensor) -> list[dict[str, Tensor]]:
        """Score ``objectness x class probability``, NMS, and map the kept boxes back to each input image."""
        threshold = self.box_score_thresh
        if boxes.device.type == "cpu" and threshold >= 0:
            # A score never exceeds its objectness. On the CPU, where reading a count back costs nothing, keep
            # only boxes whose objectness passes (in their order; rows padded with zero objectness to the
            # batch's largest count): the same detections from a fraction of the work. On accelerators
            # everything stays batched and free of host synchronisation.
            passing = objectness > threshold
            counts = passing.sum(1)
            count = max(1, int(counts.max()))
            batch, num_boxes, num_classes = class_probs.shape
            if 4 * count <= num_boxes:  # gathering only pays when it drops most boxes
                image, index = passing.nonzero(as_tuple=True)
                slot = torch.arange(image.shape[0]) - (counts.cumsum(0) - counts)[image]
                rows = index.new_zeros(batch, count)
                rows[image, slot] = image * num_boxes + index
                valid = passing.new_zeros(batch, count)
                valid[image, slot] = True
                rows = rows.flatten()
                boxes = boxes.reshape(-1, 4).index_select(0, rows).view(batch, count, 4)
                class_probs = class_probs.reshape(-1, num_classes).index_select(0, rows).view(batch, count, -1)
                objectness = objectness.reshape(-1).index_select(0, rows).view(batch, count) * valid
        det_boxes, det_scores, det_labels, counts = self.nms(boxes, objectness, class_probs,
                                                             self.box_detections_per_img)
        limits = det_boxes.new_tensor([[w, h, w, h] for h, w in image_sizes])[:, None]
        det_boxes = unletterbox(det_boxes, scales, padding, limits)
        return [{"boxes": det_boxes[i, :n], "scores": det_scores[i, :n], "labels": det_labels[i, :n].long()}
                for i, n in enumerate(counts.tolist())]

    def nms(self, boxes: Tensor, objectness: Tensor, class_probs: Tensor, max_per_image: int):
        """Scores (``objectness x class probability``: every class, or the best one) and ``multiclass_nms``."""
        if self.multi_label:
            scores = class_probs * objectness[..., None]
        else:
            best, label = class_probs.max(-1, keepdim=True)
            scores = torch.zeros_like(class_probs).scatter_(-1, label, best * objectness[..., None])
        return ops.multiclass_nms(boxes, scores, self.box_score_thresh, self.box_nms_thresh, max_per_image,
                                  pre_nms_topk=self.pre_nms_topk)

    def export_module(self, image_size=None, max_detections: int = 100) -> nn.Module:
        """The deployment module of fixed-size ``image_size`` inputs (default square ``img_size``); see
        :mod:`pydet.deploy`. Shares this model's weights and puts it in eval mode."""
        from ..deploy.yolov7 import YOLOv7Export
        return YOLOv7Export(self, image_size or self.img_size, max_detections)

    def forward(self, images, targets: list[dict[str, Tensor]] | None = None):
        _check_inputs(images, targets, self.num_classes, self.training)
        if self.training:
            batch, _, _, yolo_targets = self.preprocess(images, targets)
            return self.compute_loss(self.model(batch), yolo_targets)
        batch, scales, padding, _ = self.preprocess(images)
        boxes, objectness, class_probs = self.decode(self.model(batch))
        return self.postprocess(boxes, objectness, class_probs, [tuple(img.shape[-2:]) for img in images],
                                scales, padding)


def yolov7(variant: str = "yolov7", num_classes: int = 80, **overrides) -> YOLOv7:
    """YOLOv7 (``variant="yolov7"``, 37,622,682 parameters at 80 classes) or YOLOv7-tiny (6,228,762)."""
    return YOLOv7(variant, num_classes, **overrides)


def yolov7_tiny(num_classes: int = 80, **overrides) -> YOLOv7:
    return YOLOv7("yolov7-tiny", num_classes, **overrides)


def yolov7_tiny_320(num_classes: int = 80, **overrides) -> YOLOv7:
    """YOLOv7-tiny at 320 pixels: a CPU-friendly preset for demos and tests."""
    return YOLOv7("yolov7-tiny", num_classes, **{"img_size": 320, **overrides})


def letterbox_size_kwargs(size: int) -> dict:
    """Build arguments for images of about ``size`` pixels: the letterbox side, a multiple of the 32 stride."""
    return {"img_size": max(32, -(-int(size) // 32) * 32)}


YOLOV7_SPEC = ModelSpec(has_masks=False, label_offset=0, num_classes=80, input_size=letterbox_size_kwargs,
                        converters=(Converter("official YOLOv7", from_yolov7),), training=TrainingDefaults(ema=True))
