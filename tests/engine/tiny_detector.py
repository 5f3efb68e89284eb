"""A test fixture, not shipped: a tiny but real one-stage detector (FCOS-like, one stride-8 level).

It follows the models' calling convention (list of [3, H, W] images in [0, 1]; a dict of losses in
training, per-image boxes/scores/labels(/masks) in eval) so the engine can be tested quickly.
"""
import torch
import torch.nn.functional as F
from torch import nn

from pydet import ops
from pydet.structures import batch_images

STRIDE = 8


class TinyDetector(nn.Module):
    def __init__(self, num_classes: int = 3, with_masks: bool = False, width: int = 24):
        super().__init__()
        self.num_classes, self.with_masks = num_classes, with_masks
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes + 4, 1)
        nn.init.constant_(self.head.bias[:num_classes], -3.0)

    def _predict(self, images):
        batch = batch_images(images, STRIDE)
        out = self.head(self.body(batch.tensors))
        h, w = out.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack(((xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE), -1).reshape(-1, 2).to(out)
        logits = out[:, :self.num_classes].flatten(2).transpose(1, 2)
        ltrb = out[:, self.num_classes:].flatten(2).transpose(1, 2).clamp(max=6).exp() * STRIDE
        return logits, ltrb, centres, batch.image_sizes

    def forward(self, images, targets=None):
        logits, ltrb, centres, sizes = self._predict(images)
        if self.training:
            return self._losses(logits, ltrb, centres, targets)
        results = []
        for lg, reg, (h, w) in zip(logits, ltrb, sizes):
            scores, labels = lg.sigmoid().max(1)
            keep = scores > 0.01
            boxes = torch.cat((centres - reg[:, :2], centres + reg[:, 2:]), 1)[keep]
            boxes = torch.stack((boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)), 1)
            scores, labels = scores[keep], labels[keep]
            kept = _nms(boxes, scores, labels)[:100]
            det = {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}
            if self.with_masks:
                masks = torch.zeros(len(kept), 1, h, w)
                for m, b in zip(masks, det["boxes"].round().int().tolist()):
                    m[:, b[1]:b[3], b[0]:b[2]] = 1.0
                det["masks"] = masks
            results.append(det)
        return results

    def _losses(self, logits, ltrb, centres, targets):
        cls_targets = torch.zeros_like(logits)
        reg_losses = []
        for i, t in enumerate(targets):
            boxes = t["boxes"]
            if len(boxes) == 0:
                continue
            d = torch.cat((centres[:, None] - boxes[None, :, :2], boxes[None, :, 2:] - centres[:, None]), 2)
            inside = d.min(2).values > 0
            area = ((boxes[:, 2:] - boxes[:, :2]).prod(1))[None].expand_as(inside)
            area = torch.where(inside, area, torch.full_like(area, float("inf")))
            best_area, match = area.min(1)
            pos = torch.isfinite(best_area)
            cls_targets[i, pos, t["labels"][match[pos]]] = 1.0
            if pos.any():
                reg_losses.append(F.l1_loss(ltrb[i, pos].log(), d[pos, match[pos]].clamp(min=1).log()))
        num_pos = max(float(cls_targets.sum()), 1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logits, cls_targets, reduction="sum") / num_pos
        loss_box = torch.stack(reg_losses).mean() if reg_losses else ltrb.sum() * 0
        return {"loss_cls": loss_cls, "loss_box": loss_box}


def _nms(boxes, scores, labels, iou_threshold=0.5):
    order = scores.argsort(descending=True)
    iou = ops.box_iou(boxes[order], boxes[order])
    same = labels[order][:, None] == labels[order][None]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for k in range(len(order)):
        if not suppressed[k]:
            suppressed |= (iou[k] > iou_threshold) & same[k] & (torch.arange(len(order)) > k)
    return order[~suppressed]
