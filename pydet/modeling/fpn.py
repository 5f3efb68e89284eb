"""Feature Pyramid Network (torchvision's FeaturePyramidNetwork layout and key names)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class LastLevelMaxPool(nn.Module):
    """Adds a ``pool`` level: a stride-2 subsampling of the last level (Faster R-CNN's P6 for the RPN)."""

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]):
        return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], names + ["pool"]


class LastLevelP6P7(nn.Module):
    """Adds ``p6`` and ``p7``: stride-2 3x3 convs with a ReLU between them (RetinaNet, FCOS).

    ``use_p5=True`` builds P6 from the FPN's P5 (FCOS/CenterMask2); otherwise from the trunk's C5.
    """

    def __init__(self, in_channels: int, out_channels: int, *, use_p5: bool = True):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.use_p5 = use_p5

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]):
        p6 = self.p6(results[-1] if self.use_p5 else inputs[-1])
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7], names + ["p6", "p7"]


class FeaturePyramidNetwork(nn.Module):
    """Lateral 1x1 convs, nearest-neighbour top-down sum, 3x3 output convs, then optional extra levels.

    Input and output are ordered dicts from the finest to the coarsest level; output keys are the input
    keys followed by the extra block's names.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_blocks: nn.Module | None = None):
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be positive channel counts, got {in_channels_list}")
        # One-element Sequentials keep torchvision's key names (inner_blocks.0.0.weight, ...).
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1))
                                          for _ in in_channels_list)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        self.extra_blocks = extra_blocks
        self.out_channels = out_channels

    def forward(self, x: "OrderedDict[str, Tensor]") -> "OrderedDict[str, Tensor]":
        names, feats = list(x.keys()), list(x.values())
        if len(feats) != len(self.inner_blocks):
            raise ValueError(f"expected {len(self.inner_blocks)} feature maps, got {len(feats)}")
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])
            last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
