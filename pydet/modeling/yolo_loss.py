"""YOLOv7 training losses: ``ComputeLoss`` (YOLOv5 matching) and ``ComputeLossOTA`` (SimOTA re-assignment).

Same arithmetic as the official ``utils/loss.py`` with the official hyper-parameters (hyp.scratch.p5.yaml /
hyp.scratch.tiny.yaml, scaled by the number of levels, classes and the image size as in the official train.py),
but device-agnostic (the official OTA loss hard-codes ``cuda:0``) and without the per-ground-truth Python loop.

Targets are the official ``[T, 6]`` rows ``(image, class, x, y, w, h)`` with the box centre and size
normalised by the padded batch width and height. Both losses return
``{"loss_box", "loss_obj", "loss_cls"}``, each already multiplied by the batch size like the official loss
(whose sum is what the official train.py back-propagates), so the official learning rates apply unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import box_iou
from .yolo import IDetect

# Per-level objectness weights for P3, P4, P5 (official "balance").
LEVEL_BALANCE = (4.0, 1.0, 0.4)
# Cell offsets that also make the two nearest neighbour cells responsible for a target (official g = 0.5).
_NEIGHBOURS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5))


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of matching ``(cx, cy, w, h)`` rows ``[n, 4]`` (the official ``bbox_iou(..., CIoU=True)``)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = ((torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0)
             * (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0))
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclosing_w = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    enclosing_h = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    diagonal2 = enclosing_w ** 2 + enclosing_h ** 2 + eps
    centre_distance2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre_distance2 / diagonal2 + v * alpha)


class ComputeLoss:
    """Targets matched to every anchor whose width and height ratios to the box stay below ``anchor_t``, in
    the box centre's cell and its two nearest neighbours; 1 - CIoU box loss, BCE objectness against the
    detached IoU, BCE classes.

    ``head`` is the model's :class:`~pydet.modeling.yolo.IDetect` (its ``anchors`` buffer is read at every
    call, so loaded or moved weights are used). ``box_gain``, ``obj_gain``, ``cls_gain`` are the
    hyper-parameter file's values; they are scaled here as the official train.py does.
    """

    def __init__(self, head: IDetect, *, img_size: int, box_gain: float, obj_gain: float, cls_gain: float,
                 anchor_t: float = 4.0):
        self.head = head
        self.num_classes = head.nc
        levels = head.nl
        if levels != len(LEVEL_BALANCE):
            raise ValueError(f"the YOLOv7 losses are defined for 3 levels, got {levels}")
        self.box_gain = box_gain * 3 / levels
        self.cls_gain = cls_gain * self.num_classes / 80 * 3 / levels
        self.obj_gain = obj_gain * (img_size / 640) ** 2 * 3 / levels
        self.anchor_t = anchor_t

    def __call__(self, predictions: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        return self.losses(predictions, self._positives(predictions, targets, self.candidates(predictions, targets)))

    def _positives(self, predictions: list[Tensor], targets: Tensor, selected) -> list[tuple[Tensor, ...]]:
        """:meth:`losses` inputs for the ``(image, anchor, grid_y, grid_x, target_index)`` of each level."""
        out = []
        for p, (b, a, gj, gi, t) in zip(predictions, selected):
            box = self._grid_boxes(targets[t], p)
            box[:, :2] -= torch.stack((gi, gj), 1).to(box.dtype)
            out.append((b, a, gj, gi, box, targets[t, 1].long()))
        return out

    @staticmethod
    def _grid_boxes(targets: Tensor, prediction: Tensor) -> Tensor:
        """Normalised ``(x, y, w, h)`` of ``targets`` in grid units of ``prediction``'s level."""
        h, w = prediction.shape[2:4]
        return targets[:, 2:6] * targets.new_tensor([w, h, w, h])

    def candidates(self, predictions: list[Tensor], targets: Tensor) -> list[tuple[Tensor, ...]]:
        """Per level ``(image, anchor, grid_y, grid_x, target_index)`` of every (target, anchor, cell) pair."""
        neighbours = targets.new_tensor(_NEIGHBOURS)
        out = []
        for level, p in enumerate(predictions):
            h, w = p.shape[2:4]
            anchors = self.head.anchors[level].to(targets.dtype)
            xywh = self._grid_boxes(targets, p)
            ratio = xywh[None, :, 2:4] / anchors[:, None]
            fits = torch.max(ratio, 1 / ratio).amax(2) < self.anchor_t  # [anchors, targets]
            anchor_idx, target_idx = fits.nonzero(as_tuple=True)
            gxy = xywh[target_idx, :2]
            gxy_inverse = gxy.new_tensor([w, h]) - gxy
            left, top = ((gxy % 1 < 0.5) & (gxy > 1)).T
            right, bottom = ((gxy_inverse % 1 < 0.5) & (gxy_inverse > 1)).T
            use = torch.stack((torch.ones_like(left), left, top, right, bottom))  # [5, pairs]
            which_offset, pair = use.nonzero(as_tuple=True)
            cell = (gxy[pair] - neighbours[which_offset]).long()
            out.append((targets[target_idx[pair], 0].long(), anchor_idx[pair], cell[:, 1].clamp(0, h - 1),
                        cell[:, 0].clamp(0, w - 1), target_idx[pair]))
        return out

    def losses(self, predictions: list[Tensor], matches) -> dict[str, Tensor]:
        """Losses given per-level ``(image, anchor, grid_y, grid_x, box, class)`` of the positive samples;
        ``box`` is the target's ``(x, y, w, h)`` in grid units relative to the cell corner."""
        ref = predictions[0]
        loss_box, loss_obj, loss_cls = (ref.new_zeros(()) for _ in range(3))
        for level, (p, (b, a, gj, gi, tbox, tcls)) in enumerate(zip(predictions, matches)):
            tobj = torch.zeros_like(p[..., 0])
            n = b.shape[0]
            if n:
                ps = p[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * self.head.anchors[level][a]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox.to(ps.dtype))
                loss_box = loss_box + (1.0 - iou).mean()
                # The official iou ratio gr = 1.0: the objectness target is the (detached) IoU itself.
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.num_classes > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[torch.arange(n, device=t.device), tcls] = 1.0
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(ps[:, 5:], t)
            loss_obj = loss_obj + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * LEVEL_BALANCE[level]
        batch = ref.shape[0]
        return {"loss_box": loss_box * self.box_gain * batch,
                "loss_obj": loss_obj * self.obj_gain * batch,
                "loss_cls": loss_cls * self.cls_gain * batch}


class ComputeLossOTA(ComputeLoss):
    """The official default: :class:`ComputeLoss`'s candidates re-assigned per image by SimOTA.

    Each target keeps the ``k`` candidates of lowest cost ``class BCE + 3 * -log(IoU)`` where ``k`` is the
    (truncated, at least 1) sum of its ten best IoUs; a candidate claimed by several targets goes to the
    target of lowest cost. The class cost scores ``sqrt(sigmoid(class) * sigmoid(objectness))``.
    """

    def __call__(self, predictions: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        candidates = self.candidates(predictions, targets)
        with torch.no_grad():
            assignment = self.assign(predictions, targets, candidates)
        selected = [(b[keep], a[keep], gj[keep], gi[keep], t)
                    for (b, a, gj, gi, _), (keep, t) in zip(candidates, assignment)]
        return self.losses(predictions, self._positives(predictions, targets, selected))

    def assign(self, predictions: list[Tensor], targets: Tensor, candidates) -> list[tuple[Tensor, Tensor]]:
        """Per level ``(candidate_index, target_index)`` of the candidates SimOTA keeps.

        Targets are scaled to pixels by the batch width and height (the official code scales both coordinates
        by the height, which is the same for its square training batches).
        """
        boxes, log_scores, images, levels, positions = [], [], [], [], []
        for level, (p, (b, a, gj, gi, _)) in enumerate(zip(predictions, candidates)):
            stride = self.head.strides[level]
            pred = p[b, a, gj, gi].float()
            xy = (pred[:, :2].sigmoid() * 2 - 0.5 + torch.stack((gi, gj), 1)) * stride
            wh = (pred[:, 2:4].sigmoid() * 2) ** 2 * self.head.anchors[level][a].float() * stride
            boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), 1))
            # log of sqrt(sigmoid(class) * sigmoid(objectness)), the score the class cost is computed on
            log_scores.append(0.5 * (F.logsigmoid(pred[:, 5:]) + F.logsigmoid(pred[:, 4:5])))
            images.append(b)
            levels.append(torch.full_like(b, level))
            positions.append(torch.arange(b.shape[0], device=b.device))
        boxes, log_scores = torch.cat(boxes), torch.cat(log_scores)
        images, levels, positions = torch.cat(images), torch.cat(levels), torch.cat(positions)

        height = predictions[0].shape[2] * self.head.strides[0]
        width = predictions[0].shape[3] * self.head.strides[0]
        xywh = targets[:, 2:6].float() * targets.new_tensor([width, height, width, height], dtype=torch.float32)
        gt_boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        gt_classes = targets[:, 1].long()
        # -log(y) and -log(1 - y), clamped like torch's BCE so saturated scores stay finite
        neg_log_y = (-log_scores).clamp(max=100)
        neg_log_not_y = (-torch.log(-torch.expm1(log_scores))).clamp(max=100)

        kept, kept_targets = [], []
        for image in torch.unique(images).tolist():
            cand = (images == image).nonzero(as_tuple=True)[0]
            gts = (targets[:, 0] == image).nonzero(as_tuple=True)[0]
            iou = box_iou(gt_boxes[gts], boxes[cand])  # [G, P]
            dynamic_k = iou.topk(min(10, cand.shape[0]), dim=1).values.sum(1).int().clamp(min=1)
            cls = gt_classes[gts]
            class_cost = (neg_log_not_y[cand].sum(1)[None, :] - neg_log_not_y[cand][:, cls].T
                          + neg_log_y[cand][:, cls].T)
            cost = class_cost + 3.0 * -torch.log(iou + 1e-8)
            rank = cost.argsort(1).argsort(1)
            match = rank < dynamic_k[:, None]
            contested = match.sum(0) > 1
            lowest = cost.argmin(0)
            rows = torch.arange(gts.shape[0], device=cost.device)[:, None]
            match = torch.where(contested[None], rows == lowest[None], match)
            foreground = match.any(0)
            kept.append(cand[foreground])
            kept_targets.append(gts[match[:, foreground].float().argmax(0)])
        device = targets.device
        kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=device)
        kept_targets = torch.cat(kept_targets) if kept_targets else torch.zeros(0, dtype=torch.long, device=device)
        out = []
        for level in range(len(predictions)):
            at_level = levels[kept] == level
            out.append((positions[kept[at_level]], kept_targets[at_level]))
        return out
