"""FCOS / CenterMask2 training targets: assign each feature-map point to at most one ground-truth box.

Semantics follow AdelaiDet's ``FCOSOutputs.compute_targets_for_locations``. For point ``(x, y)`` with
stride ``s`` and size range ``[lo, hi]``, box ``j`` is a candidate when

* the point is strictly inside the sampling region (all four distances > 0, so a point on an edge
  is outside): the box itself, or, when ``center_sampling_radius > 0``, the box clipped to the square
  ``centre +- radius * s`` (AdelaiDet's ``get_sample_region``), and
* ``lo <= max(l, t, r, b) <= hi`` (inclusive), with the distances to the box itself.

Among candidates the smallest box area wins, then the lowest index. A point gets its box's label,
``reg_targets = (l, t, r, b)`` in pixels and ``matched_gt = j``; unmatched points get
``labels = num_classes``, ``reg_targets = 0`` and ``matched_gt = -1``. NaN boxes are never candidates.
Memory is O(L + M) (no L x M intermediate). Not differentiable. A real box's label outside
``[0, num_classes)`` is refused: a ValueError on the CPU, a device-side assertion on CUDA (no host sync).

Kernels: csrc/cpu/fcos_targets_kernel.cpp, csrc/cuda/fcos_targets_kernel.cu.
Reference: pydet/reference/fcos_targets.py.
"""
from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_boxes, check_float, check_same_device, check_tensor
from .anchors import grid_points

# AdelaiDet's FCOS defaults for P3-P7 (MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]).
DEFAULT_SIZE_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))

_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _per_point(values, name: str, points: Tensor, shape: tuple[int, ...]) -> Tensor:
    check_tensor(values, name, dtypes=_INTEGER + (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    check_same_device(("points", points), (name, values))
    if tuple(values.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(values.shape)}")
    return values.to(points.dtype)


def _labels(labels, name: str, shape: tuple[int, ...], points: Tensor) -> Tensor:
    check_tensor(labels, name, dtypes=_INTEGER)
    check_same_device(("points", points), (name, labels))
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(labels.shape)}")
    return labels.long()


def _common_args(points, strides, size_ranges, num_classes, center_sampling_radius):
    check_tensor(points, "points", dims=2, last=2)
    num_points = points.shape[0]
    strides = _per_point(strides, "strides", points, (num_points,))
    size_ranges = _per_point(size_ranges, "size_ranges", points, (num_points, 2))
    try:
        valid = not isinstance(num_classes, bool) and operator.index(num_classes) >= 0
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    num_classes = operator.index(num_classes)
    radius = check_float(center_sampling_radius, "center_sampling_radius", low=0.0)
    if math.isinf(radius):
        raise ValueError("center_sampling_radius must be finite")
    return strides, size_ranges, num_classes, radius


def _check_gt_boxes(gt_boxes, points, dims):
    check_tensor(gt_boxes, "gt_boxes", dims=dims, last=4)
    check_same_device(("points", points), ("gt_boxes", gt_boxes))
    if gt_boxes.dtype != points.dtype:
        raise ValueError(f"gt_boxes must have the same dtype as points ({points.dtype}), got {gt_boxes.dtype}")


def fcos_targets(points: Tensor, strides: Tensor, size_ranges: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                 num_classes: int, center_sampling_radius: float = 1.5) -> tuple[Tensor, Tensor, Tensor]:
    """Targets of one image: ``points [L, 2]`` (x, y), per-point ``strides [L]`` and ``size_ranges [L, 2]``
    against ``gt_boxes [M, 4]`` with ``gt_labels [M]``.

    Returns ``labels [L]`` int64, ``reg_targets [L, 4]`` in points' dtype and ``matched_gt [L]`` int64.
    """
    strides, size_ranges, num_classes, radius = _common_args(points, strides, size_ranges, num_classes,
                                                             center_sampling_radius)
    check_boxes(gt_boxes, "gt_boxes")
    _check_gt_boxes(gt_boxes, points, 2)
    gt_labels = _labels(gt_labels, "gt_labels", (gt_boxes.shape[0],), points)
    return tuple(torch.ops.pydet.fcos_targets(points, strides, size_ranges, gt_boxes, gt_labels, num_classes, radius))


def fcos_targets_batched(points: Tensor, strides: Tensor, size_ranges: Tensor,
                         gt_boxes: Tensor | Sequence[Tensor], gt_labels: Tensor | Sequence[Tensor],
                         num_gt: Tensor | Sequence[int] | None, num_classes: int,
                         center_sampling_radius: float = 1.5) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fcos_targets` for ``B`` images sharing the same points, in one kernel launch.

    ``gt_boxes [B, M, 4]`` and ``gt_labels [B, M]`` are padded per image, of which the first
    ``num_gt[b]`` rows are real. Lists of per-image ``[M_b, 4]`` boxes and ``[M_b]`` labels are padded
    here (pass ``num_gt=None``). Returns ``labels [B, L]``, ``reg_targets [B, L, 4]``, ``matched_gt [B, L]``
    with ``matched_gt`` indexing each image's own boxes. On CUDA, ``num_gt`` values outside ``[0, M]``
    are clamped into it (checking would synchronise with the host); on CPU they raise.
    """
    strides, size_ranges, num_classes, radius = _common_args(points, strides, size_ranges, num_classes,
                                                             center_sampling_radius)
    if isinstance(gt_boxes, (list, tuple)):
        if num_gt is not None:
            raise ValueError("num_gt must be None when gt_boxes is a list (it is taken from the list)")
        if not isinstance(gt_labels, (list, tuple)) or len(gt_labels) != len(gt_boxes):
            raise ValueError("gt_labels must be a list as long as gt_boxes when gt_boxes is a list")
        for boxes, labels in zip(gt_boxes, gt_labels):
            check_boxes(boxes, "gt_boxes")
            _check_gt_boxes(boxes, points, 2)
            _labels(labels, "gt_labels", (boxes.shape[0],), points)
        num_gt = [boxes.shape[0] for boxes in gt_boxes]
        gt_boxes, gt_labels = _pad(gt_boxes, points, (4,), points.dtype), _pad(gt_labels, points, (), torch.int64)
    _check_gt_boxes(gt_boxes, points, 3)
    gt_labels = _labels(gt_labels, "gt_labels", tuple(gt_boxes.shape[:2]), points)
    if not isinstance(num_gt, Tensor):
        num_gt = torch.as_tensor(num_gt, dtype=torch.int64, device=points.device)
    check_tensor(num_gt, "num_gt", dtypes=_INTEGER)
    check_same_device(("points", points), ("num_gt", num_gt))
    if tuple(num_gt.shape) != (gt_boxes.shape[0],):
        raise ValueError(f"num_gt must have shape [B] = [{gt_boxes.shape[0]}], got {tuple(num_gt.shape)}")
    return tuple(torch.ops.pydet.fcos_targets_batched(points, strides, size_ranges, gt_boxes, gt_labels,
                                                      num_gt.long(), num_classes, radius))


def _pad(tensors: Sequence[Tensor], points: Tensor, tail: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    longest = max((t.shape[0] for t in tensors), default=0)
    out = torch.zeros((len(tensors), longest) + tail, dtype=dtype, device=points.device)
    for i, t in enumerate(tensors):
        out[i, :t.shape[0]] = t
    return out


def fcos_centerness(reg_targets: Tensor) -> Tensor:
    """FCOS centre-ness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``reg_targets [..., 4]``;
    0 where a distance is not positive (unmatched points, degenerate targets)."""
    check_tensor(reg_targets, "reg_targets", last=4)
    lr_min, lr_max = reg_targets[..., 0::2].aminmax(dim=-1)
    tb_min, tb_max = reg_targets[..., 1::2].aminmax(dim=-1)
    valid = (lr_min > 0) & (tb_min > 0)
    ratio = (lr_min / lr_max) * (tb_min / tb_max)
    return torch.where(valid, ratio, torch.zeros_like(ratio)).sqrt()


def fcos_level_inputs(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                      size_ranges: Sequence[tuple[float, float]] = DEFAULT_SIZE_RANGES, *,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Points of every level (``grid_points``: ``index * stride + stride // 2``, level by level, x fastest)
    with their per-point ``strides [L]`` and ``size_ranges [L, 2]``, ready for :func:`fcos_targets`."""
    strides = list(strides)
    size_ranges = [tuple(float(v) for v in r) for r in size_ranges]
    if any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in strides):
        raise ValueError(f"strides must be positive ints (one per level), got {strides}")
    if len(size_ranges) != len(strides) or any(len(r) != 2 for r in size_ranges):
        raise ValueError(f"size_ranges must hold one (low, high) pair per level ({len(strides)}), got {size_ranges}")
    levels = grid_points(feature_sizes, strides, dtype=dtype, device=device)
    counts = [level.shape[0] for level in levels]
    per_point_strides = torch.cat([torch.full((n,), float(s), dtype=dtype, device=device)
                                   for n, s in zip(counts, strides)])
    per_point_ranges = torch.cat([torch.tensor(r, dtype=dtype, device=device).expand(n, 2)
                                  for n, r in zip(counts, size_ranges)])
    return torch.cat(levels), per_point_strides, per_point_ranges


@torch.library.register_fake("pydet::fcos_targets")
def _(points, strides, size_ranges, gt_boxes, gt_labels, num_classes, center_sampling_radius):
    num_points = points.shape[0]
    return (gt_labels.new_empty(num_points), points.new_empty(num_points, 4), gt_labels.new_empty(num_points))


@torch.library.register_fake("pydet::fcos_targets_batched")
def _(points, strides, size_ranges, gt_boxes, gt_labels, num_gt, num_classes, center_sampling_radius):
    batch, num_points = gt_boxes.shape[0], points.shape[0]
    return (gt_labels.new_empty(batch, num_points), points.new_empty(batch, num_points, 4),
            gt_labels.new_empty(batch, num_points))
