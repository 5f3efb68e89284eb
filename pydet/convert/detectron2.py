"""detectron2 model-zoo Faster / Mask R-CNN R50-FPN checkpoints -> pydet ``style="detectron2"`` state dicts.

Besides renaming, three layouts differ and are converted exactly:
- input: detectron2's first conv reads BGR 0-255 pixels minus ``pixel_mean`` over ``pixel_std``; the
  normalisation is folded into ``backbone.body.conv1`` (:func:`fold_input_normalisation`);
- box predictor: detectron2's background is the last logit and its class-specific regression has no
  background row; pydet (torchvision's layout) has background first and a background row (zeros here, its
  output is never used). A class-agnostic regression is repeated for every class;
- mask predictor: one logit map per foreground class; pydet's gets a zero background map in front.
So detectron2's class ``k`` is pydet's label ``k + 1``, and the softmax and masks are the same.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..modeling.anchor_generator import unrounded_cell_anchors
from ._normalization import fold_input_normalisation, load_numpy_pickle

DETECTRON2_PIXEL_MEAN = (103.53, 116.28, 123.675)
DETECTRON2_PIXEL_STD = (1.0, 1.0, 1.0)
_ANCHOR_SIZES, _ANCHOR_RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)

_RENAMES = [
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", "backbone.body.conv1.weight"),
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.body.bn1."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight$",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight$",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.",
     lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
    (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0."),
    (r"^backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
    (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0."),
    (r"^roi_heads\.mask_head\.deconv\.", "roi_heads.mask_predictor.conv5_mask."),
    (r"^roi_heads\.mask_head\.predictor\.", "roi_heads.mask_predictor.mask_fcn_logits."),
]
_RENAMES = [(re.compile(pattern), replacement) for pattern, replacement in _RENAMES]
_CELL_ANCHORS = re.compile(r"^proposal_generator\.anchor_generator\.cell_anchors\.(\d+)$")


def read_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The state dict inside ``checkpoint``: a path to a model-zoo ``.pkl`` (numpy arrays, read without
    running pickle code) or a ``.pth`` (``torch.load(weights_only=True)``), or an already-loaded dict,
    ``{"model": state_dict, ...}`` or the bare state dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint file {path}")
        if path.endswith(".pkl"):
            checkpoint = load_numpy_pickle(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a detectron2 checkpoint dict or a path to one, got {type(checkpoint).__name__}")
    model = checkpoint.get("model")
    return dict(model) if isinstance(model, Mapping) else dict(checkpoint)


def _as_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiub":
            raise ValueError(f"value of {key!r} is a numpy array of {value.dtype}, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        return value
    raise ValueError(f"value of {key!r} is a {type(value).__name__}, not an array")


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        new, count = pattern.subn(replacement, key)
        if count:
            return new
    raise ValueError(f"unexpected key {key!r}: not a detectron2 Faster/Mask R-CNN ResNet-FPN parameter")


def _check_cell_anchors(anchors: dict[int, Tensor]) -> None:
    """Older checkpoints store the anchors; pydet builds them itself, so they must be the model zoo's."""
    for level, cell in sorted(anchors.items()):
        if level >= len(_ANCHOR_SIZES):
            raise ValueError(f"checkpoint has anchors for {len(anchors)} levels, pydet's R-CNN FPN has 5")
        expected = unrounded_cell_anchors((_ANCHOR_SIZES[level],), _ANCHOR_RATIOS)
        if cell.shape != expected.shape or not torch.allclose(cell.float(), expected, atol=1e-3):
            raise ValueError(f"cell_anchors.{level} of the checkpoint ({cell.tolist()}) differ from the anchors of "
                             f"size {_ANCHOR_SIZES[level]} and ratios {_ANCHOR_RATIOS} that pydet builds")


def _box_predictor(state: dict[str, Tensor]) -> None:
    """Background logit last -> first; class-specific deltas without background row -> with a zero one."""
    prefix = "roi_heads.box_predictor."
    for kind in ("weight", "bias"):
        logits = state[prefix + "cls_score." + kind]
        state[prefix + "cls_score." + kind] = torch.cat([logits[-1:], logits[:-1]])
        deltas = state[prefix + "bbox_pred." + kind]
        num_classes = logits.shape[0] - 1
        if deltas.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
            deltas = deltas.repeat((num_classes,) + (1,) * (deltas.dim() - 1))
        if deltas.shape[0] != 4 * num_classes:
            raise ValueError(f"{prefix}bbox_pred.{kind} has {deltas.shape[0]} rows, expected 4 or 4 x {num_classes}")
        state[prefix + "bbox_pred." + kind] = torch.cat([deltas.new_zeros((4,) + deltas.shape[1:]), deltas])


def _mask_predictor(state: dict[str, Tensor], num_classes: int) -> None:
    prefix = "roi_heads.mask_predictor.mask_fcn_logits."
    for kind in ("weight", "bias"):
        maps = state[prefix + kind]
        if maps.shape[0] == 1:  # class-agnostic mask: the same map for every class
            maps = maps.repeat((num_classes,) + (1,) * (maps.dim() - 1))
        if maps.shape[0] != num_classes:
            raise ValueError(f"{prefix}{kind} has {maps.shape[0]} maps for {num_classes} classes")
        state[prefix + kind] = torch.cat([maps.new_zeros((1,) + maps.shape[1:]), maps])


def from_detectron2(checkpoint: Any, *, pixel_mean: Sequence[float] | None = None,
                    pixel_std: Sequence[float] | None = None, input_format: str = "BGR") -> "OrderedDict[str, Tensor]":
    """Convert a detectron2 Faster/Mask R-CNN R50-FPN checkpoint for ``faster_rcnn_resnet50_fpn(num_classes=81,
    style="detectron2")`` / ``mask_rcnn_resnet50_fpn(...)`` (``num_classes`` = detectron2's + 1).

    ``checkpoint``: a path to a model-zoo ``.pkl`` or a ``.pth``, or a loaded ``{"model": ...}`` / bare
    state dict. ``pixel_mean``/``pixel_std`` (0-255, in ``input_format`` order) default to the checkpoint's
    own ``pixel_mean``/``pixel_std`` entries when it has them, else to detectron2's defaults for its MSRA
    backbones. ``anchor_generator.cell_anchors.*`` entries are checked against pydet's anchors and dropped.
    """
    source = read_checkpoint(checkpoint)
    state: dict[str, Tensor] = {}
    anchors: dict[int, Tensor] = {}
    for key, value in source.items():
        if key in ("pixel_mean", "pixel_std"):
            stored = _as_tensor(key, value).flatten().tolist()
            pixel_mean = stored if key == "pixel_mean" and pixel_mean is None else pixel_mean
            pixel_std = stored if key == "pixel_std" and pixel_std is None else pixel_std
        elif match := _CELL_ANCHORS.match(key):
            anchors[int(match[1])] = _as_tensor(key, value)
        elif not key.endswith("num_batches_tracked"):
            state[_rename(key)] = _as_tensor(key, value).float()
    _check_cell_anchors(anchors)
    for required in ("backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        if required not in state:
            raise ValueError(f"not a detectron2 R-CNN checkpoint: no parameter converts to {required!r}")
    state["backbone.body.conv1.weight"] = fold_input_normalisation(
        state["backbone.body.conv1.weight"], DETECTRON2_PIXEL_MEAN if pixel_mean is None else pixel_mean,
        DETECTRON2_PIXEL_STD if pixel_std is None else pixel_std, input_format)
    _box_predictor(state)
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" in state:
        _mask_predictor(state, state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1)
    return OrderedDict(state)


def is_detectron2_rcnn(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict has detectron2's R-CNN parameter names (for the command line's --weights)."""
    return "backbone.bottom_up.stem.conv1.weight" in state_dict and any(
        k.startswith("proposal_generator.rpn_head.") for k in state_dict)
