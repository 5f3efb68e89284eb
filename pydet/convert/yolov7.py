"""Official YOLOv7 (WongKinYiu/yolov7) weights into pydet's :class:`~pydet.models.yolov7.YOLOv7`.

pydet's network has the official module layout, so the keys coincide; the conversion unwraps checkpoints,
strips DataParallel prefixes, converts half-precision weights to float32 and checks the layout.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping

from torch import Tensor

_KEY = re.compile(r"^model\.(\d+)\.")


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """The state dict inside an official checkpoint: ``ema`` when present (as the official attempt_load),
    else ``model``; either may be a pickled module or a state dict."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if any(isinstance(v, Tensor) for v in obj.values()):
            return obj
        for key in ("ema", "model", "state_dict"):
            if obj.get(key) is not None:
                return _unwrap(obj[key])
    raise ValueError("from_yolov7 expects an official YOLOv7 state dict (keys 'model.0.conv.weight', ...) or a "
                     f"checkpoint dict holding one under 'model' or 'ema', got {type(obj).__name__}")


def from_yolov7(state_dict: Any) -> "OrderedDict[str, Tensor]":
    """Convert an official YOLOv7 / YOLOv7-tiny state dict (or checkpoint) for pydet's ``load_state_dict``.

    Accepts ``Model.state_dict()`` of the official code, a training checkpoint ``{'model': ..., 'ema': ...}``
    (the EMA weights are taken when present, as the official loader does), ``module.``-prefixed keys from
    (Distributed)DataParallel, and half-precision weights (returned as float32). A state dict of an official
    model after ``Model.fuse()`` loads into a pydet model after ``model.fuse()``. A model of the official
    ``cfg/deploy`` configs (a plain ``Detect`` head, no implicit layers) loads too, with identity implicit layers.
    """
    source = _unwrap(state_dict)
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in source.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if not _KEY.match(name):
            raise ValueError(f"unexpected key {key!r}: official YOLOv7 keys look like 'model.<layer>.<name>'")
        if not isinstance(value, Tensor):
            raise ValueError(f"value of {key!r} is a {type(value).__name__}, not a tensor")
        out[name] = value.float() if value.is_floating_point() else value
    heads = {int(_KEY.match(k).group(1)) for k in out if k.endswith(".anchor_grid")}
    if len(heads) != 1:
        raise ValueError("expected exactly one detection head (a 'model.<layer>.anchor_grid' buffer), found "
                         f"{len(heads)}")
    _add_identity_implicit(out, f"model.{heads.pop()}.")
    return out


def _add_identity_implicit(state: "OrderedDict[str, Tensor]", head: str) -> None:
    """A ``Detect`` head (the official ``cfg/deploy`` configs) is an ``IDetect`` whose implicit layers do
    nothing: give it ImplicitA zeros and ImplicitM ones, which leave every output bit for bit as it was."""
    if any(k.startswith((head + "ia.", head + "im.")) for k in state):
        return
    level = 0
    while f"{head}m.{level}.weight" in state:
        weight = state[f"{head}m.{level}.weight"]
        state[f"{head}ia.{level}.implicit"] = weight.new_zeros(1, weight.shape[1], 1, 1)
        state[f"{head}im.{level}.implicit"] = weight.new_ones(1, weight.shape[0], 1, 1)
        level += 1
