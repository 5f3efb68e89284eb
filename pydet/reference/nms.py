"""Reference greedy NMS in float64, written for clarity (torchvision semantics, pydet's NaN rule).

Boxes are ranked by decreasing score (a stable sort: ties keep index order), boxes with a NaN score are
dropped, and each kept box suppresses the later boxes whose IoU with it is > iou_threshold.
"""
import torch

from .boxes import box_iou


def nms(boxes, scores, iou_threshold):
    boxes, scores = boxes.double(), scores.double()
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[~torch.isnan(scores[order])]
    ranked = boxes[order]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1:] |= box_iou(ranked[i:i + 1], ranked[i + 1:])[0] > iou_threshold
    return order[keep]


def batched_nms(boxes, scores, idxs, iou_threshold):
    """Greedy NMS per class of ``idxs``; the kept indices of all classes, by decreasing score."""
    keep = [torch.where(idxs == c)[0][nms(boxes[idxs == c], scores[idxs == c], iou_threshold)]
            for c in torch.unique(idxs)]
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    # decreasing score, ties by index
    keep = keep.sort().values
    return keep[torch.sort(scores.double()[keep], descending=True, stable=True).indices]


def multiclass_nms(boxes, scores, score_threshold, iou_threshold, max_per_image, *, class_agnostic=False,
                   pre_nms_topk=None):
    """Per image: (box, class) pairs with score > score_threshold, the best pre_nms_topk of them, greedy
    NMS per class (or over all classes), the best max_per_image kept, padded with zero boxes, score 0
    and label -1. Pairs are ranked by score, ties by box index then class (the flattened [N, C] index)."""
    batch, num_boxes, num_classes = scores.shape
    out_boxes = torch.zeros(batch, max_per_image, 4, dtype=boxes.dtype)
    out_scores = torch.zeros(batch, max_per_image, dtype=scores.dtype)
    out_labels = torch.full((batch, max_per_image), -1, dtype=torch.int64)
    num_detections = torch.zeros(batch, dtype=torch.int64)
    for b in range(batch):
        flat_scores = scores[b].double().flatten()  # index n * C + c
        candidates = torch.where(flat_scores > score_threshold)[0]
        candidates = candidates[torch.sort(flat_scores[candidates], descending=True, stable=True).indices]
        if pre_nms_topk is not None:
            candidates = candidates[:pre_nms_topk]
        box_index, labels = candidates // num_classes, candidates % num_classes
        cand_boxes = boxes[b][box_index] if boxes.dim() == 3 else boxes[b][box_index, labels]
        groups = torch.zeros_like(labels) if class_agnostic else labels
        keep = batched_nms(cand_boxes, flat_scores[candidates], groups, iou_threshold)[:max_per_image]
        count = len(keep)
        out_boxes[b, :count] = cand_boxes[keep]
        out_scores[b, :count] = scores[b].flatten()[candidates[keep]]
        out_labels[b, :count] = labels[keep]
        num_detections[b] = count
    return out_boxes, out_scores, out_labels, num_detections
