"""Official CenterMask2 (youngwanLEE/centermask2, on detectron2) checkpoints -> pydet's :func:`centermask2`.

The parameters are the same tensors under other names (mapped by the rules below) except the first conv,
which absorbs the difference between the two input conventions:

* detectron2 feeds ``(255 * pixel[k] - pixel_mean[k]) / pixel_std[k]`` with channel ``k`` in
  ``input_format`` order (BGR for the official models) and zero-pads that tensor;
* pydet feeds ``(pixel[c] - m[c]) / s[c]`` with ``c`` in RGB order and ``m, s`` the ImageNet mean and std
  of :mod:`pydet.modeling.transform`, and zero-pads that tensor.

When ``pixel_mean[k] == 255 * m[c]`` for the matching channel (true of detectron2's default mean, which all
official configs use) the two inputs differ by a per-channel scale ``255 * s[c] / pixel_std[k]`` and a
channel permutation, both of which move into the first conv's weights exactly, and zero padding means the
same pixel value in both. Any other mean would be a constant shift, which a bias (or the following
BatchNorm) reproduces inside the image but not where the conv or the batch reads padding; such means are
refused rather than converted approximately.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ._normalization import (MEAN_TOLERANCE, as_tensor, fold_input_normalisation, input_channel_scales,
                             read_checkpoint, three_numbers)

_Rule = tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]


def _rule(pattern: str, replace: Callable[["re.Match[str]"], str]) -> _Rule:
    return re.compile(pattern), replace


def _conv_or_norm(group: str) -> str:
    return "0" if group == "conv" else "1"


_BN = r"(weight|bias|running_mean|running_var)"
_RULES: list[_Rule] = [
    # VoVNet: stem_{i}/conv|norm and OSA{stage}_{block} modules (layers, concat, eSE)
    _rule(rf"^backbone\.bottom_up\.stem\.stem_(\d)/(conv|norm)\.{_BN}$",
          lambda m: f"backbone.body.stem.{int(m[1]) - 1}.{_conv_or_norm(m[2])}.{m[3]}"),
    _rule(rf"^backbone\.bottom_up\.stage(\d)\.OSA\1_(\d+)\.layers\.(\d+)\.OSA\1_\2_\3/(conv|norm)\.{_BN}$",
          lambda m: f"backbone.body.stage{m[1]}.osa{m[2]}.layers.{m[3]}.{_conv_or_norm(m[4])}.{m[5]}"),
    _rule(rf"^backbone\.bottom_up\.stage(\d)\.OSA\1_(\d+)\.concat\.OSA\1_\2_concat/(conv|norm)\.{_BN}$",
          lambda m: f"backbone.body.stage{m[1]}.osa{m[2]}.concat.{_conv_or_norm(m[3])}.{m[4]}"),
    _rule(r"^backbone\.bottom_up\.stage(\d)\.OSA\1_(\d+)\.ese\.fc\.(weight|bias)$",
          lambda m: f"backbone.body.stage{m[1]}.osa{m[2]}.ese.fc.{m[3]}"),
    # ResNet (detectron2 names): stem.conv1, res{2-5}.{block}.conv{1-3} / shortcut, each with .norm
    _rule(r"^backbone\.bottom_up\.stem\.conv1\.weight$", lambda m: "backbone.body.conv1.weight"),
    _rule(rf"^backbone\.bottom_up\.stem\.conv1\.norm\.{_BN}$", lambda m: f"backbone.body.bn1.{m[1]}"),
    _rule(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight$",
          lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
    _rule(rf"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.{_BN}$",
          lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
    _rule(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight$",
          lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    _rule(rf"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.{_BN}$",
          lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    # FPN on stages 3-5 (fpn_lateral3 is the finest) and P6/P7
    _rule(r"^backbone\.fpn_lateral([345])\.(weight|bias)$",
          lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 3}.0.{m[2]}"),
    _rule(r"^backbone\.fpn_output([345])\.(weight|bias)$",
          lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 3}.0.{m[2]}"),
    _rule(r"^backbone\.top_block\.(p6|p7)\.(weight|bias)$", lambda m: f"backbone.fpn.extra_blocks.{m[1]}.{m[2]}"),
    # FCOS head: the towers keep their Sequential indices (conv, GroupNorm, ReLU)
    _rule(r"^proposal_generator\.fcos_head\.(cls_tower|bbox_tower)\.(\d+)\.(weight|bias)$",
          lambda m: f"fcos.head.{m[1]}.{m[2]}.{m[3]}"),
    _rule(r"^proposal_generator\.fcos_head\.(cls_logits|bbox_pred)\.(weight|bias)$",
          lambda m: f"fcos.head.{m[1]}.{m[2]}"),
    _rule(r"^proposal_generator\.fcos_head\.ctrness\.(weight|bias)$", lambda m: f"fcos.head.centerness.{m[1]}"),
    _rule(r"^proposal_generator\.fcos_head\.scales\.(\d)\.scale$", lambda m: f"fcos.head.scales.{m[1]}.scale"),
    # SAG-Mask and MaskIoU heads: {mask,maskiou}_fcn{k} are every other module of pydet's conv/ReLU Sequential
    _rule(r"^roi_heads\.(mask|maskiou)_head\.\1_fcn(\d)\.(weight|bias)$",
          lambda m: f"{m[1]}_head.convs.{2 * (int(m[2]) - 1)}.{m[3]}"),
    _rule(r"^roi_heads\.mask_head\.spatialAtt\.conv\.weight$", lambda m: "mask_head.spatial_attention.conv.weight"),
    _rule(r"^roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)$", lambda m: f"mask_head.{m[1]}.{m[2]}"),
    _rule(r"^roi_heads\.maskiou_head\.maskiou_(fc1|fc2)\.(weight|bias)$", lambda m: f"maskiou_head.{m[1]}.{m[2]}"),
    _rule(r"^roi_heads\.maskiou_head\.maskiou\.(weight|bias)$", lambda m: f"maskiou_head.predictor.{m[1]}"),
]
# detectron2 < 0.4 saved its input normalisation with the weights.
_NORMALISATION_KEYS = ("pixel_mean", "pixel_std")
FIRST_CONVS = ("backbone.body.stem.0.0.weight", "backbone.body.conv1.weight")  # VoVNet, ResNet
# VoVNet depth from (blocks per stage, convs per block)
_VOVNET_DEPTHS = {((1, 1, 1, 1), 3): 19, ((1, 1, 2, 2), 5): 39, ((1, 1, 4, 3), 5): 57, ((1, 3, 9, 3), 5): 99}


def _rename(key: str) -> str:
    for pattern, replace in _RULES:
        match = pattern.match(key)
        if match:
            return replace(match)
    raise ValueError(f"unexpected key {key!r}: not part of an official CenterMask2 model (VoVNet-eSE or "
                     "ResNet-50 FPN, FCOS, SAG-Mask and MaskIoU heads)")


def _check_stored_normalisation(stored: dict[str, Tensor], pixel_mean, pixel_std) -> None:
    for name, given in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if name in stored:
            values = tuple(stored[name].double().flatten().tolist())
            if len(values) != 3 or max(abs(a - b) for a, b in zip(values, given)) > MEAN_TOLERANCE:
                raise ValueError(f"the checkpoint stores {name}={values}, which differs from {name}={given}; "
                                 f"pass the checkpoint's values")


def _count(keys: set[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m[1] for k in keys if (m := regex.match(k))})


def _architecture(converted: Mapping[str, Tensor]) -> tuple[str, bool, int]:
    """``(backbone, lite, num_classes)`` of :func:`~pydet.models.centermask2.centermask2` for these weights."""
    keys = set(converted)
    for needed in ("backbone.fpn.inner_blocks.0.0.weight", "fcos.head.cls_logits.weight"):
        if needed not in keys:
            raise ValueError(f"missing key {needed!r} of an official CenterMask2 model")
    lite = converted["backbone.fpn.inner_blocks.0.0.weight"].shape[0] == 128
    num_classes = converted["fcos.head.cls_logits.weight"].shape[0]
    if FIRST_CONVS[1] in keys:
        return "resnet50", lite, num_classes
    if FIRST_CONVS[0] not in keys:
        raise ValueError("missing key: neither backbone.bottom_up.stem.stem_1/conv.weight (VoVNet) nor "
                         "backbone.bottom_up.stem.conv1.weight (ResNet)")
    blocks = tuple(_count(keys, rf"^backbone\.body\.stage{s}\.osa(\d+)\.") for s in (2, 3, 4, 5))
    layers = _count(keys, r"^backbone\.body\.stage2\.osa1\.layers\.(\d+)\.")
    depth = _VOVNET_DEPTHS.get((blocks, layers))
    if depth is None:
        raise ValueError(f"VoVNet with {blocks} OSA blocks per stage and {layers} convs per block is not one of "
                         "V-19/39/57/99-eSE")
    slim = converted.get("backbone.body.stage2.osa1.concat.0.weight", torch.empty(0)).shape[:1] == (112,)
    return f"vovnet{depth}{'_slim' if slim else ''}", lite, num_classes


def _check_against_model(converted: Mapping[str, Tensor]) -> None:
    """Every key and shape of the pydet model these weights are for; the first difference is the error."""
    from ..models.centermask2 import centermask2

    backbone, lite, num_classes = _architecture(converted)
    with torch.device("meta"):
        expected = centermask2(backbone, num_classes, lite=lite, stride_in_1x1=backbone == "resnet50").state_dict()
    for key, value in expected.items():
        if key not in converted:
            raise ValueError(f"missing key {key!r} for centermask2({backbone!r}, lite={lite})")
        if converted[key].shape != value.shape:
            raise ValueError(f"{key!r} has shape {tuple(converted[key].shape)}, centermask2({backbone!r}, "
                             f"lite={lite}) expects {tuple(value.shape)}")
    extra = next((k for k in converted if k not in expected), None)
    if extra is not None:
        raise ValueError(f"unexpected key {extra!r} for centermask2({backbone!r}, lite={lite})")


def from_centermask2(checkpoint: Any, *, pixel_mean: Sequence[float] = (103.53, 116.28, 123.675),
                     pixel_std: Sequence[float] = (1.0, 1.0, 1.0), input_format: str = "BGR") -> dict[str, Tensor]:
    """Convert an official CenterMask2 checkpoint for ``centermask2(backbone, lite=..., num_classes=80)``.

    ``checkpoint`` is what ``torch.load("model_final.pth")`` returns (detectron2's ``{"model": state_dict,
    ...}``) or a bare state dict, with torch tensors or numpy arrays. ``pixel_mean``, ``pixel_std`` and
    ``input_format`` are the config's ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` and ``INPUT.FORMAT``
    (defaults: detectron2's, used by every official config). The result loads with ``strict=True`` into
    ``centermask2("vovnet19_slim" | "vovnet19" | "vovnet39" | "vovnet57" | "vovnet99", lite=...)`` or
    ``centermask2("resnet50", stride_in_1x1=True)``, and takes pydet's RGB [0, 1] images.
    """
    input_channel_scales(pixel_mean, pixel_std, input_format)  # bad arguments fail before any work
    source = read_checkpoint(checkpoint)
    pixel_mean, pixel_std = three_numbers(pixel_mean, "pixel_mean"), three_numbers(pixel_std, "pixel_std")
    stored = {k: as_tensor(k, source[k]) for k in _NORMALISATION_KEYS if k in source}
    _check_stored_normalisation(stored, pixel_mean, pixel_std)
    converted: dict[str, Tensor] = {}
    for key, value in source.items():
        if key in _NORMALISATION_KEYS or key.endswith(".num_batches_tracked"):
            continue
        name = _rename(key)
        if name in converted:
            raise ValueError(f"key {key!r} maps onto {name!r} a second time")
        tensor = as_tensor(key, value)
        converted[name] = tensor.float() if tensor.is_floating_point() else tensor
    _check_against_model(converted)
    first = next(k for k in FIRST_CONVS if k in converted)
    converted[first] = fold_input_normalisation(converted[first], pixel_mean, pixel_std, input_format)
    return converted
