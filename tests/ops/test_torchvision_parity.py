"""pydet.ops against torchvision.ops itself, where torchvision imports (skipped otherwise).

The other op tests compare with pydet.reference (the float64 formulas); these check the "torchvision
semantics" rows of API.md directly: same inputs, same outputs. The only allowed difference is the order
of boxes with exactly tied scores in torchvision's per-class ``batched_nms`` path (above 1000 boxes on
CPU), which sorts with an unstable sort; pydet keeps ties in index order (pydet.ops.nms).
"""
import pytest
import torch

from pydet import ops
from pydet.modeling import AnchorGenerator, MultiScaleRoIAlign
from pydet.structures import ImageList
from tests.conftest import SEEDS, random_boxes

try:
    import torchvision.ops as tv_ops
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList as TVImageList
    from torchvision.models.detection.roi_heads import paste_masks_in_image
except Exception as exc:  # ImportError, or a torchvision built for another torch
    pytest.skip(f"torchvision does not import here: {exc}", allow_module_level=True)

DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou(dtype, device):
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(300, generator=g, dtype=dtype), random_boxes(200, generator=g, dtype=dtype)
    degenerate = torch.tensor([[0, 0, 0, 0], [1, 1, 3, 3], [5, 5, 2, 2], [1, 1, 3, 3]], dtype=dtype)
    a, b = torch.cat([a, degenerate]), torch.cat([b, degenerate])
    torch.testing.assert_close(ops.box_iou(a.to(device), b.to(device)).cpu(), tv_ops.box_iou(a, b),
                               equal_nan=True, **_tol(dtype))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_box_coder(weights, dtype, device):
    g = torch.Generator().manual_seed(1)
    reference, proposals = random_boxes(500, generator=g, dtype=dtype), random_boxes(500, generator=g, dtype=dtype)
    codes = torch.randn(500, 8, generator=g, dtype=dtype) * 2  # some past the scale clamp
    coder = BoxCoder(weights)
    encoded = ops.encode_boxes(reference.to(device), proposals.to(device), weights).cpu()
    torch.testing.assert_close(encoded, coder.encode_single(reference, proposals), **_tol(dtype))
    decoded = ops.decode_boxes(codes.to(device), proposals.to(device), weights).cpu()
    torch.testing.assert_close(decoded, coder.decode_single(codes, proposals), **_tol(dtype))


def test_anchor_generator(device):
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    images = torch.zeros(2, 3, 800, 1088, device=device)
    maps = [torch.zeros(2, 1, 800 // s, 1088 // s, device=device) for s in (4, 8, 16, 32, 64)]
    ours = AnchorGenerator(sizes, ratios)(ImageList(images, [(800, 1067), (750, 1088)]), maps)
    theirs = TVAnchorGenerator(sizes, ratios)(TVImageList(images, [(800, 1067), (750, 1088)]), maps)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_and_batched_nms(seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    for n, ties in [(500, False), (500, True), (2000, False), (2000, True)]:
        boxes = random_boxes(n, max_side=300.0, generator=g, dtype=dtype)
        scores = torch.rand(n, generator=g, dtype=dtype)
        if ties:
            scores = (scores * 10).round() / 10
        idxs = torch.randint(0, 5, (n,), generator=g)
        b, s, i = boxes.to(device), scores.to(device), idxs.to(device)
        for threshold in (0.3, 0.5, 0.7):
            assert torch.equal(ops.nms(b, s, threshold).cpu(), tv_ops.nms(boxes, scores, threshold))
            ours = ops.batched_nms(b, s, i, threshold).cpu()
            theirs = tv_ops.batched_nms(boxes, scores, idxs, threshold)
            if ties and n > 1000:  # torchvision's per-class path: tie order left to an unstable sort
                assert torch.equal(ours.sort().values, theirs.sort().values)
                assert torch.equal(scores[ours], scores[theirs])
            else:
                assert torch.equal(ours, theirs)


def _rois(g, dtype):
    boxes = random_boxes(40, image_size=100.0, max_side=60.0, generator=g, dtype=torch.float64)
    boxes[:5] -= 20  # partly outside the map
    boxes[5:8, 2:] = boxes[5:8, :2]  # empty
    boxes[8:10] = boxes[8:10][:, [2, 3, 0, 1]]  # inverted
    return torch.cat([torch.randint(0, 2, (40, 1), generator=g).double(), boxes], dim=1).to(dtype)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_forward_and_backward(aligned, sampling_ratio, dtype, device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 25, 30, generator=g, dtype=dtype)
    for scale in (1.0, 0.5, 0.25):
        rois = _rois(g, dtype)
        for output_size in ((7, 7), (5, 3)):
            ours_x, theirs_x = x.to(device, copy=True).requires_grad_(), x.clone().requires_grad_()
            ours = ops.roi_align(ours_x, rois.to(device), output_size, scale, sampling_ratio, aligned)
            theirs = tv_ops.roi_align(theirs_x, rois, output_size, scale, sampling_ratio, aligned)
            torch.testing.assert_close(ours.detach().cpu(), theirs.detach(), **_tol(dtype))
            grad = torch.randn(theirs.shape, generator=g, dtype=dtype)
            ours.backward(grad.to(device))
            theirs.backward(grad)
            torch.testing.assert_close(ours_x.grad.cpu(), theirs_x.grad, **_tol(dtype))


def test_roi_align_box_list(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 25, 30, generator=g)
    boxes = [random_boxes(5, image_size=100.0, max_side=60.0, generator=g), torch.zeros(0, 4),
             random_boxes(3, image_size=100.0, max_side=60.0, generator=g)]
    ours = ops.roi_align(x.to(device), [b.to(device) for b in boxes], 7, 0.25, 2)
    torch.testing.assert_close(ours.cpu(), tv_ops.roi_align(x, boxes, 7, 0.25, 2), **_tol(torch.float32))


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multi_scale_roi_align(sampling_ratio, device):
    g = torch.Generator().manual_seed(4)
    shapes = {"0": (64, 80), "1": (32, 40), "2": (16, 20), "3": (8, 10), "pool": (4, 5)}
    features = {k: torch.randn(2, 4, h, w, generator=g) for k, (h, w) in shapes.items()}
    boxes = [random_boxes(100, image_size=250.0, max_side=240.0, generator=g),
             random_boxes(80, image_size=250.0, max_side=240.0, generator=g)]
    boxes[0][:3] = torch.tensor([10.0, 10.0, 10.5, 10.5])  # tiny: clamped to the finest level
    boxes[1][:2] = torch.tensor([0.0, 0.0, 250.0, 250.0])
    image_sizes = [(256, 320), (250, 300)]
    names = ["0", "1", "2", "3"]  # "pool" is not pooled from, as in torchvision
    ours = MultiScaleRoIAlign(names, 7, sampling_ratio)(
        {k: v.to(device) for k, v in features.items()}, [b.to(device) for b in boxes], image_sizes)
    theirs = tv_ops.MultiScaleRoIAlign(names, 7, sampling_ratio)(features, boxes, image_sizes)
    torch.testing.assert_close(ours.cpu(), theirs, **_tol(torch.float32))


def test_paste_masks_reproduces_torchvision_paste_in_its_box(device):
    """API.md's paste (pixel centres, exact box) differs from torchvision's ``paste_masks_in_image``
    only in the box: torchvision pads the mask by a zero cell, enlarges the box by (M + 2) / M,
    truncates it to integers b and resizes onto b[2] - b[0] + 1 pixels. Pasting into the box that
    this amounts to gives torchvision's result."""
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(30, 28, 28, generator=g)
    boxes = random_boxes(30, image_size=300.0, max_side=120.0, generator=g) - 10  # some past the border
    theirs = paste_masks_in_image(masks[:, None], boxes, (290, 310))[:, 0]
    from torchvision.models.detection.roi_heads import expand_boxes
    b = expand_boxes(boxes, 30 / 28).to(torch.int64).float()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    box = torch.stack([b[:, 0] + w / 30, b[:, 1] + h / 30, b[:, 0] + w * 29 / 30, b[:, 1] + h * 29 / 30], dim=1)
    ours = ops.paste_masks(masks.to(device), box.to(device), (290, 310), threshold=None).cpu()
    # float32 rounding of the box (coordinates near 300: 3e-5 apart) and of torchvision's resize
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
