"""pydet's ops translated to standard ONNX (NonMaxSuppression, RoiAlign, ...) and run by onnxruntime."""
import importlib.util
import sys

import pytest
import torch
from torch.export import Dim

from pydet import ops
from tests.conftest import random_boxes

requires_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs onnx, onnxruntime and onnxscript (the export extra)")


def _onnx_session(module, example, tmp_path):
    """Export ``module`` with every input's first dimension dynamic; an onnxruntime session of the file."""
    import onnxruntime

    path = tmp_path / "op.onnx"
    dynamic = tuple({0: Dim(f"d{i}")} for i in range(len(example)))
    torch.onnx.export(module, example, str(path), dynamo=True, dynamic_shapes=dynamic, opset_version=18)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, inputs):
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(o) for o in session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})]


class MulticlassNMS(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, boxes, scores):
        return ops.multiclass_nms(boxes, scores, **self.kwargs)


def _nms_inputs(batch, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 60, 4) if per_class else (batch, 60)
    xy = torch.rand(shape + (2,), generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(shape + (2,), generator=g) * 30 + 0.5], -1)
    scores = (torch.rand(batch, 60, 4, generator=g) * 8).round() / 8  # many ties
    scores[0, :3, 0] = float("nan")  # never kept
    return boxes, scores


@requires_onnx
@pytest.mark.parametrize("per_class,kwargs", [
    (False, dict(score_threshold=0.2, iou_threshold=0.5, max_per_image=20)),
    (False, dict(score_threshold=0.1, iou_threshold=0.3, max_per_image=300, pre_nms_topk=40)),
    (True, dict(score_threshold=0.1, iou_threshold=0.3, max_per_image=15)),
    (False, dict(score_threshold=0.1, iou_threshold=0.4, max_per_image=15, class_agnostic=True, pre_nms_topk=17)),
])
def test_multiclass_nms_onnx_is_exact(per_class, kwargs, tmp_path):
    module = MulticlassNMS(**kwargs)
    session = _onnx_session(module, _nms_inputs(2, per_class, 0), tmp_path)
    for batch, seed in ((2, 0), (1, 1), (3, 2)):  # one export, several batch sizes
        boxes, scores = _nms_inputs(batch, per_class, seed)
        expected = ops.multiclass_nms(boxes, scores, **kwargs)
        assert expected[3].sum() > 0
        for e, o in zip(expected, _run(session, (boxes, scores))):
            assert e.shape == o.shape and torch.equal(e, o)


class RoIAlign(torch.nn.Module):
    def __init__(self, aligned, sampling_ratio, multi):
        super().__init__()
        self.aligned, self.sampling_ratio, self.multi = aligned, sampling_ratio, multi

    def forward(self, fine, coarse, rois):
        if self.multi:
            return ops.multi_scale_roi_align([fine, coarse], rois, (7, 5), [0.25, 0.125], self.sampling_ratio,
                                             self.aligned)
        return ops.roi_align(fine, rois, (7, 5), 0.25, self.sampling_ratio, self.aligned)


def _roi_inputs(batch, count, seed):
    g = torch.Generator().manual_seed(seed)
    fine, coarse = torch.randn(batch, 8, 40, 48, generator=g), torch.randn(batch, 8, 20, 24, generator=g)
    boxes = random_boxes(count, image_size=200.0, max_side=120.0, generator=g).float() - 10  # some cross the edge
    boxes[0] = torch.tensor([30.0, 30.0, 30.0, 30.0])  # empty
    index = torch.randint(0, batch, (count, 1), generator=g).float()
    return fine, coarse, torch.cat([index, boxes], 1)


@requires_onnx
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, 0), (True, 0), (True, 2)])
def test_roi_align_onnx_matches(multi, aligned, sampling_ratio, tmp_path):
    module = RoIAlign(aligned, sampling_ratio, multi)
    session = _onnx_session(module, _roi_inputs(2, 30, 0), tmp_path)
    for batch, count, seed in ((1, 5, 1), (3, 50, 2), (2, 1, 3)):  # one box: the coarse level pools none
        inputs = _roi_inputs(batch, count, seed)
        torch.testing.assert_close(_run(session, inputs)[0], module(*inputs), rtol=1e-5, atol=1e-5)


def test_grid_points_translation_matches_the_kernel():
    anchors = sys.modules["pydet.ops.anchors"]
    sizes, strides, offsets = [3, 5, 2, 2, 1, 4], [8, 8, 16, 16, 32, 16], [4.0, 0.0, 0.5]
    expected = torch.ops.pydet.grid_points(sizes, strides, offsets, dtype=torch.float32, device=torch.device("cpu"))
    got = anchors._grid_points_onnx(sizes, strides, offsets, torch.float32, torch.device("cpu"))
    for e, o in zip(expected, got):
        assert torch.equal(e, o)
