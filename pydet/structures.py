"""Small data structures shared by the models."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageList:
    """A padded batch ``tensors [B, C, H, W]`` and each image's size before padding, ``(h, w)``."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> "ImageList":
        return ImageList(self.tensors.to(device), self.image_sizes)


def batch_images(images: list[Tensor], size_divisible: int = 32, pad_value: float = 0.0) -> ImageList:
    """Pad ``[C, h, w]`` images to one ``[B, C, H, W]`` tensor, H and W rounded up to ``size_divisible``."""
    if not images:
        raise ValueError("images must be a non-empty list")
    max_h = max(img.shape[-2] for img in images)
    max_w = max(img.shape[-1] for img in images)
    stride = max(int(size_divisible), 1)
    max_h, max_w = -(-max_h // stride) * stride, -(-max_w // stride) * stride
    batch = images[0].new_full((len(images), images[0].shape[0], max_h, max_w), pad_value)
    for img, slot in zip(images, batch):
        slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return ImageList(batch, [(int(img.shape[-2]), int(img.shape[-1])) for img in images])
