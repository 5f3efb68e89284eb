"""YOLOv7 benchmarks: end-to-end eval latency, and post-processing of a batch of 16 at 640 x 640.

Post-processing starts from each implementation's decoded head output for ``[16, 25200, 85]`` predictions:
pydet's batched path (``YOLOv7.postprocess``: one ``multiclass_nms`` call, no host sync before the end on
CUDA) gets xyxy boxes, objectness and class probabilities as ``YOLOv7.decode`` returns them; the official
per-image Python loop (threshold, ``obj x cls``, xyxy, class-aware NMS on ``torchvision.ops.batched_nms`` or
``pydet.ops.batched_nms``) gets the official ``[16, 25200, 85]`` (xywh, objectness, class probabilities).
"""
import pytest
import torch

from benchmarks.conftest import cuda_timer, requires_cuda, requires_torchvision
from pydet import ops
from pydet.models.yolov7 import EVAL_PRESET, YOLOv7

BATCH, CANDIDATES, CLASSES = 16, 25_200, 80
SETTINGS = {"detect": {"box_score_thresh": 0.25, "box_nms_thresh": 0.45, "multi_label": False},
            "eval": EVAL_PRESET}


def _decoded_predictions(device):
    """Synthetic head output with realistic score statistics: a few hundred boxes per image above 0.25."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(BATCH, CANDIDATES, 2, generator=g) * 640
    wh = torch.rand(BATCH, CANDIDATES, 2, generator=g) ** 2 * 300 + 4
    objectness = torch.sigmoid(torch.randn(BATCH, CANDIDATES, 1, generator=g) * 2.5 - 6)
    classes = torch.softmax(torch.randn(BATCH, CANDIDATES, CLASSES, generator=g) * 3, -1)
    return torch.cat((xy, wh, objectness, classes), -1).to(device)


def _xyxy(xywh):
    return torch.cat((xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2), -1)


def _pydet_postprocess(model, predictions):
    """pydet's post-processing, given what its decode returns (xyxy boxes, objectness, class probabilities)."""
    batch = predictions.shape[0]
    boxes, objectness, class_probs = _xyxy(predictions[..., :4]), predictions[..., 4], predictions[..., 5:]
    sizes, scales, padding = [(640, 640)] * batch, predictions.new_ones(batch), predictions.new_zeros(batch, 2)
    return lambda: model.postprocess(boxes, objectness, class_probs, sizes, scales, padding)


def _official_loop(batched_nms, predictions, conf, iou, multi_label, max_det=300, max_nms=30000):
    out = []
    for x in predictions:
        x = x[x[:, 4] > conf]
        scores = x[:, 5:] * x[:, 4:5]
        boxes = _xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf).nonzero(as_tuple=True)
            boxes, scores, labels = boxes[i], scores[i, j], j
        else:
            scores, labels = scores.max(1)
            keep = scores > conf
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if scores.shape[0] > max_nms:
            top = scores.argsort(descending=True)[:max_nms]
            boxes, scores, labels = boxes[top], scores[top], labels[top]
        keep = batched_nms(boxes, scores, labels, iou)[:max_det]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


IMPLS = ["pydet", "pydet-loop", pytest.param("torchvision-loop", marks=requires_torchvision),
         pytest.param("pydet-cuda", marks=requires_cuda), pytest.param("pydet-loop-cuda", marks=requires_cuda),
         pytest.param("torchvision-loop-cuda", marks=[requires_cuda, requires_torchvision])]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("impl", IMPLS)
def test_postprocess_batch16(benchmark, impl, setting):
    benchmark.group = f"yolov7-postprocess-16x25200x80-{setting}"
    device = "cuda" if impl.endswith("-cuda") else "cpu"
    params = SETTINGS[setting]
    predictions = _decoded_predictions(device)
    model = YOLOv7("yolov7-tiny", **params).eval()
    if impl.startswith("pydet-loop"):
        fn = lambda: _official_loop(ops.batched_nms, predictions, params["box_score_thresh"],  # noqa: E731
                                    params["box_nms_thresh"], params["multi_label"])
    elif impl.startswith("torchvision-loop"):
        import torchvision.ops
        fn = lambda: _official_loop(torchvision.ops.batched_nms, predictions,  # noqa: E731
                                    params["box_score_thresh"], params["box_nms_thresh"], params["multi_label"])
    else:
        fn = _pydet_postprocess(model, predictions)
    # the per-image dicts end in host-visible sizes for every implementation, so no extra sync is needed
    benchmark.pedantic(cuda_timer(fn) if device == "cuda" else fn, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("variant", ["yolov7-tiny", "yolov7"])
@pytest.mark.parametrize("impl", ["pydet", "pydet-fused", pytest.param("pydet-cuda", marks=requires_cuda),
                                  pytest.param("pydet-fused-cuda", marks=requires_cuda)])
def test_eval_latency_640(benchmark, variant, impl):
    benchmark.group = f"{variant}-eval-640x640-batch1"
    device = "cuda" if impl.endswith("-cuda") else "cpu"
    model = YOLOv7(variant).to(device).eval()
    if "fused" in impl:
        model.fuse()
    image = torch.rand(3, 640, 640, generator=torch.Generator().manual_seed(0)).to(device)

    @torch.no_grad()
    def run():
        return model([image])

    benchmark.pedantic(cuda_timer(run) if device == "cuda" else run, rounds=3, iterations=1, warmup_rounds=1)
