"""Reference mask pasting in float64: detectron2's ``_do_paste_mask`` (grid_sample with
``align_corners=False`` and zero padding on the normalised pixel-centre grid) over the whole image.
Boxes that are empty, NaN or infinite paste nothing. :func:`sample_pasted` is the formula;
:func:`paste_masks` applies it to every pixel near each box (all others are exactly 0).
:func:`rle_encode` is COCO's run-length encoding of a binary mask, written out from its definition."""
import math

import torch
import torch.nn.functional as F


def sample_pasted(masks, boxes, ys, xs):
    """Pasted values of mask ``i`` at pixels ``(ys[i, k], xs[i, k])``: ``[N, K]`` in float64.

    Evaluating chosen pixels only lets tests check huge images without a full-size grid.
    """
    m = masks.double()[:, None]
    b = boxes.double()
    valid = torch.isfinite(b).all(dim=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = torch.where(valid[:, None], b, b.new_tensor([0.0, 0.0, 1.0, 1.0]))  # any box; zeroed below
    x0, y0, x1, y1 = (c[:, None] for c in b.unbind(dim=1))
    grid_x = (xs.double() + 0.5 - x0) / (x1 - x0) * 2 - 1
    grid_y = (ys.double() + 0.5 - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)[:, :, None, :]
    values = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0]
    return torch.where(valid[:, None], values, 0.0)


def paste_masks(masks, boxes, image_shape, threshold=0.5):
    if masks.dim() == 4:
        masks = masks[:, 0]
    height, width = image_shape
    out = torch.zeros(masks.shape[0], height, width, dtype=torch.float64)
    for i, (x0, y0, x1, y1) in enumerate(boxes.double().tolist()):
        if not (math.isfinite(x0 + y0 + x1 + y1) and x1 > x0 and y1 > y0):
            continue
        # grid_sample is exactly 0 more than half a mask cell away from the box, so only a window a
        # cell (and a pixel) wider than the box is sampled; this keeps the reference O(box area).
        cell_x, cell_y = (x1 - x0) / masks.shape[2], (y1 - y0) / masks.shape[1]
        left, right = max(0, math.floor(x0 - cell_x) - 1), min(width, math.ceil(x1 + cell_x) + 1)
        top, bottom = max(0, math.floor(y0 - cell_y) - 1), min(height, math.ceil(y1 + cell_y) + 1)
        if left >= right or top >= bottom:
            continue
        ys = torch.arange(top, bottom, dtype=torch.float64).repeat_interleave(right - left)[None]
        xs = torch.arange(left, right, dtype=torch.float64).repeat(bottom - top)[None]
        window = sample_pasted(masks[i:i + 1], boxes[i:i + 1], ys, xs)
        out[i, top:bottom, left:right] = window.reshape(bottom - top, right - left)
    return out if threshold is None else out >= threshold


def rle_counts(mask):
    """COCO run lengths of a binary ``[H, W]`` mask: column-major order, alternating 0s and 1s, the
    first run counting 0s (0 when the mask starts with a 1)."""
    flat = mask.t().reshape(-1).to(torch.int8)
    starts = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    bounds = torch.cat([starts.new_tensor([0]), starts, starts.new_tensor([flat.numel()])])
    counts = bounds.diff().tolist()
    return [0] + counts if flat.numel() > 0 and flat[0] else counts


def rle_string(counts):
    """COCO's compressed ``counts`` string: each count, from the fourth on minus the count two before
    it, as little-endian 5-bit groups of its two's complement (0x20 flags a following group) plus 48."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        while True:
            group, x = x & 0x1F, x >> 5
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(group + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(chars)


def rle_encode(mask):
    """``{"size": [H, W], "counts": str}``: what ``pycocotools.mask.encode`` gives (counts decoded)."""
    return {"size": list(mask.shape), "counts": rle_string(rle_counts(mask))}


def paste_masks_rle(masks, boxes, image_shape, threshold=0.5):
    return [rle_encode(mask) for mask in paste_masks(masks, boxes, image_shape, threshold)]
