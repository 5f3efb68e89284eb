"""AnchorGenerator with torchvision's sizes/ratios semantics, built on pydet's grid_anchors kernel."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..structures import ImageList


class AnchorGenerator(nn.Module):
    """Anchors for each feature level: ``sizes[l]`` x ``aspect_ratios[l]`` cell anchors at every position.

    Same values and order as torchvision's ``AnchorGenerator`` for the same sizes, ratios and strides
    (strides are ``image_size // feature_size`` per dimension of the padded batch).
    """

    def __init__(self, sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
                 aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),)):
        super().__init__()
        sizes = [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in sizes]
        aspect_ratios = [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in aspect_ratios]
        if len(aspect_ratios) == 1 and len(sizes) > 1:
            aspect_ratios = aspect_ratios * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes and aspect_ratios must have one entry per level, got {len(sizes)} and "
                             f"{len(aspect_ratios)}")
        self.sizes, self.aspect_ratios = sizes, aspect_ratios
        self.cell_anchors = [ops.cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]
        self._cache: dict[tuple, list[Tensor]] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]],
                     dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """Anchors per level for one padded image size (cached: shapes repeat across batches)."""
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.cell_anchors)} anchor levels")
        key = (tuple(image_size), tuple(feature_sizes), dtype, device)
        if key not in self._cache:
            strides = [(image_size[0] // h, image_size[1] // w) for h, w in feature_sizes]
            cells = [c.to(dtype=dtype, device=device) for c in self.cell_anchors]
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = ops.grid_anchors(feature_sizes, strides, cells)
        return self._cache[key]

    def forward(self, images: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """One ``[sum_l H_l * W_l * A_l, 4]`` tensor per image (the same tensor: anchors do not depend
        on image content)."""
        feature_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        levels = self.grid_anchors(tuple(images.tensors.shape[-2:]), feature_sizes, feature_maps[0].dtype,
                                   feature_maps[0].device)
        anchors = torch.cat(levels)
        return [anchors] * len(images.image_sizes)
