"""Box coder and anchor benchmarks (the shapes of an 800x1216 Faster R-CNN input).

torchvision rows, where it imports: ``torchvision.ops.box_iou``, ``BoxCoder.encode_single`` /
``decode_single`` (what its R-CNN heads call) and ``AnchorGenerator.grid_anchors`` on the same cell anchors.
"""
import pytest
import torch

from pydet import ops
from pydet.reference import anchors as ref_anchors
from pydet.reference import boxes as ref_boxes
from tests.conftest import random_boxes

from benchmarks.conftest import requires_torchvision

N = 200_000  # ~ all anchors of an 800x1216 image across FPN levels
IMPLS = ["pydet", "reference", pytest.param("torchvision", marks=requires_torchvision)]
FPN_SIZES = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
FPN_STRIDES = [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64)]
ANCHOR_SIZES = (32, 64, 128, 256, 512)


@pytest.fixture(scope="module")
def boxes():
    g = torch.Generator().manual_seed(0)
    return random_boxes(N, generator=g), torch.randn(N, 4, generator=g)


def _box_coder():
    from torchvision.models.detection._utils import BoxCoder
    return BoxCoder((1.0, 1.0, 1.0, 1.0))


@pytest.mark.benchmark(group="decode_boxes-200k")
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_boxes(benchmark, boxes, impl):
    anchors, codes = boxes
    if impl == "torchvision":
        benchmark(_box_coder().decode_single, codes, anchors)
        return
    fn = ops.decode_boxes if impl == "pydet" else ref_boxes.decode_boxes
    benchmark(fn, codes, anchors)


@pytest.mark.benchmark(group="encode_boxes-200k")
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_boxes(benchmark, boxes, impl):
    anchors, _ = boxes
    if impl == "torchvision":
        benchmark(_box_coder().encode_single, anchors.flip(0).contiguous(), anchors)
        return
    fn = ops.encode_boxes if impl == "pydet" else ref_boxes.encode_boxes
    benchmark(fn, anchors.flip(0).contiguous(), anchors)


@pytest.mark.benchmark(group="box_iou-2000x500")
@pytest.mark.parametrize("impl", IMPLS)
def test_box_iou(benchmark, boxes, impl):
    anchors, _ = boxes
    if impl == "torchvision":
        import torchvision.ops
        fn = torchvision.ops.box_iou
    else:
        fn = ops.box_iou if impl == "pydet" else ref_boxes.box_iou
    benchmark(fn, anchors[:2000], anchors[2000:2500])


@pytest.mark.benchmark(group="grid_anchors-fpn-800x1216")
@pytest.mark.parametrize("impl", IMPLS)
def test_grid_anchors(benchmark, impl):
    cells = [ops.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in ANCHOR_SIZES]
    if impl == "pydet":
        benchmark(ops.grid_anchors, FPN_SIZES, FPN_STRIDES, cells)
    elif impl == "reference":
        benchmark(ref_anchors.grid_anchors, FPN_SIZES, FPN_STRIDES, cells)
    else:
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        generator = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES))
        generator.cell_anchors = cells  # the same cell anchors (torchvision's rounding, as pydet's)
        # torchvision's forward passes strides as int64 tensors
        strides = [[torch.tensor(h, dtype=torch.int64), torch.tensor(w, dtype=torch.int64)] for h, w in FPN_STRIDES]
        sizes = [list(s) for s in FPN_SIZES]
        benchmark(generator.grid_anchors, sizes, strides)
