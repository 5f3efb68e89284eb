"""Input pipeline of the R-CNN family and CenterMask2: resize, normalise, batch; and the way back.

Same arithmetic as torchvision's ``GeneralizedRCNNTransform`` so that, with the same weights, pydet's
models see the same tensors as torchvision's.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import ImageList, batch_images
from .batching import clip_boxes_per_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images_and_targets(images, targets, *, need_masks: bool = False, num_classes: int | None = None,
                             positive_boxes: bool = True) -> None:
    """Clear errors for the calling convention shared by all models: the images and the targets' types and
    shapes, and with ``num_classes`` their values (finite boxes, with positive width and height unless
    ``positive_boxes=False``, labels in ``[0, num_classes)``, masks of the image's size)."""
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError("images must be a non-empty list of [3, H, W] tensors")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"images[{i}] must be a [3, H, W] tensor, got "
                             f"{tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
        if not img.is_floating_point():
            raise ValueError(f"images[{i}] must be floating point in [0, 1], got {img.dtype}")
        if img.device != images[0].device:
            raise ValueError(f"images[{i}] is on {img.device}, images[0] on {images[0].device}")
        if img.numel() == 0:
            raise ValueError(f"images[{i}] is empty: shape {tuple(img.shape)}")
    if targets is None:
        return
    if len(targets) != len(images):
        raise ValueError(f"targets must have one dict per image: {len(targets)} targets, {len(images)} images")
    device = images[0].device
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes'] must be a float [M, 4] tensor")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.dtype != torch.int64:
            raise ValueError(f"targets[{i}]['labels'] must be an int64 [M] tensor matching boxes")
        if boxes.device != device or labels.device != device:
            raise ValueError(f"targets[{i}] tensors must be on the images' device {device}")
        if need_masks:
            masks = t.get("masks")
            if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[0] != boxes.shape[0]:
                raise ValueError(f"targets[{i}]['masks'] must be a [M, H, W] tensor")
            if masks.device != device:
                raise ValueError(f"targets[{i}]['masks'] must be on the images' device {device}")
            if masks.shape[-2:] != images[i].shape[-2:]:
                raise ValueError(f"targets[{i}]['masks'] must have the image's size {tuple(images[i].shape[-2:])}, "
                                 f"got {tuple(masks.shape[-2:])}")
    if num_classes is not None:
        _check_target_values(targets, num_classes, positive_boxes)


def _check_target_values(targets, num_classes: int, positive_boxes: bool) -> None:
    """Finite boxes (with positive width and height) and labels in range, with one read-back to the host."""
    boxes = torch.cat([t["boxes"] for t in targets])
    labels = torch.cat([t["labels"] for t in targets])
    not_finite = ~torch.isfinite(boxes).all(dim=1)
    degenerate = ~(boxes[:, 2:] > boxes[:, :2]).all(dim=1) if positive_boxes else torch.zeros_like(not_finite)
    bad_label = (labels < 0) | (labels >= num_classes)
    problems = torch.stack([not_finite.any(), degenerate.any(), bad_label.any()]).tolist()
    if not any(problems):
        return
    bad = (not_finite, degenerate, bad_label)[problems.index(True)]
    first = int(torch.nonzero(bad)[0])
    image = int(torch.searchsorted(torch.tensor([len(t["boxes"]) for t in targets]).cumsum(0), first, right=True))
    if problems[0]:
        raise ValueError(f"targets[{image}] has a box that is not finite: {boxes[first].tolist()}")
    if problems[1]:
        raise ValueError(f"targets[{image}] has a box without positive width and height: {boxes[first].tolist()} "
                         "(boxes are xyxy with x2 > x1 and y2 > y1)")
    raise ValueError(f"targets[{image}] has label {int(labels[first])}, outside [0, {num_classes}) "
                     f"(labels must be in [0, {num_classes - 1}])")


class GeneralizedRCNNTransform(nn.Module):
    """Normalise with ``image_mean``/``image_std``, resize so the short side is ``min_size`` (drawn at
    random from a tuple in training) and the long side at most ``max_size``, pad to ``size_divisible``.

    ``resize_rule="detectron2"`` is detectron2's ``ResizeShortestEdge``: the new size rounded to the
    nearest pixel (torchvision floors it) and resampled with antialiased bilinear interpolation, the PIL
    filter detectron2 applies (to 8-bit pixels, so results agree to within their rounding).
    ``clip_output=True`` is detectron2's ``detector_postprocess``: after scaling back to the input image,
    boxes are clipped to it and detections whose box is left without area are dropped.
    """

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 size_divisible: int = 32, *, resize_rule: str = "torchvision", clip_output: bool = False):
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.max_size = max_size
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible
        if resize_rule not in ("torchvision", "detectron2"):
            raise ValueError(f"resize_rule must be 'torchvision' or 'detectron2', got {resize_rule!r}")
        self.resize_rule = resize_rule
        self.clip_output = bool(clip_output)

    def resize(self, image: Tensor, target: dict | None):
        h, w = image.shape[-2:]
        size = random.choice(self.min_size) if self.training else self.min_size[-1]
        if self.resize_rule == "detectron2":
            image = F.interpolate(image[None], size=detectron2_resized_size(h, w, size, self.max_size),
                                  mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            scale = min(size / min(h, w), self.max_size / max(h, w))
            image = F.interpolate(image[None], size=None, scale_factor=scale, mode="bilinear",
                                  recompute_scale_factor=True, align_corners=False)[0]
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "masks" in target:
            target["masks"] = F.interpolate(target["masks"][:, None].float(), size=image.shape[-2:])[:, 0].byte()
        return image, target

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            image = (image - self.image_mean.to(image)) / self.image_std.to(image)
            image, target = self.resize(image, None if targets is None else targets[i])
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        return batch_images(out_images, self.size_divisible), out_targets

    def postprocess(self, detections: list[dict], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict]:
        """Map boxes (and any keypoint-free fields) from resized back to original image coordinates."""
        for i, (det, size, original) in enumerate(zip(detections, image_sizes, original_sizes)):
            det["boxes"] = resize_boxes(det["boxes"], size, original)
            if self.clip_output:
                boxes = clip_boxes_per_image(det["boxes"], det["boxes"].new_tensor(original))
                nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                detections[i] = {**{k: v[nonempty] for k, v in det.items()}, "boxes": boxes[nonempty]}
        return detections


def detectron2_resized_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: short side ``short``, long side at most
    ``max_size``, each rounded half up."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale ``xyxy`` boxes from an image of ``original_size (h, w)`` to one of ``new_size``."""
    ratio_h = torch.tensor(float(new_size[0]), device=boxes.device) / torch.tensor(float(original_size[0]), device=boxes.device)
    ratio_w = torch.tensor(float(new_size[1]), device=boxes.device) / torch.tensor(float(original_size[1]), device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)
