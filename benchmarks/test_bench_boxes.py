"""Box coder and anchor benchmarks (the shapes of an 800x1216 Faster R-CNN input)."""
import pytest
import torch

from pydet import ops
from pydet.reference import anchors as ref_anchors
from pydet.reference import boxes as ref_boxes
from tests.conftest import random_boxes

N = 200_000  # ~ all anchors of an 800x1216 image across FPN levels


@pytest.fixture(scope="module")
def boxes():
    g = torch.Generator().manual_seed(0)
    return random_boxes(N, generator=g), torch.randn(N, 4, generator=g)


@pytest.mark.benchmark(group="decode_boxes-200k")
@pytest.mark.parametrize("impl", ["pydet", "reference"])
def test_decode_boxes(benchmark, boxes, impl):
    anchors, codes = boxes
    fn = ops.decode_boxes if impl == "pydet" else ref_boxes.decode_boxes
    benchmark(fn, codes, anchors)


@pytest.mark.benchmark(group="encode_boxes-200k")
@pytest.mark.parametrize("impl", ["pydet", "reference"])
def test_encode_boxes(benchmark, boxes, impl):
    anchors, _ = boxes
    fn = ops.encode_boxes if impl == "pydet" else ref_boxes.encode_boxes
    benchmark(fn, anchors.flip(0).contiguous(), anchors)


@pytest.mark.benchmark(group="box_iou-2000x500")
@pytest.mark.parametrize("impl", ["pydet", "reference"])
def test_box_iou(benchmark, boxes, impl):
    anchors, _ = boxes
    fn = ops.box_iou if impl == "pydet" else ref_boxes.box_iou
    benchmark(fn, anchors[:2000], anchors[2000:2500])


@pytest.mark.benchmark(group="grid_anchors-fpn-800x1216")
@pytest.mark.parametrize("impl", ["pydet", "reference"])
def test_grid_anchors(benchmark, impl):
    sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    strides = [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64)]
    cells = [ops.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in (32, 64, 128, 256, 512)]
    if impl == "pydet":
        benchmark(ops.grid_anchors, sizes, strides, cells)
    else:
        benchmark(ref_anchors.grid_anchors, sizes, strides, cells)
