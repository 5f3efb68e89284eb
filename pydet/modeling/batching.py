"""Helpers that let detection heads treat a batch of images with different box counts as one tensor."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def pad_per_image(tensors: Sequence[Tensor], pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Stack ``[L_i, ...]`` tensors into ``[B, max L_i, ...]``; also returns the ``[B, max L_i]`` mask of
    real rows. Lengths come from shapes, so nothing is read back from the device."""
    lengths = [t.shape[0] for t in tensors]
    longest = max(lengths, default=0)
    padded = tensors[0].new_full((len(tensors), longest) + tuple(tensors[0].shape[1:]), pad_value)
    for slot, t in zip(padded, tensors):
        slot[: t.shape[0]].copy_(t)
    valid = torch.arange(longest, device=padded.device) < torch.tensor(lengths, device=padded.device)[:, None]
    return padded, valid


def gather_rows(padded: Tensor, index: Tensor) -> Tensor:
    """``padded [B, M, ...]`` indexed per image by ``index [B, K]`` -> ``[B, K, ...]``; zeros when M == 0
    (images without ground truth: whatever is gathered there is masked out by the caller)."""
    if padded.shape[1] == 0:
        return padded.new_zeros(index.shape + padded.shape[2:])
    expanded = index.reshape(index.shape + (1,) * (padded.dim() - 2)).expand(index.shape + padded.shape[2:])
    return padded.gather(1, expanded)


def clip_boxes_per_image(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """``pydet.ops.clip_boxes_to_image`` with one ``(h, w)`` per box: ``image_sizes`` broadcasts against
    ``boxes[..., :2]`` (e.g. ``[B, 1, 2]`` for ``[B, N, 4]`` boxes)."""
    sizes = image_sizes.to(boxes.dtype)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), sizes[..., 1:2])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), sizes[..., 0:1])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def keep_first_per_image(keep: Tensor, image_of_keep: Tensor, limit: int, num_images: int) -> tuple[Tensor, list[int]]:
    """From ``keep`` (indices sorted by decreasing score, images mixed, as ``batched_nms`` returns them)
    keep each image's first ``limit``; returns them grouped by image, and the count per image."""
    order = torch.sort(image_of_keep, stable=True).indices
    keep, image_of_keep = keep[order], image_of_keep[order]
    counts = torch.bincount(image_of_keep, minlength=num_images)
    first_of_image = counts.cumsum(0) - counts
    rank = torch.arange(keep.shape[0], device=keep.device) - first_of_image[image_of_keep]
    return keep[rank < limit], counts.clamp(max=limit).tolist()
