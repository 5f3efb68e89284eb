"""RoIAlign with torchvision semantics, and its fused multi-level (FPN) form.

Kernels: csrc/cpu/roi_align_kernel.cpp, csrc/cuda/roi_align_kernel.cu. Reference: pydet/reference/roi_align.py.

Behaviour worth knowing (all as in torchvision unless said otherwise):

* With ``aligned=False`` every RoI is at least 1x1 feature pixel, so empty and inverted boxes still pool
  the pixel at their first corner. With ``aligned=True`` nothing is forced: with adaptive sampling an
  empty or inverted box takes no samples (zeros, no gradient); with a fixed ``sampling_ratio`` its samples
  sit on (empty) or run backwards from (inverted) its first corner.
* Samples further than one pixel outside the feature map read zero; boxes partly or wholly outside the
  map are fine. Boxes with NaN coordinates give zeros and no gradient.
* Batch indices (column 0 of ``[K, 5]`` rois) must be integers in ``[0, N)``. The CPU kernel raises a
  ``ValueError``. On CUDA a check would cost a host sync per call (tens of microseconds, of the order of
  the kernel at Faster R-CNN sizes) and a device-side assert would leave the CUDA context unusable,
  so the CUDA kernels do neither: a RoI with a bad index pools NaN (visible in any loss or output) and
  passes no gradient. Boxes given as a list of ``[L, 4]`` tensors get valid indices by construction.
* Half and bfloat16 inputs are computed in float32 and rounded once. Under autocast the op runs in
  float32 and returns the input's dtype, like torchvision.
* The CUDA backward uses atomics, unless ``torch.use_deterministic_algorithms(True)`` is on: then it
  gathers, one thread per input element, and is bit-for-bit reproducible. The CPU backward is always
  deterministic.
"""
from __future__ import annotations

import operator
import sys
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_float, check_same_device, check_tensor
from ._onnx import onnx_op

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, float)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _pair(output_size, name: str = "output_size") -> tuple[int, int]:
    pair = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size, output_size)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {output_size!r}")
    try:
        size = tuple(_as_int(s, name) for s in pair)
    except TypeError:
        raise ValueError(f"{name} must hold positive ints, got {output_size!r}") from None
    if min(size) <= 0:
        raise ValueError(f"{name} must hold positive ints, got {output_size!r}")
    return size


def _scale(value, name: str = "spatial_scale") -> float:
    scale = check_float(value, name)
    if not 0 < scale < float("inf"):
        raise ValueError(f"{name} must be finite and positive, got {scale}")
    return scale


def convert_boxes_to_rois(boxes: Tensor | Sequence[Tensor], batch_size: int | None = None) -> Tensor:
    """``[K, 5]`` rois ``(batch index, x1, y1, x2, y2)`` from a ``[K, 5]`` tensor or a list of ``[L, 4]`` boxes.

    A list holds one tensor per image; its rows are numbered by their position in the list.
    """
    if isinstance(boxes, Tensor):
        check_tensor(boxes, "boxes", dims=2, last=5)
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a [K, 5] tensor or a list of [L, 4] tensors, got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError("boxes must not be an empty list: give one [L, 4] tensor per image")
    for b in boxes:
        check_tensor(b, "boxes", dims=2, last=4)
        if b.device != boxes[0].device or b.dtype != boxes[0].dtype:
            raise ValueError("boxes must all have the same dtype and device")
    if batch_size is not None and len(boxes) > batch_size:
        raise ValueError(f"boxes holds {len(boxes)} images but the input has a batch of {batch_size}")
    concat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, concat], dim=1)


def roi_align(input: Tensor, boxes: Tensor | Sequence[Tensor], output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (Mask R-CNN): average of bilinear samples over each bin, ``[K, C, out_h, out_w]``.

    ``boxes`` is a ``[K, 5]`` tensor of ``(batch index, x1, y1, x2, y2)`` or a list of ``[L, 4]`` boxes per
    image, in image pixels; ``spatial_scale`` maps them onto ``input``. ``sampling_ratio <= 0`` takes
    ``ceil(roi size / output size)`` samples per bin side. ``aligned=True`` shifts boxes by half a pixel
    (Detectron2's ROIAlignV2). Differentiable with respect to ``input``.
    """
    check_tensor(input, "input", dims=4)
    rois = convert_boxes_to_rois(boxes, input.shape[0])
    check_same_device(("input", input), ("boxes", rois))
    pooled_h, pooled_w = _pair(output_size)
    args = (_scale(spatial_scale), pooled_h, pooled_w, _as_int(sampling_ratio, "sampling_ratio"), bool(aligned))
    if torch.onnx.is_in_onnx_export():
        return _roi_align_onnx(input, rois, *args)
    return torch.ops.pydet.roi_align(input, rois, *args)


def _roi_align_onnx(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
                    sampling_ratio: int, aligned: bool) -> Tensor:
    """``roi_align`` as ONNX's RoiAlign (average mode): ``half_pixel`` is ``aligned=True``'s half-pixel shift,
    ``output_half_pixel`` the legacy mode with RoIs of at least one pixel; sampling ratio 0 is adaptive."""
    attributes = {
        "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
        "mode": "avg", "output_height": pooled_height, "output_width": pooled_width,
        "sampling_ratio": max(sampling_ratio, 0), "spatial_scale": spatial_scale,
    }
    return onnx_op("RoiAlign", (input, rois[:, 1:].contiguous(), rois[:, 0].to(torch.int64)), attributes,
                   dtype=input.dtype, shape=(rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _multi_scale_roi_align_onnx(features: list[Tensor], rois: Tensor, levels: Tensor, spatial_scales: list[float],
                                pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """Each box pooled by ONNX RoiAlign on its own level only, so the work is that of one RoiAlign over all
    boxes (pooling every box on every level and selecting made onnxruntime's RoiAlign a quarter of Mask
    R-CNN's time): a level's boxes are picked with NonZero and pooled, boxes of no level get zero rows (as
    in the kernel), and one Gather puts the rows back in the boxes' order (onnxruntime's ScatterND is
    several times slower at that)."""
    pieces, rows_by_level = [], []
    for index, (feature, scale) in enumerate(zip(features, spatial_scales)):
        rows = torch.nonzero(levels == index).squeeze(1)
        pieces.append(_roi_align_onnx(feature, rois[rows], scale, pooled_height, pooled_width, sampling_ratio,
                                      aligned))
        rows_by_level.append(rows)
    outside = torch.nonzero((levels < 0) | (levels >= len(features))).squeeze(1)
    pieces.append(features[0].new_zeros((outside.shape[0], features[0].shape[1], pooled_height, pooled_width)))
    order = torch.cat(rows_by_level + [outside])  # the box of each pooled row: a permutation of the boxes
    position = torch.zeros_like(levels).index_copy(0, order, torch.arange(order.shape[0], device=levels.device))
    return torch.cat(pieces)[position]


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4,
               eps: float = 1e-6) -> Tensor:
    """torchvision's ``LevelMapper``: level ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)``.

    Clamped to ``[k_min, k_max]`` and returned as an int64 index from ``k_min``, computed in the boxes'
    dtype like torchvision. Boxes whose area is NaN or negative get ``-1`` (they pool zeros).
    """
    check_tensor(boxes, "boxes", dims=2, last=4)
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(eps, dtype=sizes.dtype))
    return _level_index(levels, k_min, k_max)


def area_ratio_levels(boxes: Tensor, image_areas: Tensor, k_min: int, k_max: int) -> Tensor:
    """CenterMask's level: ``ceil(k_max - log2(image_area / box_area))``, clamped to ``[k_min, k_max]``.

    ``image_areas`` holds the area of each box's (resized, unpadded) image. With CenterMask2's P3-P5 maps
    ``k_max`` is 5. Computed in the boxes' dtype; NaN or negative areas give ``-1``.
    """
    check_tensor(boxes, "boxes", dims=2, last=4)
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.ceil(k_max - torch.log2(image_areas.to(box_areas.dtype) / box_areas + sys.float_info.epsilon))
    return _level_index(levels, k_min, k_max)


def _level_index(levels: Tensor, k_min: int, k_max: int) -> Tensor:
    levels = torch.clamp(levels, min=k_min, max=k_max)
    return torch.where(torch.isnan(levels), -1, levels.nan_to_num(k_min).to(torch.int64) - k_min)


def level_range(spatial_scales: Sequence[float]) -> tuple[int, int]:
    """``(k_min, k_max)`` of feature maps with these scales (level k has scale 2^-k), as torchvision."""
    k_min = -torch.log2(torch.tensor(spatial_scales[0], dtype=torch.float32)).item()
    k_max = -torch.log2(torch.tensor(spatial_scales[-1], dtype=torch.float32)).item()
    return int(k_min), int(k_max)


def multi_scale_roi_align(features: Sequence[Tensor], boxes: Tensor | Sequence[Tensor], output_size,
                          spatial_scales: Sequence[float], sampling_ratio: int = -1, aligned: bool = False, *,
                          levels: Tensor | None = None, canonical_scale: float = 224,
                          canonical_level: int = 4) -> Tensor:
    """RoIAlign of each box on its own pyramid level, in one kernel: ``[K, C, out_h, out_w]``.

    ``features[l]`` has scale ``spatial_scales[l]`` (finest first). ``levels[k]`` picks box k's map; by
    default torchvision's ``MultiScaleRoIAlign`` mapping (:func:`fpn_levels`) with the levels implied
    by the scales. Boxes with a level outside ``[0, len(features))`` pool zeros. Rows follow the
    concatenated boxes. No host synchronisation on CUDA, where at most 8 feature maps are supported (the
    level table travels as a kernel argument; more raise a ValueError).
    """
    if isinstance(features, Tensor) or not isinstance(features, (list, tuple)) or len(features) == 0:
        raise TypeError("features must be a non-empty list of [N, C, H, W] tensors")
    features = list(features)
    for f in features:
        check_tensor(f, "features", dims=4)
    rois = convert_boxes_to_rois(boxes, features[0].shape[0])
    check_same_device(("features", features[0]), ("boxes", rois))
    scales = [_scale(s, "spatial_scales") for s in spatial_scales]
    if len(scales) != len(features):
        raise ValueError(f"spatial_scales must have one entry per feature map ({len(features)}), got {len(scales)}")
    pooled_h, pooled_w = _pair(output_size)
    sampling_ratio = _as_int(sampling_ratio, "sampling_ratio")
    if levels is None:
        if len(features) == 1:
            return roi_align(features[0], rois, (pooled_h, pooled_w), scales[0], sampling_ratio, aligned)
        levels = fpn_levels(rois[:, 1:], *level_range(scales), canonical_scale, canonical_level)
    check_tensor(levels, "levels", dims=1, dtypes=_INDEX_DTYPES)
    if levels.shape[0] != rois.shape[0]:
        raise ValueError(f"levels must have one entry per box ({rois.shape[0]}), got {levels.shape[0]}")
    check_same_device(("boxes", rois), ("levels", levels))
    args = (features, rois, levels.long(), scales, pooled_h, pooled_w, sampling_ratio, bool(aligned))
    if torch.onnx.is_in_onnx_export():
        return _multi_scale_roi_align_onnx(*args)
    return torch.ops.pydet.multi_scale_roi_align(*args)


# ---- fake kernels ----

@torch.library.register_fake("pydet::roi_align")
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"rois must have shape [K, 5], got {rois.shape}")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("pydet::roi_align_backward")
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio,
      aligned):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("pydet::multi_scale_roi_align")
def _(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"rois must have shape [K, 5], got {rois.shape}")
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@torch.library.register_fake("pydet::multi_scale_roi_align_backward")
def _(grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size, channels, heights, widths,
      sampling_ratio, aligned):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


# ---- autograd: the backward ops are linear in `grad`, so their own gradient is the forward op ----

def _setup_roi_align(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.pydet.roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                    batch_size, channels, height, width, sampling_ratio, aligned)
    return grad_input, None, None, None, None, None, None


def _setup_roi_align_backward(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width, *_, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_double_backward(ctx, grad_grad_input):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.pydet.roi_align(grad_grad_input, rois, *ctx.args)
    return (grad_grad,) + (None,) * 10


def _setup_multi_scale(ctx, inputs, output):
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.shapes = [f.shape for f in features]
    ctx.args = (spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned)


def _multi_scale_backward(ctx, grad):
    rois, levels = ctx.saved_tensors
    spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
    batch_size, channels = ctx.shapes[0][0], ctx.shapes[0][1]
    grads = torch.ops.pydet.multi_scale_roi_align_backward(
        grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size, channels,
        [s[2] for s in ctx.shapes], [s[3] for s in ctx.shapes], sampling_ratio, aligned)
    return list(grads), None, None, None, None, None, None, None


def _setup_multi_scale_backward(ctx, inputs, output):
    grad, rois, levels, spatial_scales, pooled_height, pooled_width, *_, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.args = (spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned)


def _multi_scale_double_backward(ctx, grad_grads):
    rois, levels = ctx.saved_tensors
    grad_grad = torch.ops.pydet.multi_scale_roi_align(list(grad_grads), rois, levels, *ctx.args)
    return (grad_grad,) + (None,) * 11


torch.library.register_autograd("pydet::roi_align", _roi_align_backward, setup_context=_setup_roi_align)
torch.library.register_autograd("pydet::roi_align_backward", _roi_align_double_backward,
                                setup_context=_setup_roi_align_backward)
torch.library.register_autograd("pydet::multi_scale_roi_align", _multi_scale_backward,
                                setup_context=_setup_multi_scale)
torch.library.register_autograd("pydet::multi_scale_roi_align_backward", _multi_scale_double_backward,
                                setup_context=_setup_multi_scale_backward)
