"""AnchorGenerator with torchvision's sizes/ratios semantics, built on pydet's grid_anchors kernel."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..structures import ImageList


class AnchorGenerator(nn.Module):
    """Anchors for each feature level: ``sizes[l]`` x ``aspect_ratios[l]`` cell anchors at every position.

    Same values and order as torchvision's ``AnchorGenerator`` for the same sizes, ratios and strides
    (strides are ``image_size // feature_size`` per dimension of the padded batch).

    ``rounded=False`` and ``strides`` give detectron2's ``DefaultAnchorGenerator`` (offset 0): cell anchors
    not rounded to integers (:func:`unrounded_cell_anchors`) and a fixed stride per level, whatever the
    image size. The two differ where the padded size is not a multiple of a level's stride (P6 of an
    800x1088 batch: 25 rows pooled to 13 give torchvision a stride of 61 where detectron2 uses 64).
    """

    def __init__(self, sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
                 aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),), *, rounded: bool = True,
                 strides: Sequence[int] | None = None):
        super().__init__()
        sizes = [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in sizes]
        aspect_ratios = [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in aspect_ratios]
        if len(aspect_ratios) == 1 and len(sizes) > 1:
            aspect_ratios = aspect_ratios * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes and aspect_ratios must have one entry per level, got {len(sizes)} and "
                             f"{len(aspect_ratios)}")
        if strides is not None and len(strides) != len(sizes):
            raise ValueError(f"strides must have one entry per level ({len(sizes)}), got {len(strides)}")
        self.sizes, self.aspect_ratios = sizes, aspect_ratios
        self.strides = None if strides is None else [(int(s), int(s)) for s in strides]
        make = ops.cell_anchors if rounded else unrounded_cell_anchors
        self.cell_anchors = [make(s, a) for s, a in zip(sizes, aspect_ratios)]
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
            strides = self.strides or [(image_size[0] // h, image_size[1] // w) for h, w in feature_sizes]
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


def unrounded_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """detectron2's cell anchors ``[len(sizes) * len(aspect_ratios), 4]`` for one level: for each size
    (outer) and ratio (inner), width ``sqrt(size^2 / ratio)`` and height ``ratio * width`` centred on 0,
    computed in float64 and stored as float32, not rounded (torchvision rounds, and orders ratio-major)."""
    if any(s <= 0 for s in sizes) or any(a <= 0 for a in aspect_ratios):
        raise ValueError("sizes and aspect_ratios must be positive")
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)
