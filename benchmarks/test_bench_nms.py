"""NMS benchmarks: nms on 1k/5k/20k boxes, batched_nms on 20k boxes in 80 classes, and multiclass_nms on
YOLOv7's 640x640 output (B=16 images, N=25,200 boxes, C=80 classes) with realistic scores (sigmoid of
randn - 4: about 0.2% of the pairs pass the 0.25 threshold). Random boxes: 1000x1000 image, sides <= 200.
"""
import functools

import pytest
import torch

from benchmarks.conftest import cuda_timer, requires_cuda, requires_torchvision
from pydet import ops
from pydet.reference import nms as ref
from tests.conftest import random_boxes

IOU = 0.5
IMPL_MARKS = {
    "pydet": [],
    "reference": [],
    "torchvision": [requires_torchvision],
    "pydet-cuda": [requires_cuda],
    "torchvision-cuda": [requires_cuda, requires_torchvision],
}
YOLO = dict(batch=16, boxes=25_200, classes=80, score_threshold=0.25, iou_threshold=0.45, max_per_image=300)


def _cases(sizes, reference_limit):
    """(size, impl) params; the reference is skipped above reference_limit, where it takes over ~2 s."""
    for size in sizes:
        for impl, marks in IMPL_MARKS.items():
            if impl == "reference" and size > reference_limit:
                marks = marks + [pytest.mark.skip(reason="the reference takes over 2 s at this size")]
            yield pytest.param(size, impl, marks=marks, id=f"{size}-{impl}")


@functools.lru_cache(maxsize=None)
def _inputs(n, num_classes, device):
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(n, generator=g), torch.rand(n, generator=g)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def _timed(benchmark, impl, fn, *args):
    benchmark(cuda_timer(functools.partial(fn, *args)) if impl.endswith("cuda") else functools.partial(fn, *args))


def _op(impl, name):
    if impl.startswith("pydet"):
        return getattr(ops, name)
    if impl == "reference":
        return getattr(ref, name)
    import torchvision.ops
    return getattr(torchvision.ops, name)


@pytest.mark.parametrize("size, impl", list(_cases([1000, 5000, 20000], reference_limit=5000)))
def test_nms(benchmark, size, impl):
    benchmark.group = f"nms-{size // 1000}k"
    boxes, scores, _ = _inputs(size, 1, "cuda" if impl.endswith("cuda") else "cpu")
    _timed(benchmark, impl, _op(impl, "nms"), boxes, scores, IOU)


@pytest.mark.parametrize("size, impl", list(_cases([20000], reference_limit=20000)))
def test_batched_nms(benchmark, size, impl):
    benchmark.group = f"batched_nms-{size // 1000}k-80cls"
    boxes, scores, idxs = _inputs(size, 80, "cuda" if impl.endswith("cuda") else "cpu")
    _timed(benchmark, impl, _op(impl, "batched_nms"), boxes, scores, idxs, IOU)


@functools.lru_cache(maxsize=None)
def _yolo_outputs(device):
    g = torch.Generator().manual_seed(0)
    b, n, c = YOLO["batch"], YOLO["boxes"], YOLO["classes"]
    boxes = random_boxes(b * n, image_size=640.0, generator=g).view(b, n, 4)
    scores = torch.sigmoid(torch.randn(b, n, c, generator=g) - 4)
    return boxes.to(device), scores.to(device)


def _torchvision_multiclass_nms(boxes, scores, score_threshold, iou_threshold, max_per_image):
    """The same job with torchvision: a per-image loop around batched_nms (variable-size outputs)."""
    from torchvision.ops import batched_nms
    detections = []
    for image_boxes, image_scores in zip(boxes, scores):
        box_index, labels = torch.where(image_scores > score_threshold)
        candidate_scores = image_scores[box_index, labels]
        keep = batched_nms(image_boxes[box_index], candidate_scores, labels, iou_threshold)[:max_per_image]
        detections.append((image_boxes[box_index[keep]], candidate_scores[keep], labels[keep]))
    return detections


@pytest.mark.parametrize("size, impl", list(_cases([YOLO["boxes"]], reference_limit=0)))
def test_multiclass_nms(benchmark, size, impl):
    benchmark.group = "multiclass_nms-yolov7-640-b16"
    boxes, scores = _yolo_outputs("cuda" if impl.endswith("cuda") else "cpu")
    args = (boxes, scores, YOLO["score_threshold"], YOLO["iou_threshold"], YOLO["max_per_image"])
    fn = ops.multiclass_nms if impl.startswith("pydet") else (
        ref.multiclass_nms if impl == "reference" else _torchvision_multiclass_nms)
    _timed(benchmark, impl, fn, *args)
