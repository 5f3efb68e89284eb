"""Greedy non-maximum suppression: single-class, class-aware, and batched multi-class with fixed-size output.

Semantics (all three ops, CPU and CUDA alike):

- torchvision's greedy NMS: boxes are visited by decreasing score and a box is suppressed when its IoU
  with an already kept box is ``> iou_threshold`` (strictly; IoU exactly at the threshold is kept). IoU
  is ``inter / (area1 + area2 - inter)`` computed in the boxes' dtype (float32 for half types), and the
  comparison with the threshold is exact.
- Ties in score keep index order (a stable sort), so results are deterministic.
- A NaN score drops its box: it is never kept and never suppresses anything. ``inf`` scores rank first.
- A zero-area box has IoU 0/0 = NaN with an identical box and 0 with others, so it neither suppresses
  nor is suppressed (as in torchvision).

Kernels: csrc/cpu/nms_kernel.cpp, csrc/cuda/nms_kernel.cu. Reference: pydet/reference/nms.py.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_boxes, check_float, check_same_device, check_same_dtype, check_tensor
from ._onnx import onnx_op

INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_scores(boxes: Tensor, scores: Tensor) -> None:
    check_boxes(boxes, "boxes")
    check_tensor(scores, "scores", dims=1)
    check_same_device(("boxes", boxes), ("scores", scores))
    check_same_dtype(("boxes", boxes), ("scores", scores))
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have one entry per box ({boxes.shape[0]}), got {scores.shape[0]}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the boxes kept by greedy NMS, by decreasing score (torchvision ``nms``)."""
    _check_scores(boxes, scores)
    return torch.ops.pydet.nms(boxes, scores, check_float(iou_threshold, "iou_threshold"))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each class of ``idxs`` (boxes of different classes never suppress each other).

    Returns the kept indices (int64) of all classes by decreasing score, as torchvision's
    ``batched_nms``, computed exactly at any coordinate scale (no coordinate-offset trick).
    """
    _check_scores(boxes, scores)
    check_tensor(idxs, "idxs", dims=1, dtypes=INTEGER)
    check_same_device(("boxes", boxes), ("idxs", idxs))
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"idxs must have one entry per box ({boxes.shape[0]}), got {idxs.shape[0]}")
    return torch.ops.pydet.batched_nms(boxes, scores, idxs, check_float(iou_threshold, "iou_threshold"))


def _positive_int(value, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float,
                   max_per_image: int, *, class_agnostic: bool = False,
                   pre_nms_topk: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multi-class NMS for a batch of images, with fixed-size outputs (no host synchronisation on CUDA).

    ``boxes`` is ``[B, N, 4]`` (shared by the classes) or ``[B, N, C, 4]``, ``scores`` is ``[B, N, C]``.
    Per image: the (box, class) pairs with ``score > score_threshold``, the best ``pre_nms_topk`` of them
    (all when None), greedy NMS within each class (across classes when ``class_agnostic``), and the best
    ``max_per_image`` kept pairs by decreasing score (ties: box index, then class). Returns
    ``boxes [B, D, 4]``, ``scores [B, D]``, ``labels`` int64 ``[B, D]`` (class indices) and
    ``num_detections`` int64 ``[B]``, with ``D = max_per_image``; rows past ``num_detections[b]`` hold
    zero boxes, score 0 and label -1.
    """
    check_tensor(scores, "scores", dims=3)
    check_tensor(boxes, "boxes", dims=(3, 4), last=4)
    batch, num_boxes, num_classes = scores.shape
    allowed = [(batch, num_boxes, 4), (batch, num_boxes, num_classes, 4)]
    if tuple(boxes.shape) not in allowed:
        raise ValueError(f"boxes must have shape {list(allowed[0])} or {list(allowed[1])} for scores of shape "
                         f"{list(scores.shape)}, got {list(boxes.shape)}")
    check_same_device(("boxes", boxes), ("scores", scores))
    check_same_dtype(("boxes", boxes), ("scores", scores))
    topk = -1 if pre_nms_topk is None else _positive_int(pre_nms_topk, "pre_nms_topk")
    args = (boxes, scores, check_float(score_threshold, "score_threshold"), check_float(iou_threshold, "iou_threshold"),
            _positive_int(max_per_image, "max_per_image"), bool(class_agnostic), topk)
    if torch.onnx.is_in_onnx_export():
        return _multiclass_nms_onnx(*args)
    return torch.ops.pydet.multiclass_nms(*args)


def _multiclass_nms_onnx(boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float,
                         max_per_image: int, class_agnostic: bool, pre_nms_topk: int):
    """``multiclass_nms`` in standard ONNX operators (TopK, ScatterND, NonMaxSuppression, GatherElements).

    Same semantics: ONNX's NonMaxSuppression keeps ``score > score_threshold`` and suppresses at
    ``IoU > iou_threshold``, and TopK breaks ties by the lower index, which over the ``[B, N * C]`` pairs
    (box-major) is pydet's order of box index, then class. The kept pairs are written into a dense
    ``-inf``-filled score table, so the final best ``max_per_image`` is one TopK and every output has a
    fixed size. (ONNX normalises inverted boxes, whose area pydet takes as negative: such boxes may differ.)
    """
    batch, num_boxes, num_classes = scores.shape
    num_pairs = num_boxes * num_classes
    pairs = scores.reshape(batch, num_pairs)
    if 0 < pre_nms_topk < num_pairs:
        # Only the best pre_nms_topk pairs above the threshold take part; the others drop to -inf.
        candidates = torch.where(pairs > score_threshold, pairs, float("-inf"))
        top_scores, top_index = candidates.topk(pre_nms_topk, dim=1)
        pairs = torch.full_like(pairs, float("-inf")).scatter(1, top_index, top_scores)
    image, pair = _onnx_nms_selection(boxes, pairs, batch, num_boxes, num_classes, score_threshold, iou_threshold,
                                      class_agnostic)
    kept = torch.full_like(pairs, float("-inf")).index_put((image, pair), pairs[image, pair])
    count = min(max_per_image, num_pairs)
    top_scores, top_pair = kept.topk(count, dim=1)
    valid = top_scores > float("-inf")
    box_index = torch.div(top_pair, num_classes, rounding_mode="floor")
    if boxes.dim() == 4:
        box_index = top_pair
        boxes = boxes.reshape(batch, num_pairs, 4)
    det_boxes = boxes.gather(1, box_index[..., None].expand(batch, count, 4))
    det_boxes = torch.where(valid[..., None], det_boxes, 0.0)
    det_scores = torch.where(valid, top_scores, 0.0)
    det_labels = torch.where(valid, top_pair % num_classes, -1)
    padding = max_per_image - count  # fewer pairs than rows: the rest is padding
    if padding:
        det_boxes, det_scores = F.pad(det_boxes, (0, 0, 0, padding)), F.pad(det_scores, (0, padding))
        det_labels = F.pad(det_labels, (0, padding), value=-1)
    return det_boxes, det_scores, det_labels, valid.sum(1)


def _onnx_nms_selection(boxes: Tensor, pairs: Tensor, batch: int, num_boxes: int, num_classes: int,
                        score_threshold: float, iou_threshold: float, class_agnostic: bool) -> tuple[Tensor, Tensor]:
    """ONNX NonMaxSuppression over the ``[B, N * C]`` pair scores: ``(image, pair index)`` of each kept pair.

    Classes are laid out so that one NonMaxSuppression call does the work: shared boxes as ONNX's classes,
    per-class boxes as separate batch entries, and class-agnostic NMS as one class over all pairs.
    """
    if class_agnostic:
        pair_boxes = boxes if boxes.dim() == 4 else boxes[:, :, None].expand(batch, num_boxes, num_classes, 4)
        nms_boxes, nms_scores = pair_boxes.reshape(batch, num_boxes * num_classes, 4), pairs[:, None]
    elif boxes.dim() == 4:
        nms_boxes = boxes.transpose(1, 2).reshape(batch * num_classes, num_boxes, 4)
        nms_scores = pairs.view(batch, num_boxes, num_classes).transpose(1, 2).reshape(batch * num_classes, 1, -1)
    else:
        nms_boxes, nms_scores = boxes, pairs.view(batch, num_boxes, num_classes).transpose(1, 2)
    limit = torch.tensor([num_boxes * num_classes], dtype=torch.int64)
    # The count of kept pairs is data-dependent; the declared bound (every pair) only annotates the graph.
    selected = onnx_op("NonMaxSuppression",
                       (nms_boxes, nms_scores.contiguous(), limit, torch.tensor([iou_threshold], dtype=torch.float32),
                        torch.tensor([score_threshold], dtype=torch.float32)),
                       {"center_point_box": 0}, dtype=torch.int64, shape=(nms_scores.numel(), 3))
    entry, klass, index = selected.unbind(1)
    if class_agnostic:
        return entry, index
    if boxes.dim() == 4:
        return torch.div(entry, num_classes, rounding_mode="floor"), index * num_classes + entry % num_classes
    return entry, index * num_classes + klass


@torch.library.register_fake("pydet::nms")
def _(boxes, scores, iou_threshold):
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)


@torch.library.register_fake("pydet::batched_nms")
def _(boxes, scores, idxs, iou_threshold):
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)


@torch.library.register_fake("pydet::multiclass_nms")
def _(boxes, scores, score_threshold, iou_threshold, max_per_image, class_agnostic, pre_nms_topk):
    batch = scores.shape[0]
    return (boxes.new_empty(batch, max_per_image, 4), scores.new_empty(batch, max_per_image),
            scores.new_empty(batch, max_per_image, dtype=torch.int64), scores.new_empty(batch, dtype=torch.int64))
