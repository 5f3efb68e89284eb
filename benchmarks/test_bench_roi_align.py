"""RoIAlign benchmarks at Faster R-CNN sizes: 1000 RoIs on a 2 x 256 x 200 x 304 map (stride 4 of an
800 x 1216 batch), 7 x 7 output, sampling_ratio 2; and 1000 boxes on the 4-level FPN of one 800 x 1216 image.

The float64 reference needs tens of seconds at these sizes, so it is not timed here (the tests compare with
it); "per-level" is torchvision's multi-scale algorithm (one roi_align per level, then scatter) on pydet's
single-level kernel, which shows what the fused multi-level kernel saves.
"""
import pytest
import torch

from pydet import ops
from pydet.modeling import MultiScaleRoIAlign
from pydet.ops.roi_align import convert_boxes_to_rois, fpn_levels
from tests.conftest import random_boxes

from benchmarks.conftest import cuda_timer, requires_cuda, requires_torchvision

NUM_ROIS = 1000
OUTPUT = 7
SCALE = 0.25
SAMPLING = 2
FPN_SIZES = [(200, 304), (100, 152), (50, 76), (25, 38)]


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 200, 304, generator=g)
    boxes = random_boxes(NUM_ROIS, image_size=800.0, max_side=256.0, generator=g)
    rois = torch.cat([torch.randint(0, 2, (NUM_ROIS, 1), generator=g).float(), boxes], dim=1)
    grad = torch.randn(NUM_ROIS, 256, OUTPUT, OUTPUT, generator=g)
    return x, rois, grad


@pytest.fixture(scope="module")
def fpn():
    g = torch.Generator().manual_seed(1)
    features = {str(i): torch.randn(1, 256, h, w, generator=g) for i, (h, w) in enumerate(FPN_SIZES)}
    boxes = [random_boxes(NUM_ROIS, image_size=800.0, max_side=600.0, generator=g)]
    return features, boxes


def _backward_args(x, rois):
    n, c, h, w = x.shape
    return rois, SCALE, OUTPUT, OUTPUT, n, c, h, w, SAMPLING, False


def _bench_forward(benchmark, impl, x, rois):
    if impl == "pydet":
        roi_align = ops.roi_align
    else:
        import torchvision
        roi_align = torchvision.ops.roi_align
    benchmark(roi_align, x, rois, OUTPUT, SCALE, SAMPLING)


@pytest.mark.benchmark(group="roi_align-forward-1000x2x256x200x304")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("torchvision", marks=requires_torchvision)])
def test_roi_align_forward(benchmark, problem, impl):
    x, rois, _ = problem
    _bench_forward(benchmark, impl, x, rois)


@pytest.mark.benchmark(group="roi_align-forward-1000x2x256x200x304-channels-last")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("torchvision", marks=requires_torchvision)])
def test_roi_align_forward_channels_last(benchmark, problem, impl):
    x, rois, _ = problem
    _bench_forward(benchmark, impl, x.contiguous(memory_format=torch.channels_last), rois)


@pytest.mark.benchmark(group="roi_align-backward-1000x2x256x200x304")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("torchvision", marks=requires_torchvision)])
def test_roi_align_backward(benchmark, problem, impl):
    x, rois, grad = problem
    if impl == "pydet":
        benchmark(torch.ops.pydet.roi_align_backward, grad, *_backward_args(x, rois))
    else:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
        benchmark(torch.ops.torchvision._roi_align_backward, grad, *_backward_args(x, rois))


def _per_level(features, boxes, scales):
    rois = convert_boxes_to_rois(boxes)
    levels = fpn_levels(torch.cat(boxes), 2, 5)
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], OUTPUT, OUTPUT)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = torch.where(levels == level)[0]
        out[index] = ops.roi_align(feature, rois[index], OUTPUT, scale, SAMPLING)
    return out


@pytest.mark.benchmark(group="multi_scale_roi_align-1000-fpn-800x1216")
@pytest.mark.parametrize("impl", ["pydet", "per-level", pytest.param("torchvision", marks=requires_torchvision)])
def test_multi_scale_roi_align(benchmark, fpn, impl):
    features, boxes = fpn
    names = list(features)
    shapes = [(800, 1216)]
    if impl == "pydet":
        benchmark(MultiScaleRoIAlign(names, OUTPUT, SAMPLING), features, boxes, shapes)
    elif impl == "per-level":
        benchmark(_per_level, list(features.values()), boxes, [0.25, 0.125, 0.0625, 0.03125])
    else:
        import torchvision
        benchmark(torchvision.ops.MultiScaleRoIAlign(names, OUTPUT, SAMPLING), features, boxes, shapes)


# ---- CUDA ----

@requires_cuda
@pytest.mark.benchmark(group="roi_align-forward-1000x2x256x200x304-cuda")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("torchvision", marks=requires_torchvision)])
def test_roi_align_forward_cuda(benchmark, problem, impl):
    x, rois, _ = (t.cuda() for t in problem)
    if impl == "pydet":
        benchmark(cuda_timer(lambda: ops.roi_align(x, rois, OUTPUT, SCALE, SAMPLING)))
    else:
        import torchvision
        benchmark(cuda_timer(lambda: torchvision.ops.roi_align(x, rois, OUTPUT, SCALE, SAMPLING)))


@requires_cuda
@pytest.mark.benchmark(group="roi_align-backward-1000x2x256x200x304-cuda")
@pytest.mark.parametrize("impl", ["pydet", "pydet-deterministic",
                                  pytest.param("torchvision", marks=requires_torchvision)])
def test_roi_align_backward_cuda(benchmark, problem, impl):
    x, rois, grad = (t.cuda() for t in problem)
    args = _backward_args(x, rois)
    if impl == "torchvision":
        import torchvision  # noqa: F401
        benchmark(cuda_timer(lambda: torch.ops.torchvision._roi_align_backward(grad, *args)))
        return
    torch.use_deterministic_algorithms(impl == "pydet-deterministic")
    try:
        benchmark(cuda_timer(lambda: torch.ops.pydet.roi_align_backward(grad, *args)))
    finally:
        torch.use_deterministic_algorithms(False)


@requires_cuda
@pytest.mark.benchmark(group="multi_scale_roi_align-1000-fpn-800x1216-cuda")
@pytest.mark.parametrize("impl", ["pydet", "per-level", pytest.param("torchvision", marks=requires_torchvision)])
def test_multi_scale_roi_align_cuda(benchmark, fpn, impl):
    features, boxes = fpn
    features = {k: v.cuda() for k, v in features.items()}
    boxes = [b.cuda() for b in boxes]
    names, shapes = list(features), [(800, 1216)]
    if impl == "pydet":
        pooler = MultiScaleRoIAlign(names, OUTPUT, SAMPLING)
        benchmark(cuda_timer(lambda: pooler(features, boxes, shapes)))
    elif impl == "per-level":
        scales = [0.25, 0.125, 0.0625, 0.03125]
        benchmark(cuda_timer(lambda: _per_level(list(features.values()), boxes, scales)))
    else:
        import torchvision
        pooler = torchvision.ops.MultiScaleRoIAlign(names, OUTPUT, SAMPLING)
        benchmark(cuda_timer(lambda: pooler(features, boxes, shapes)))
