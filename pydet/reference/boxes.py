"""Reference box IoU and box coder (torchvision ``box_iou`` / ``BoxCoder`` formulas) in float64."""
import math

import torch


def box_iou(boxes1, boxes2):
    b1, b2 = boxes1.double(), boxes2.double()
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def encode_boxes(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    g, p = reference_boxes.double(), proposals.double()
    wx, wy, ww, wh = weights
    ex_w, ex_h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    ex_cx, ex_cy = p[:, 0] + 0.5 * ex_w, p[:, 1] + 0.5 * ex_h
    gt_w, gt_h = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    gt_cx, gt_cy = g[:, 0] + 0.5 * gt_w, g[:, 1] + 0.5 * gt_h
    return torch.stack([wx * (gt_cx - ex_cx) / ex_w, wy * (gt_cy - ex_cy) / ex_h,
                        ww * torch.log(gt_w / ex_w), wh * torch.log(gt_h / ex_h)], dim=1)


def decode_boxes(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=math.log(1000.0 / 16)):
    c, b = rel_codes.double(), boxes.double()
    wx, wy, ww, wh = weights
    widths, heights = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ctr_x, ctr_y = b[:, 0] + 0.5 * widths, b[:, 1] + 0.5 * heights
    dx, dy = c[:, 0::4] / wx, c[:, 1::4] / wy
    dw = torch.clamp(c[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(c[:, 3::4] / wh, max=scale_clamp)
    pcx, pcy = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2).flatten(1)
