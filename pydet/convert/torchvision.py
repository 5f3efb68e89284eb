"""torchvision ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` checkpoints -> pydet state dicts."""
from __future__ import annotations

import re
from typing import Mapping

from torch import Tensor

# Checkpoints saved before torchvision 0.13 (among them the published COCO weights) name the RPN conv and
# the mask head convs as plain modules; torchvision renames them when loading, so does this converter.
_LEGACY_NAMES = [
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"),
]


def from_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision Faster/Mask R-CNN ResNet-FPN state dict for pydet's models.

    pydet keeps torchvision's current parameter names, so this only maps the pre-0.13 names and drops
    BatchNorm's ``num_batches_tracked`` counters (a model built with ``weights_backbone=None`` uses
    ``BatchNorm2d``; pydet's frozen BatchNorm has no counter). The result loads with ``strict=True``.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            continue
        for pattern, replacement in _LEGACY_NAMES:
            key = pattern.sub(replacement, key)
        if key in converted:
            raise ValueError(f"state_dict has both the old and the new name of {key!r}")
        converted[key] = value
    return converted
