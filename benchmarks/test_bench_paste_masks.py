"""Mask pasting: 100 Mask R-CNN masks (28 x 28) into an 800 x 1216 image, thresholded at 0.5.

Baselines: the float64 reference, and ``grid_sample`` — detectron2's CPU method (one mask at a time,
F.grid_sample on a grid over the box's window, written out here) — and torchvision's
``paste_masks_in_image`` where torchvision imports.
"""
import pytest
import torch
import torch.nn.functional as F

from pydet import ops
from pydet.reference import paste_masks as ref

from .conftest import cuda_timer, requires_cuda, requires_torchvision

N, MASK, IMAGE = 100, 28, (800, 1216)
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(N, MASK, MASK, generator=g)
    xy = torch.rand(N, 2, generator=g) * torch.tensor([IMAGE[1] - 100.0, IMAGE[0] - 100.0])
    wh = torch.rand(N, 2, generator=g) ** 2 * 300 + 8
    return masks, torch.cat([xy, xy + wh], dim=1)


def grid_sample_paste(masks, boxes, image_shape, threshold):
    """detectron2's CPU path: each mask sampled over the integer window around its box, then copied in."""
    height, width = image_shape
    out = torch.zeros(masks.shape[0], height, width, dtype=torch.bool)
    for i in range(masks.shape[0]):
        x0, y0, x1, y1 = boxes[i]
        left, top = int(max(x0.floor() - 1, 0)), int(max(y0.floor() - 1, 0))
        right, bottom = int(min(x1.ceil() + 1, width)), int(min(y1.ceil() + 1, height))
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([xs[None, :].expand(ys.shape[0], -1), ys[:, None].expand(-1, xs.shape[0])], dim=-1)
        window = F.grid_sample(masks[i][None, None], grid[None], align_corners=False)[0, 0]
        out[i, top:bottom, left:right] = window >= threshold
    return out


@pytest.mark.benchmark(group="paste_masks-100x28x28-800x1216")
@pytest.mark.parametrize("impl", [
    "pydet", "reference", "grid_sample",
    pytest.param("torchvision", marks=requires_torchvision),
    pytest.param("pydet-cuda", marks=requires_cuda),
])
def test_paste_masks(benchmark, inputs, impl):
    masks, boxes = inputs
    if impl == "pydet":
        benchmark(ops.paste_masks, masks, boxes, IMAGE, THRESHOLD)
    elif impl == "reference":  # seconds per call: a few rounds are enough
        benchmark.pedantic(ref.paste_masks, (masks, boxes, IMAGE, THRESHOLD), rounds=3, iterations=1)
    elif impl == "grid_sample":
        benchmark(grid_sample_paste, masks, boxes, IMAGE, THRESHOLD)
    elif impl == "torchvision":
        from torchvision.models.detection.roi_heads import paste_masks_in_image
        benchmark(lambda: paste_masks_in_image(masks[:, None], boxes, IMAGE) >= THRESHOLD)
    else:
        masks_cuda, boxes_cuda = masks.cuda(), boxes.cuda()
        benchmark(cuda_timer(lambda: ops.paste_masks(masks_cuda, boxes_cuda, IMAGE, THRESHOLD)))
