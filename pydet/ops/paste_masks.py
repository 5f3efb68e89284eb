"""Pasting per-box masks (e.g. Mask R-CNN's 28x28 predictions) into full-size images.

Semantics are detectron2's ``_do_paste_mask`` over the whole image: each image pixel ``(y, x)``
samples its mask bilinearly at mask coordinate ``u = (x + 0.5 - x0) / (x1 - x0) * w - 0.5`` (and
``v`` likewise), i.e. ``F.grid_sample(..., align_corners=False, padding_mode="zeros")``. Taps
outside the mask count as 0, so pixels within half a mask cell outside the box get a partial value
and everything further away is 0. Boxes that are empty (``x1 <= x0`` or ``y1 <= y0``), NaN or
infinite paste nothing; boxes reaching outside the image are clipped.

The kernels touch only the pixels of each box's range and build no sampling grid: memory is the
output alone. Kernels: csrc/cpu/paste_masks_kernel.cpp, csrc/cuda/paste_masks_kernel.cu.
Reference: pydet/reference/paste_masks.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_boxes, check_float, check_same_device, check_tensor


def _image_shape(image_shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be a (height, width) pair of ints, got {image_shape!r}") from None
    if height < 0 or width < 0:
        raise ValueError(f"image_shape must be non-negative, got {(height, width)}")
    return height, width


def _paste_args(masks: Tensor, boxes: Tensor, image_shape, threshold: float | None
                ) -> tuple[Tensor, int, int, float | None]:
    """Validated ``(masks [N, h, w], height, width, threshold)`` of a paste op's arguments."""
    check_tensor(masks, "masks", dims=(3, 4))
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks with 4 dimensions must be [N, 1, h, w], got {tuple(masks.shape)}")
        masks = masks[:, 0]
    check_boxes(boxes, "boxes")
    check_same_device(("masks", masks), ("boxes", boxes))
    if masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"masks and boxes must have the same length, got {masks.shape[0]} and {boxes.shape[0]}")
    if masks.shape[0] > 0 and masks[0].numel() == 0:
        raise ValueError(f"masks must have a non-empty [h, w], got {tuple(masks.shape)}")
    height, width = _image_shape(image_shape)
    if threshold is not None:
        threshold = check_float(threshold, "threshold")
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0 (or None for probabilities), got {threshold}")
    return masks, height, width, threshold


def paste_masks(masks: Tensor, boxes: Tensor, image_shape: tuple[int, int],
                threshold: float | None = 0.5) -> Tensor:
    """Paste ``masks [N, h, w]`` (or ``[N, 1, h, w]``) into their ``boxes [N, 4]`` on an image of
    ``image_shape = (H, W)``; returns ``[N, H, W]``.

    With a ``threshold`` the result is ``bool`` (pasted value ``>= threshold``); with ``None`` it is
    the pasted probabilities in the masks' dtype. Not differentiable.
    """
    masks, height, width, threshold = _paste_args(masks, boxes, image_shape, threshold)
    return torch.ops.pydet.paste_masks(masks, boxes, height, width, threshold)


def paste_masks_rle(masks: Tensor, boxes: Tensor, image_shape: tuple[int, int],
                    threshold: float = 0.5) -> list[dict]:
    """The bool masks of :func:`paste_masks` as COCO RLEs, without building them.

    Returns one ``{"size": [H, W], "counts": str}`` per mask, ``counts`` being the compressed string
    ``pycocotools.mask.encode`` gives for the same mask (decode with ``pycocotools.mask.decode`` after
    ``counts.encode()``, or pass the dicts to pycocotools' COCO results as they are). Each mask costs
    time and memory in proportion to its box's pixel area, not the image's. CUDA inputs are copied to
    the host, where the encoding runs.
    """
    if threshold is None:
        raise ValueError("threshold must be a number for paste_masks_rle (an RLE is a binary mask)")
    masks, height, width, threshold = _paste_args(masks, boxes, image_shape, threshold)
    chars, offsets = torch.ops.pydet.paste_masks_rle(masks, boxes, height, width, threshold)
    text = chars.numpy().tobytes().decode("ascii")
    bounds = offsets.tolist()
    return [{"size": [height, width], "counts": text[start:end]} for start, end in zip(bounds[:-1], bounds[1:])]


@torch.library.register_fake("pydet::paste_masks")
def _(masks, boxes, height, width, threshold):
    dtype = masks.dtype if threshold is None else torch.bool
    return masks.new_empty((masks.shape[0], height, width), dtype=dtype)


@torch.library.register_fake("pydet::paste_masks_rle")
def _(masks, boxes, height, width, threshold):
    # The string lengths depend on the mask values; the outputs are host tensors on any device.
    chars = masks.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.uint8, device="cpu")
    return chars, masks.new_empty((masks.shape[0] + 1,), dtype=torch.int64, device="cpu")
