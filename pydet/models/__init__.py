"""The detection systems, each a short composition of :mod:`pydet.modeling` blocks and pydet kernels.

All share torchvision's calling convention: ``model(images, targets=None)`` with a list of
``[3, H, W]`` float images in [0, 1]; training returns a dict of losses, eval one dict per image.
``build(name, **kwargs)`` builds any of them by name (see ``available()``).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator adding a factory to the ``build`` registry under ``name``."""
    def wrap(factory):
        if name in _FACTORIES:
            raise ValueError(f"model name {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory
    return wrap


def available() -> list[str]:
    return sorted(_FACTORIES)


def build(name: str, **kwargs) -> nn.Module:
    """Build a model by name, e.g. ``build("faster_rcnn_resnet50_fpn", num_classes=3)``; a ``-`` in the name
    reads as ``_`` (the official spelling ``yolov7-tiny`` is ``yolov7_tiny``)."""
    name = name.replace("-", "_")
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    return factory(**kwargs)


# Each model module registers its factories on import.
from .generalized_rcnn import faster_rcnn_resnet18_fpn, faster_rcnn_resnet50_fpn, mask_rcnn_resnet18_fpn, mask_rcnn_resnet50_fpn  # noqa: E402,F401
from .centermask2 import CenterMask2, centermask2  # noqa: E402
from .yolov7 import yolov7, yolov7_tiny  # noqa: E402,F401  (registers yolov7, yolov7_tiny, yolov7_tiny_320)
__all__ = ["available", "build", "register"]
