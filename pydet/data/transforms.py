"""Training-time augmentations on ``(image float [3, H, W], target)`` pairs, boxes and masks kept in step.

Randomness comes from torch's global generator, so a training run is reproducible from its seed and
resumes exactly from a checkpoint (which stores that generator's state).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

YOLO_PAD_VALUE = 114 / 255  # the grey YOLOv7 pads letterboxes and mosaics with


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Tensor, target: dict):
        if torch.rand(()) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


def _resize(image: Tensor, target: dict, size: tuple[int, int]):
    h, w = image.shape[-2:]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    target = dict(target)
    target["boxes"] = target["boxes"] * target["boxes"].new_tensor([size[1] / w, size[0] / h] * 2)
    if "masks" in target:
        masks = target["masks"]
        target["masks"] = F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0].to(masks.dtype)
    return image, target


class RandomScaleJitter:
    """Resize by a factor drawn uniformly from ``scale_range`` (aspect ratio kept)."""

    def __init__(self, scale_range: tuple[float, float] = (0.75, 1.25)):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.scale_range = scale_range

    def __call__(self, image: Tensor, target: dict):
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        h, w = image.shape[-2:]
        return _resize(image, target, (max(1, round(h * scale)), max(1, round(w * scale))))


class Mosaic(Dataset):
    """YOLO's mosaic as a dataset wrapper: with probability ``p`` an item is four images of ``dataset`` on
    one ``size x size`` canvas, meeting at a random centre.

    Each image is scaled so its long side is ``size`` times a factor from ``scale_range``, then the part
    of it that falls in its quadrant is kept. Boxes are clipped to what stays visible; objects keeping
    less than ``min_visible`` of their box area, or thinner than 2 pixels, are dropped.
    """

    def __init__(self, dataset: Dataset, size: int, p: float = 1.0, scale_range: tuple[float, float] = (0.5, 1.0),
                 min_visible: float = 0.25):
        self.dataset = dataset
        self.size = int(size)
        self.p = p
        self.scale_range = scale_range
        self.min_visible = min_visible

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # categories, num_classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        if torch.rand(()) >= self.p:
            return self.dataset[index]
        s = self.size
        others = torch.randint(len(self.dataset), (3,)).tolist()
        xc, yc = (int(s * (0.25 + 0.5 * float(v))) for v in torch.rand(2))
        canvas = None
        boxes, labels, masks = [], [], []
        for quadrant, i in enumerate([index, *others]):
            image, target = self.dataset[i]
            if canvas is None:
                canvas = image.new_full((image.shape[0], s, s), YOLO_PAD_VALUE)
                has_masks = "masks" in target
            low, high = self.scale_range
            scale = (low + (high - low) * float(torch.rand(()))) * s / max(image.shape[-2:])
            h, w = (max(1, round(d * scale)) for d in image.shape[-2:])
            image, target = _resize(image, target, (h, w))
            # where the image's top-left corner lands on the canvas
            x0 = xc - w if quadrant in (0, 2) else xc
            y0 = yc - h if quadrant in (0, 1) else yc
            cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + w, s), min(y0 + h, s)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            canvas[:, cy1:cy2, cx1:cx2] = image[:, cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
            shifted = target["boxes"] + target["boxes"].new_tensor([x0, y0, x0, y0])
            clipped = torch.stack((shifted[:, 0].clamp(cx1, cx2), shifted[:, 1].clamp(cy1, cy2),
                                   shifted[:, 2].clamp(cx1, cx2), shifted[:, 3].clamp(cy1, cy2)), dim=1)
            if has_masks:
                placed = target["masks"].new_zeros((len(clipped), s, s))
                placed[:, cy1:cy2, cx1:cx2] = target["masks"][:, cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
                # a cut shape's visible part can be narrower than its clipped box: take the mask's extent
                cut = (clipped != shifted).any(1)
                clipped[cut] = mask_extents(placed[cut])
            area = (shifted[:, 2:] - shifted[:, :2]).prod(1)
            sides = clipped[:, 2:] - clipped[:, :2]
            keep = (sides.prod(1) >= self.min_visible * area) & (sides >= 2).all(1)
            boxes.append(clipped[keep])
            labels.append(target["labels"][keep])
            if has_masks:
                masks.append(placed[keep])
        target = {"boxes": torch.cat(boxes), "labels": torch.cat(labels), "image_id": index}
        if has_masks:
            target["masks"] = torch.cat(masks)
        return canvas, target



def mask_extents(masks: Tensor) -> Tensor:
    """Tight ``xyxy`` boxes of ``[N, H, W]`` masks (``x2`` = last column + 1); zeros for empty masks."""
    boxes = torch.zeros((masks.shape[0], 4))
    for box, mask in zip(boxes, masks.bool()):
        cols, rows = torch.nonzero(mask.any(0)).flatten(), torch.nonzero(mask.any(1)).flatten()
        if len(cols):
            box.copy_(torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]))
    return boxes
