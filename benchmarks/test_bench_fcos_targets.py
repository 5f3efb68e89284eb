"""FCOS target assignment: the 22,400 points of an 800 x 1344 image (strides 8..128) against 100 boxes."""
import pytest
import torch

from pydet import ops
from pydet.reference import fcos_targets as ref

from .conftest import cuda_timer, requires_cuda

FEATURE_SIZES = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]
STRIDES = [8, 16, 32, 64, 128]
NUM_GT, NUM_CLASSES, BATCH = 100, 80, 8


def _gt(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(NUM_GT, 2, generator=g) * torch.tensor([1344.0, 800.0])
    wh = torch.rand(NUM_GT, 2, generator=g) ** 2 * 500 + 4
    return torch.cat([xy, xy + wh], dim=1).clamp(max=1344.0), torch.randint(0, NUM_CLASSES, (NUM_GT,), generator=g)


@pytest.fixture(scope="module")
def inputs():
    return ops.fcos_level_inputs(FEATURE_SIZES, STRIDES), _gt(0)


@pytest.mark.benchmark(group="fcos_targets-22k-100gt")
@pytest.mark.parametrize("impl", ["pydet", "reference", pytest.param("pydet-cuda", marks=requires_cuda)])
def test_fcos_targets(benchmark, inputs, impl):
    (points, strides, ranges), (boxes, labels) = inputs
    if impl == "pydet":
        benchmark(ops.fcos_targets, points, strides, ranges, boxes, labels, NUM_CLASSES)
    elif impl == "reference":
        benchmark(ref.fcos_targets, points, strides, ranges, boxes, labels, NUM_CLASSES)
    else:
        args = [t.cuda() for t in (points, strides, ranges, boxes, labels)]
        benchmark(cuda_timer(lambda: ops.fcos_targets(*args, NUM_CLASSES)))


@pytest.mark.benchmark(group="fcos_targets_batched-8x22k-100gt")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("pydet-cuda", marks=requires_cuda)])
def test_fcos_targets_batched(benchmark, inputs, impl):
    (points, strides, ranges), _ = inputs
    per_image = [_gt(seed) for seed in range(BATCH)]
    boxes = torch.stack([b for b, _ in per_image])
    labels = torch.stack([lb for _, lb in per_image])
    num_gt = torch.full((BATCH,), NUM_GT)
    args = [points, strides, ranges, boxes, labels, num_gt]
    if impl == "pydet-cuda":
        args = [t.cuda() for t in args]
    run = lambda: ops.fcos_targets_batched(*args, NUM_CLASSES)  # noqa: E731
    benchmark(cuda_timer(run) if impl == "pydet-cuda" else run)
