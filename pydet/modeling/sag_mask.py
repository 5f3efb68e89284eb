"""CenterMask's mask branch: the spatial-attention-guided mask head (SAG-Mask) and the MaskIoU head.

SAG-Mask is Mask R-CNN's 4-conv + deconv head with a spatial attention map (channel mean and max ->
3x3 conv -> sigmoid) multiplied in before the upsampling. The MaskIoU head (Mask Scoring R-CNN)
regresses, per class, the IoU of the predicted mask with the ground truth from the RoI features and
the predicted mask; at inference the mask score is the detection score times that IoU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


def _msra_fill(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)
        _msra_fill(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.conv(pooled).sigmoid()


class SAGMaskHead(nn.Module):
    """RoI features ``[K, C, S, S]`` -> per-class mask logits ``[K, num_classes, 2S, 2S]``."""

    def __init__(self, in_channels: int, num_classes: int, *, num_convs: int = 4, conv_channels: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1),
                       nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.spatial_attention = SpatialAttention()
        self.deconv = nn.ConvTranspose2d(conv_channels if num_convs > 0 else in_channels, conv_channels, 2, 2)
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        for m in list(self.convs) + [self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                _msra_fill(m)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.spatial_attention(self.convs(x))
        return self.predictor(F.relu(self.deconv(x)))


class MaskIoUHead(nn.Module):
    """RoI features ``[K, C, S, S]`` and mask probabilities ``[K, 1, 2S, 2S]`` -> per-class IoU ``[K, num_classes]``.

    The mask is max-pooled to ``S x S`` and concatenated to the features; the last conv has stride 2.
    """

    def __init__(self, in_channels: int, num_classes: int, *, num_convs: int = 4, conv_channels: int = 256,
                 resolution: int = 14):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels + 1 if i == 0 else conv_channels, conv_channels, 3,
                                 stride=2 if i == num_convs - 1 else 1, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        out_size = (resolution + 1) // 2 if num_convs > 0 else resolution
        self.fc1 = nn.Linear(conv_channels * out_size ** 2, 1024)
        self.fc2 = nn.Linear(1024, 1024)
        self.predictor = nn.Linear(1024, num_classes)
        for m in list(self.convs) + [self.fc1, self.fc2]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _msra_fill(m)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Tensor, mask_probs: Tensor) -> Tensor:
        x = torch.cat([features, F.max_pool2d(mask_probs, 2, 2)], dim=1)
        x = self.convs(x).flatten(1)
        return self.predictor(F.relu(self.fc2(F.relu(self.fc1(x)))))


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_gt: Tensor, size: int) -> Tensor:
    """Binary ``[K, size, size]`` targets: each box's ground-truth mask resampled into the box.

    As detectron2's ``BitMasks.crop_and_resize``: RoIAlign (aligned) on the 0/1 mask, kept where >= 0.5.
    """
    rois = torch.cat([matched_gt[:, None].to(boxes.dtype), boxes], dim=1)
    crops = ops.roi_align(gt_masks[:, None].to(boxes.dtype), rois, (size, size), spatial_scale=1.0,
                          sampling_ratio=0, aligned=True)
    return crops[:, 0] >= 0.5


def mask_area_inside_box(gt_masks: Tensor, boxes: Tensor, matched_gt: Tensor) -> Tensor:
    """Fraction of each matched ground-truth mask's pixels whose centre lies inside the box, ``[K]``.

    The MaskIoU target needs the full ground-truth area in the units of the cropped 28x28 target;
    CenterMask2 gets it by dividing the cropped area by this fraction. A summed-area table answers each
    box in four lookups whatever its size.
    """
    height, width = gt_masks.shape[-2:]
    table = F.pad(gt_masks.to(torch.int64).cumsum(1).cumsum(2), (1, 0, 1, 0))
    # Pixel i has its centre i + 0.5 inside [x0, x1] when ceil(x0 - 0.5) <= i <= floor(x1 - 0.5).
    x0 = (boxes[:, 0] - 0.5).ceil().clamp(0, width).long()
    y0 = (boxes[:, 1] - 0.5).ceil().clamp(0, height).long()
    x1 = torch.max((boxes[:, 2] - 0.5).floor() + 1, x0.to(boxes.dtype)).clamp(0, width).long()
    y1 = torch.max((boxes[:, 3] - 0.5).floor() + 1, y0.to(boxes.dtype)).clamp(0, height).long()
    t = table[matched_gt]
    rows = torch.arange(len(boxes), device=boxes.device)
    inside = t[rows, y1, x1] - t[rows, y0, x1] - t[rows, y1, x0] + t[rows, y0, x0]
    total = t[:, height, width]
    return inside.to(boxes.dtype) / total.clamp(min=1).to(boxes.dtype)


def maskiou_targets(mask_logits: Tensor, targets: Tensor, area_inside_box: Tensor) -> Tensor:
    """IoU of each binarised predicted mask with its full ground-truth mask, ``[K]`` (CenterMask2's rule).

    The prediction only covers the box, so the union uses the ground truth's whole area (cropped area
    divided by the fraction inside the box) rather than its cropped part.
    """
    predicted = mask_logits > 0
    full_area = targets.sum(dim=(1, 2)).to(area_inside_box.dtype) / area_inside_box.clamp(min=1e-10)
    overlap = (predicted & targets).sum(dim=(1, 2)).to(full_area.dtype)
    union = (predicted.sum(dim=(1, 2)) + full_area - overlap).clamp(min=1.0)
    return overlap / union


def maskiou_loss(predicted_iou: Tensor, target_iou: Tensor) -> Tensor:
    """``0.5 * squared error`` averaged over the masks with a positive target IoU (0 when there is none)."""
    positive = target_iou > 0
    squared = (predicted_iou - target_iou) ** 2
    return 0.5 * (squared * positive).sum() / positive.sum().clamp(min=1)
