"""Box utilities: pairwise IoU, the R-CNN box coder (torchvision BoxCoder), clipping and filtering.

Kernels: csrc/cpu/boxes_kernel.cpp, csrc/cuda/boxes_kernel.cu. Reference: pydet/reference/boxes.py.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_boxes, check_same_device, check_same_dtype, check_tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_weights(weights) -> list[float]:
    w = [float(v) for v in weights]
    if len(w) != 4:
        raise ValueError(f"weights must have 4 elements, got {len(w)}")
    if any(v == 0 or not math.isfinite(v) for v in w):
        raise ValueError(f"weights must be finite and non-zero, got {w}")
    return w


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of ``xyxy`` boxes: ``[N, 4] x [M, 4] -> [N, M]`` (torchvision semantics)."""
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    check_same_device(("boxes1", boxes1), ("boxes2", boxes2))
    check_same_dtype(("boxes1", boxes1), ("boxes2", boxes2))
    return torch.ops.pydet.box_iou(boxes1, boxes2)


def encode_boxes(reference_boxes: Tensor, proposals: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets ``(dx, dy, dw, dh)`` that map ``proposals`` onto ``reference_boxes``."""
    check_boxes(reference_boxes, "reference_boxes")
    check_boxes(proposals, "proposals")
    check_same_device(("reference_boxes", reference_boxes), ("proposals", proposals))
    check_same_dtype(("reference_boxes", reference_boxes), ("proposals", proposals))
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(f"reference_boxes and proposals must have the same length, got "
                         f"{reference_boxes.shape[0]} and {proposals.shape[0]}")
    return torch.ops.pydet.encode_boxes(reference_boxes, proposals, _check_weights(weights))


def decode_boxes(rel_codes: Tensor, boxes: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> Tensor:
    """Apply ``rel_codes [N, K*4]`` to ``boxes [N, 4]``; returns ``[N, K*4]`` boxes in ``rel_codes``' dtype.

    Half-precision inputs are computed in float32 and rounded once at the end.
    """
    check_tensor(rel_codes, "rel_codes", dims=2)
    if rel_codes.shape[1] % 4 != 0:
        raise ValueError(f"rel_codes must have shape [N, K*4], got {tuple(rel_codes.shape)}")
    check_boxes(boxes, "boxes")
    check_same_device(("rel_codes", rel_codes), ("boxes", boxes))
    if rel_codes.shape[0] != boxes.shape[0]:
        raise ValueError(f"rel_codes and boxes must have the same length, got {rel_codes.shape[0]} and "
                         f"{boxes.shape[0]}")
    scale_clamp = float(scale_clamp)
    if math.isnan(scale_clamp):
        raise ValueError("scale_clamp must not be NaN")
    if torch.onnx.is_in_onnx_export():
        return _decode_boxes_onnx(rel_codes, boxes, _check_weights(weights), scale_clamp)
    return torch.ops.pydet.decode_boxes(rel_codes, boxes, _check_weights(weights), scale_clamp)


def _decode_boxes_onnx(rel_codes: Tensor, boxes: Tensor, weights: list[float], scale_clamp: float) -> Tensor:
    """The kernel's arithmetic in standard operators, one rounding per operation in the kernel's order (the
    kernel is built without FMA contraction), for ONNX export."""
    codes = rel_codes.reshape(rel_codes.shape[0], -1, 4)
    widths, heights = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
    ctr_x, ctr_y = boxes[:, 0, None] + 0.5 * widths, boxes[:, 1, None] + 0.5 * heights
    dx, dy = codes[..., 0] / weights[0], codes[..., 1] / weights[1]
    dw = (codes[..., 2] / weights[2]).clamp(max=scale_clamp)
    dh = (codes[..., 3] / weights[3]).clamp(max=scale_clamp)
    pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = 0.5 * (torch.exp(dw) * widths), 0.5 * (torch.exp(dh) * heights)
    decoded = torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=-1)
    return decoded.reshape(rel_codes.shape)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp ``xyxy`` boxes (any leading shape) to an image of ``size = (height, width)``."""
    check_tensor(boxes, "boxes", last=4)
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both at least ``min_size``."""
    check_boxes(boxes, "boxes")
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return torch.where(keep)[0]


def box_area(boxes: Tensor) -> Tensor:
    check_tensor(boxes, "boxes", last=4)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


@torch.library.register_fake("pydet::box_iou")
def _(boxes1, boxes2):
    return boxes1.new_empty(boxes1.shape[0], boxes2.shape[0])


@torch.library.register_fake("pydet::encode_boxes")
def _(reference_boxes, proposals, weights):
    return reference_boxes.new_empty(reference_boxes.shape)


@torch.library.register_fake("pydet::decode_boxes")
def _(rel_codes, boxes, weights, scale_clamp):
    return rel_codes.new_empty(rel_codes.shape)
