"""The pieces every deployment module shares: the base class, fixed-size preprocessing, padded outputs."""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.transform import GeneralizedRCNNTransform, resize_boxes

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
MASK_OUTPUT_NAMES = OUTPUT_NAMES + ("masks",)


def _image_size(image_size) -> tuple[int, int]:
    pair = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    try:
        if len(pair) != 2 or any(isinstance(v, bool) for v in pair):
            raise TypeError
        pair = tuple(operator.index(v) for v in pair)
    except TypeError:
        raise ValueError(f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}") from None
    if min(pair) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return pair


class DetectionExport(nn.Module):
    """Base of the deployment modules: ``forward(images [B, 3, H, W]) -> (boxes, scores, labels,
    num_detections[, masks])`` for one fixed ``image_size (H, W)``, at most ``max_detections`` rows per image.

    Holds (and shares the weights of) ``model``, which is put in eval mode.
    """

    def __init__(self, model: nn.Module, image_size, max_detections: int = 100, *, has_masks: bool = False):
        super().__init__()
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections <= 0:
            raise ValueError(f"max_detections must be a positive int, got {max_detections!r}")
        self.model = model
        self.image_size = _image_size(image_size)
        self.max_detections = max_detections
        self.has_masks = has_masks
        self.output_names = MASK_OUTPUT_NAMES if has_masks else OUTPUT_NAMES
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images must be {self.image_size[0]}x{self.image_size[1]} (this module's image_size), "
                             f"got {tuple(images.shape[-2:])}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        return self.detect(images)

    def detect(self, images: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def example_inputs(self, batch_size: int = 2) -> Tensor:
        """A random batch of this module's input size, on the model's device (for export and checks)."""
        parameter = next(self.model.parameters())
        generator = torch.Generator().manual_seed(0)
        return torch.rand((batch_size, 3) + self.image_size, generator=generator).to(parameter.device)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, max_detections={self.max_detections}, has_masks={self.has_masks}"


class ResizeNormalize(nn.Module):
    """``GeneralizedRCNNTransform`` for a batch of ``image_size`` inputs: normalise, resize (same scale for
    all images), pad to ``size_divisible`` at the bottom and right, as the eager transform does per image.

    ``resized_size`` is the images' size after resizing (before padding); :meth:`restore_boxes` maps boxes
    back to input pixels.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, image_size: Sequence[int]):
        super().__init__()
        self.transform = transform
        self.image_size = _image_size(image_size)
        height, width = self.image_size
        self.scale = min(transform.min_size[-1] / min(height, width), transform.max_size / max(height, width))
        probe = F.interpolate(torch.empty(1, 1, height, width, device="meta"), scale_factor=self.scale,
                              mode="bilinear", recompute_scale_factor=True, align_corners=False)
        self.resized_size = tuple(int(s) for s in probe.shape[-2:])
        stride = max(int(transform.size_divisible), 1)
        self.padded_size = tuple(-(-s // stride) * stride for s in self.resized_size)

    def forward(self, images: Tensor) -> Tensor:
        transform = self.transform
        images = (images - transform.image_mean.to(images)) / transform.image_std.to(images)
        images = F.interpolate(images, scale_factor=self.scale, mode="bilinear", recompute_scale_factor=True,
                               align_corners=False)
        pad_h, pad_w = (p - r for p, r in zip(self.padded_size, self.resized_size))
        return F.pad(images, (0, pad_w, 0, pad_h))

    def restore_boxes(self, boxes: Tensor) -> Tensor:
        return resize_boxes(boxes, self.resized_size, self.image_size)


def padded_rois(boxes: Tensor) -> Tensor:
    """``[B, D, 4]`` boxes as ``[B * D, 5]`` RoIAlign rows ``(image index, x1, y1, x2, y2)``."""
    batch, rows = boxes.shape[:2]
    image = torch.arange(batch, dtype=boxes.dtype, device=boxes.device)[:, None, None].expand(batch, rows, 1)
    return torch.cat((image, boxes), dim=2).reshape(-1, 5)


def mask_padding(num_detections: Tensor, rows: int, *fields: Tensor, fill=0) -> list[Tensor]:
    """Each ``[B, D, ...]`` field with the rows past ``num_detections [B]`` set to ``fill``."""
    valid = torch.arange(rows, device=num_detections.device) < num_detections[:, None]
    return [torch.where(valid.view(valid.shape + (1,) * (f.dim() - 2)), f, torch.full_like(f, fill))
            for f in fields]


def sort_detections(scores: Tensor, num_detections: Tensor, *fields: Tensor) -> list[Tensor]:
    """Rows re-sorted by decreasing ``scores [B, D]`` (padded rows stay last): scores, then ``fields``.

    A TopK over all rows (ONNX has no sort); rows of equal score may come in either order.
    """
    rows = scores.shape[1]
    valid = torch.arange(rows, device=scores.device) < num_detections[:, None]
    order = torch.where(valid, scores, float("-inf")).topk(rows, dim=1).indices
    out = [scores.gather(1, order)]
    for f in fields:
        index = order.view(order.shape + (1,) * (f.dim() - 2)).expand(f.shape)
        out.append(f.gather(1, index))
    return out


def pad_rows(rows: int, boxes: Tensor, scores: Tensor, labels: Tensor, num_detections: Tensor,
             *fields: Tensor) -> tuple[Tensor, ...]:
    """The output tuple with its ``[B, D', ...]`` fields padded to ``rows`` (zeros; labels -1)."""
    extra = rows - boxes.shape[1]
    if extra <= 0:
        return (boxes, scores, labels, num_detections) + fields

    def pad(t: Tensor, value=0) -> Tensor:
        return torch.cat((t, t.new_full((t.shape[0], extra) + t.shape[2:], value)), dim=1)

    return (pad(boxes), pad(scores), pad(labels, -1), num_detections) + tuple(pad(f) for f in fields)
