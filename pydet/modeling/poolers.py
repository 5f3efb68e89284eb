"""MultiScaleRoIAlign: torchvision's FPN RoI pooler, with CenterMask's level rule as an option."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.roi_align import (_level_index, _pair, area_ratio_levels, convert_boxes_to_rois, fpn_levels, level_range,
                             multi_scale_roi_align)

ASSIGN_RULES = ("torchvision", "detectron2", "centermask")


def infer_scale(feature: Tensor, image_size: Sequence[int]) -> float:
    """torchvision's ``_infer_scale``: the power of two nearest to feature height / image height."""
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid, each box pooled from the level that suits its size.

    Same constructor and ``forward(x, boxes, image_shapes)`` as ``torchvision.ops.MultiScaleRoIAlign``:
    ``x`` maps names to ``[N, C, H_l, W_l]`` maps (those in ``featmap_names`` are used, in ``x``'s
    order, finest first), ``boxes`` holds one ``[L_i, 4]`` tensor per image in image pixels and
    ``image_shapes`` the ``(height, width)`` of each image. Each level's scale is the power of two nearest
    to its height over the largest image height, inferred on the first call and kept, as torchvision does.

    ``assign_rule="torchvision"`` (default) picks level
    ``floor(canonical_level + log2(sqrt(box area) / canonical_scale) + 1e-6)``; ``"detectron2"`` picks
    ``floor(canonical_level + log2(sqrt(box area) / canonical_scale + 1e-8))`` (the two differ only for
    boxes within rounding of a level boundary); ``"centermask"`` picks
    CenterMask's ``ceil(k_max - log2(image area / box area))`` with each box's own image area from
    ``image_shapes`` (k_max = 5 for CenterMask2's P3-P5). Both are clamped to the levels present.
    ``aligned=True`` is Detectron2's ROIAlignV2 (CenterMask2 uses it). The output rows follow the
    concatenated boxes; all levels are pooled by one kernel, without host synchronisation.
    """

    def __init__(self, featmap_names: Sequence[str], output_size, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4, aligned: bool = False,
                 assign_rule: str = "torchvision"):
        super().__init__()
        if isinstance(featmap_names, str) or not all(isinstance(n, str) for n in featmap_names):
            raise TypeError(f"featmap_names must be a list of str, got {featmap_names!r}")
        if assign_rule not in ASSIGN_RULES:
            raise ValueError(f"assign_rule must be one of {ASSIGN_RULES}, got {assign_rule!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = bool(aligned)
        self.assign_rule = assign_rule
        self.scales: list[float] | None = None

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"x holds none of the feature maps {self.featmap_names}, got keys {list(x)}")
        if len(image_shapes) == 0:
            raise ValueError("image_shapes must hold the (height, width) of every image")
        if self.scales is None:
            largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
            self.scales = [infer_scale(f, largest) for f in features]
        if len(self.scales) != len(features):
            raise ValueError(f"this pooler was set up for {len(self.scales)} feature maps, got {len(features)}")
        rois = convert_boxes_to_rois(boxes, features[0].shape[0])
        levels = None
        if len(features) > 1 and self.assign_rule == "detectron2":
            levels = detectron2_levels(rois[:, 1:], *level_range(self.scales), self.canonical_scale,
                                       self.canonical_level)
        if len(features) > 1 and self.assign_rule == "centermask":
            k_min, k_max = level_range(self.scales)
            if len(image_shapes) < len(boxes):
                raise ValueError(f"image_shapes has {len(image_shapes)} entries for {len(boxes)} images")
            image_areas = torch.cat([torch.full((len(b),), float(h * w), dtype=torch.float32, device=b.device)
                                     for b, (h, w) in zip(boxes, image_shapes)])
            levels = area_ratio_levels(rois[:, 1:], image_areas, k_min, k_max)
        return multi_scale_roi_align(features, rois, self.output_size, self.scales, self.sampling_ratio,
                                     self.aligned, levels=levels, canonical_scale=self.canonical_scale,
                                     canonical_level=self.canonical_level)

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, assign_rule={self.assign_rule!r}")


def detectron2_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224,
                      canonical_level: int = 4) -> Tensor:
    """detectron2's ``assign_boxes_to_levels``: ``floor(canonical_level + log2(sqrt(area) / canonical_scale
    + 1e-8))`` clamped to ``[k_min, k_max]``, as an int64 index from ``k_min`` (-1 for NaN areas)."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale + 1e-8))
    return _level_index(levels, k_min, k_max)


__all__ = ["MultiScaleRoIAlign", "detectron2_levels"]
