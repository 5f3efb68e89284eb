"""Mask pasting: 100 Mask R-CNN masks (28 x 28) into an 800 x 1216 image, thresholded at 0.5.

Baselines: the float64 reference, and ``grid_sample`` — detectron2's CPU method (one mask at a time,
F.grid_sample on a grid over the box's window, written out here) — and torchvision's
``paste_masks_in_image`` where torchvision imports. On CUDA the ``grid_sample`` baseline is detectron2's GPU
method: chunks of masks sampled with one grid over the whole image each.
"""
import numpy as np
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


def grid_sample_paste_whole_image(masks, boxes, image_shape, threshold, chunk=None):
    """detectron2's GPU path: ``chunk`` masks at a time (by default as many as fit in 1 GiB of float grid
    and samples), each sampled on a grid covering the whole image."""
    height, width = image_shape
    out = torch.empty(masks.shape[0], height, width, dtype=torch.bool, device=masks.device)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5
    if chunk is None:
        chunk = max(1, (1 << 30) // (height * width * 4 * 3))  # the (x, y) grid and the sampled values
    for start in range(0, masks.shape[0], chunk):
        x0, y0, x1, y1 = boxes[start:start + chunk, :, None].unbind(1)
        gx = ((xs[None] - x0) / (x1 - x0) * 2 - 1)[:, None, :].expand(-1, height, -1)
        gy = ((ys[None] - y0) / (y1 - y0) * 2 - 1)[:, :, None].expand(-1, -1, width)
        window = F.grid_sample(masks[start:start + chunk, None], torch.stack([gx, gy], dim=3), align_corners=False)
        out[start:start + chunk] = window[:, 0] >= threshold
    return out


@pytest.mark.benchmark(group="paste_masks-100x28x28-800x1216")
@pytest.mark.parametrize("impl", [
    "pydet", "reference", "grid_sample",
    pytest.param("torchvision", marks=requires_torchvision),
    pytest.param("pydet-cuda", marks=requires_cuda),
    pytest.param("grid_sample-cuda", marks=requires_cuda),
    pytest.param("torchvision-cuda", marks=[requires_cuda, requires_torchvision]),
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
    elif impl == "pydet-cuda":
        masks_cuda, boxes_cuda = masks.cuda(), boxes.cuda()
        benchmark(cuda_timer(lambda: ops.paste_masks(masks_cuda, boxes_cuda, IMAGE, THRESHOLD)))
    elif impl == "grid_sample-cuda":
        masks_cuda, boxes_cuda = masks.cuda(), boxes.cuda()
        benchmark(cuda_timer(lambda: grid_sample_paste_whole_image(masks_cuda, boxes_cuda, IMAGE, THRESHOLD)))
    else:
        from torchvision.models.detection.roi_heads import paste_masks_in_image
        masks_cuda, boxes_cuda = masks.cuda()[:, None], boxes.cuda()
        benchmark(cuda_timer(lambda: paste_masks_in_image(masks_cuda, boxes_cuda, IMAGE) >= THRESHOLD))


def test_whole_image_grid_sample_baseline_pastes_the_same_masks(inputs):
    """The CUDA baseline does the same job: it agrees with pydet except on pixels at the threshold's edge."""
    masks, boxes = inputs
    baseline = grid_sample_paste_whole_image(masks[:8], boxes[:8], IMAGE, THRESHOLD, chunk=3)
    expected = ops.paste_masks(masks[:8], boxes[:8], IMAGE, THRESHOLD)
    assert (baseline != expected).float().mean() < 1e-4 and expected.sum() > 0


# paste_masks_rle: 100 masks (28 x 28) straight to COCO RLE on a 1024 x 1024 frame (the video job of
# `pydet detect`), against pasting full-frame bool masks and encoding them with pycocotools (which needs
# a Fortran-ordered H x W x N copy). Boxes as a detector gives them: mostly small and medium objects.
RLE_IMAGE = (1024, 1024)


@pytest.fixture(scope="module")
def rle_inputs():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(N, MASK, MASK, generator=g)
    wh = torch.rand(N, 2, generator=g) ** 2 * 400 + 10
    xy = torch.rand(N, 2, generator=g) * (torch.tensor([RLE_IMAGE[1], RLE_IMAGE[0]]) - wh)
    return masks, torch.cat([xy, xy + wh], dim=1)


def paste_then_encode(masks, boxes, image_shape, threshold):
    from pycocotools import mask as mask_utils

    binary = ops.paste_masks(masks, boxes, image_shape, threshold)
    rles = mask_utils.encode(np.asfortranarray(binary.to(torch.uint8).permute(1, 2, 0).numpy()))
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


@pytest.mark.benchmark(group="paste_masks_rle-100x28x28-1024x1024")
@pytest.mark.parametrize("impl", ["pydet", "paste_masks+pycocotools"])
def test_paste_masks_rle(benchmark, rle_inputs, impl):
    pytest.importorskip("pycocotools")
    masks, boxes = rle_inputs
    if impl == "pydet":
        rles = benchmark(ops.paste_masks_rle, masks, boxes, RLE_IMAGE, THRESHOLD)
    else:
        rles = benchmark(paste_then_encode, masks, boxes, RLE_IMAGE, THRESHOLD)
    assert rles == paste_then_encode(masks, boxes, RLE_IMAGE, THRESHOLD)
