"""Anchor grids for anchor-based heads and point grids for anchor-free ones.

Kernels: csrc/cpu/anchors_kernel.cpp, csrc/cuda/anchors_kernel.cu. Reference: pydet/reference/anchors.py.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_boxes


def _pairs(values, name: str, levels: int) -> list[int]:
    """Flatten per-level ``int`` or ``(h, w)`` entries into ``[h0, w0, h1, w1, ...]``."""
    values = list(values)
    if len(values) != levels:
        raise ValueError(f"{name} must have one entry per level ({levels}), got {len(values)}")
    flat = []
    for v in values:
        if isinstance(v, Tensor):
            v = v.tolist()
        pair = (v, v) if isinstance(v, (int, float)) else tuple(v)
        if len(pair) != 2:
            raise ValueError(f"{name} entries must be an int or a (height, width) pair, got {v!r}")
        if any(int(p) != p or p < 0 for p in pair):
            raise ValueError(f"{name} entries must be non-negative integers, got {v!r}")
        flat += [int(p) for p in pair]
    return flat


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """Zero-centred anchors ``[len(ratios) * len(sizes), 4]`` for one level, rounded like torchvision."""
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
    if scales.dim() != 1 or ratios.dim() != 1:
        raise ValueError("sizes and aspect_ratios must be 1-D sequences")
    if (ratios <= 0).any() or (scales <= 0).any():
        raise ValueError("sizes and aspect_ratios must be positive")
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(feature_sizes, strides, cell_anchors: Sequence[Tensor]) -> list[Tensor]:
    """Anchors of every level: ``cell_anchors[l]`` shifted to each position of a ``feature_sizes[l]`` grid.

    ``feature_sizes`` and ``strides`` hold an ``(h, w)`` pair (or one int) per level. Level ``l``
    gives ``[h * w * A, 4]`` anchors, position-major then cell anchor, as torchvision's AnchorGenerator.
    """
    cell_anchors = list(cell_anchors)
    for a in cell_anchors:
        check_boxes(a, "cell_anchors")
        if a.device != cell_anchors[0].device:
            raise ValueError("cell_anchors must all be on one device")
    sizes = _pairs(feature_sizes, "feature_sizes", len(cell_anchors))
    steps = _pairs(strides, "strides", len(cell_anchors))
    return torch.ops.pydet.grid_anchors(cell_anchors, sizes, steps)


def grid_points(feature_sizes, strides, offset: float | Sequence[float] | None = None, *,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> list[Tensor]:
    """Grid points ``[h * w, 2]`` (x, y) per level: ``index * stride + offset``, x fastest.

    ``offset=None`` puts points at ``stride // 2`` (FCOS / CenterMask2); ``offset=0`` with stride 1
    gives the integer cell grid that YOLO decoding adds its offsets to.
    """
    levels = len(list(feature_sizes))
    sizes = _pairs(feature_sizes, "feature_sizes", levels)
    steps = _pairs(strides, "strides", levels)
    if offset is None:
        offsets = [float(steps[2 * i] // 2) for i in range(levels)]
    elif isinstance(offset, (int, float)):
        offsets = [float(offset)] * levels
    else:
        offsets = [float(o) for o in offset]
        if len(offsets) != levels:
            raise ValueError(f"offset must have one value per level ({levels}), got {len(offsets)}")
    if torch.onnx.is_in_onnx_export():
        return _grid_points_onnx(sizes, steps, offsets, dtype, torch.device(device))
    return torch.ops.pydet.grid_points(sizes, steps, offsets, dtype=dtype, device=torch.device(device))


def _grid_points_onnx(sizes: list[int], steps: list[int], offsets: list[float], dtype: torch.dtype,
                      device: torch.device) -> list[Tensor]:
    """The kernel's arithmetic in torch operators (Range, Mul, Add, Tile) for the ONNX exporter."""
    levels = []
    for level, offset in enumerate(offsets):
        h, w = sizes[2 * level], sizes[2 * level + 1]
        xs = torch.arange(w, dtype=dtype, device=device) * steps[2 * level + 1] + offset
        ys = torch.arange(h, dtype=dtype, device=device) * steps[2 * level] + offset
        levels.append(torch.stack((xs.repeat(h), ys.repeat_interleave(w)), 1))
    return levels


@torch.library.register_fake("pydet::grid_anchors")
def _(cell_anchors, feature_sizes, strides):
    return [a.new_empty(feature_sizes[2 * i] * feature_sizes[2 * i + 1] * a.shape[0], 4)
            for i, a in enumerate(cell_anchors)]


@torch.library.register_fake("pydet::grid_points")
def _(feature_sizes, strides, offsets, *, dtype=None, device=None):
    return [torch.empty(feature_sizes[2 * i] * feature_sizes[2 * i + 1], 2, dtype=dtype or torch.float32,
                        device=device) for i in range(len(offsets))]
