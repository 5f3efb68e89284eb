"""Reference RoIAlign (torchvision's per-sample formulas) and multi-level pooling, in float64.

Differentiable with respect to the input through autograd, which gives the reference backward.
"""
import math
import sys

import torch

MAX_SAMPLES_PER_SIDE = 1 << 16  # pydet's cap on adaptive sampling (see csrc/roi_align.h)


def boxes_to_rois(boxes):
    if isinstance(boxes, torch.Tensor):
        return boxes.double()
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]).double()


def _samples(extent, pooled, sampling_ratio):
    if sampling_ratio > 0:
        return sampling_ratio
    n = math.ceil(extent / pooled) if math.isfinite(extent) else 0
    return min(max(n, 0), MAX_SAMPLES_PER_SIDE)


def _axis(start, bin_size, pooled, samples, size):
    """Taps of every sample along one axis: indices [pooled, samples] (low, high), weights, validity."""
    p = torch.arange(pooled, dtype=torch.float64)[:, None]
    i = torch.arange(samples, dtype=torch.float64)[None, :]
    coord = start + p * bin_size + (i + 0.5) * bin_size / samples
    valid = (coord >= -1) & (coord <= size)  # False for NaN too
    coord = torch.where(valid, coord, torch.zeros_like(coord)).clamp(min=0)
    low = coord.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, max(size - 1, 0)), low)
    high = torch.where(at_end, low, low + 1)
    coord = torch.where(at_end, low.double(), coord)
    frac = coord - low
    return low, high, 1 - frac, frac, valid


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    pooled_h, pooled_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    x = input.double()
    rois = boxes_to_rois(boxes).to(x.device)
    _, channels, height, width = x.shape
    out = x.new_zeros(rois.shape[0], channels, pooled_h, pooled_w)
    offset = 0.5 if aligned else 0.0
    for k in range(rois.shape[0]):
        n, x1, y1, x2, y2 = rois[k].tolist()
        start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_x
        roi_h = y2 * spatial_scale - offset - start_y
        if not aligned:
            roi_w = roi_w if math.isnan(roi_w) else max(roi_w, 1.0)
            roi_h = roi_h if math.isnan(roi_h) else max(roi_h, 1.0)
        sy, sx = _samples(roi_h, pooled_h, sampling_ratio), _samples(roi_w, pooled_w, sampling_ratio)
        if sy == 0 or sx == 0 or height == 0 or width == 0:
            continue
        yl, yh, wyl, wyh, vy = _axis(start_y, roi_h / pooled_h, pooled_h, sy, height)  # [ph, sy]
        xl, xh, wxl, wxh, vx = _axis(start_x, roi_w / pooled_w, pooled_w, sx, width)  # [pw, sx]
        plane = x[int(n)].reshape(channels, height * width)

        def tap(rows, cols):  # [C, ph, sy, pw, sx]
            index = rows.reshape(-1, 1) * width + cols.reshape(1, -1)
            return plane.index_select(1, index.reshape(-1)).reshape(channels, pooled_h, sy, pooled_w, sx)

        wy_l, wy_h = wyl[:, :, None, None], wyh[:, :, None, None]
        wx_l, wx_h = wxl[None, None], wxh[None, None]
        value = (wy_l * wx_l * tap(yl, xl) + wy_l * wx_h * tap(yl, xh)
                 + wy_h * wx_l * tap(yh, xl) + wy_h * wx_h * tap(yh, xh))
        valid = vy[:, :, None, None] & vx[None, None]
        value = torch.where(valid, value, torch.zeros_like(value))
        out[k] = value.sum(dim=(2, 4)) / max(sy * sx, 1)
    return out


def multi_scale_roi_align(features, boxes, levels, output_size, spatial_scales, sampling_ratio=-1, aligned=False):
    """Box k pooled from ``features[levels[k]]``; boxes with a level out of range give zeros."""
    rois = boxes_to_rois(boxes)
    pooled_h, pooled_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    out = features[0].double().new_zeros(rois.shape[0], features[0].shape[1], pooled_h, pooled_w)
    for k, level in enumerate(levels.tolist()):
        if 0 <= level < len(features):
            out[k] = roi_align(features[level], rois[k:k + 1], output_size, spatial_scales[level], sampling_ratio,
                               aligned)[0]
    return out


def infer_scale(feature_size, image_size):
    """torchvision's ``_infer_scale``: the power of two nearest to feature height / image height."""
    return 2.0 ** round(math.log2(feature_size[0] / image_size[0]))


def fpn_levels(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    out = []
    for x1, y1, x2, y2 in boxes.double().tolist():
        area = (x2 - x1) * (y2 - y1)
        if not area >= 0:
            out.append(-1)
            continue
        size = math.sqrt(area)
        level = math.floor(canonical_level + math.log2(size / canonical_scale) + eps) if size > 0 else k_min
        out.append(min(max(level, k_min), k_max) - k_min)
    return torch.tensor(out, dtype=torch.int64)


def area_ratio_levels(boxes, image_areas, k_min, k_max):
    out = []
    for (x1, y1, x2, y2), image_area in zip(boxes.double().tolist(), image_areas.double().tolist()):
        area = (x2 - x1) * (y2 - y1)
        if not area >= 0:
            out.append(-1)
            continue
        level = math.ceil(k_max - math.log2(image_area / area + sys.float_info.epsilon)) if area > 0 else k_min
        out.append(min(max(level, k_min), k_max) - k_min)
    return torch.tensor(out, dtype=torch.int64)
