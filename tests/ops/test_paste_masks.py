import math

import pytest
import torch

from pydet import ops
from pydet.reference import paste_masks as ref
from tests.conftest import CUDA, SEEDS

DTYPES = [torch.float32, torch.float64]
THRESHOLD = 0.5


def _tol(dtype):
    return dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=1e-10)


def _random_case(seed, n=12, image=(90, 110), dtype=torch.float32):
    """Masks of an odd size and boxes of every kind: inside, partly and wholly outside, sub-pixel, huge."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 13, 17, generator=g, dtype=torch.float64)
    height, width = image
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([width + 40.0, height + 40.0]) - 20
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) ** 2 * torch.tensor([width, height]) + 0.3
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([-30.0, -50.0, width + 70.0, height + 20.0])  # covers the whole image
    boxes[1] = torch.tensor([width + 5.0, 10.0, width + 60.0, 40.0])  # wholly outside
    boxes[2] = torch.tensor([20.2, 30.7, 20.6, 31.1])  # smaller than a pixel
    return masks.to(dtype), boxes.to(dtype)


def _assert_bool_matches(out, expected_probs, threshold=THRESHOLD):
    """Equal to the reference's decision except where the reference is within 1e-5 of the threshold."""
    expected = expected_probs >= threshold
    differ = out.cpu() != expected
    assert not (differ & ((expected_probs - threshold).abs() > 1e-5)).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(seed, dtype, device):
    masks, boxes = _random_case(seed, dtype=dtype)
    expected = ref.paste_masks(masks, boxes, (90, 110), threshold=None)
    probs = ops.paste_masks(masks.to(device), boxes.to(device), (90, 110), threshold=None)
    assert probs.dtype == dtype and probs.shape == (12, 90, 110)
    torch.testing.assert_close(probs.cpu().double(), expected, **_tol(dtype))
    assert expected[0].gt(0).all() and not expected[1].any()  # the case covers what it claims
    kept = ops.paste_masks(masks.to(device), boxes.to(device), (90, 110))
    assert kept.dtype == torch.bool and kept.shape == (12, 90, 110)
    _assert_bool_matches(kept, expected)


def test_reference_window_is_the_whole_image_formula():
    # The reference samples only near each box; the grid_sample formula over every pixel agrees.
    masks, boxes = _random_case(0)
    ys = torch.arange(90).repeat_interleave(110).expand(12, -1)
    xs = torch.arange(110).repeat(90).expand(12, -1)
    full = ref.sample_pasted(masks, boxes, ys, xs).reshape(12, 90, 110)
    torch.testing.assert_close(ref.paste_masks(masks, boxes, (90, 110), None), full, rtol=0, atol=0)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.9, 1.0])
def test_threshold_is_inclusive_and_consistent_with_probabilities(threshold, device):
    masks, boxes = _random_case(7, dtype=torch.float32)
    masks[3] = torch.round(masks[3] * 4) / 4  # values exactly on the thresholds 0.5 and 1.0
    probs = ops.paste_masks(masks.to(device), boxes.to(device), (90, 110), threshold=None)
    kept = ops.paste_masks(masks.to(device), boxes.to(device), (90, 110), threshold=threshold)
    assert torch.equal(kept, probs >= threshold)
    _assert_bool_matches(kept, ref.paste_masks(masks, boxes, (90, 110), threshold=None), threshold)


def test_border_pixels_get_partial_weights(device):
    # A 2 x 2 mask of ones in a 10-pixel box: one mask cell is 5 pixels. Zero padding fades the value
    # over the outer half cell on both sides of each box edge, exactly as detectron2's grid_sample does:
    # pixel 8 (centre 8.5) samples u = -0.8 -> 0.2, pixel 7 (centre 7.5) samples u = -1 -> 0.
    masks = torch.ones(1, 2, 2, device=device)
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]], device=device)
    out = ops.paste_masks(masks, boxes, (30, 30), threshold=None)[0].cpu()
    profile = torch.tensor([0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    expected = torch.zeros(30, 30)
    expected[8:22, 8:22] = profile[:, None] * profile[None, :]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.double(), ref.paste_masks(masks.cpu(), boxes.cpu(), (30, 30), None)[0])


def test_masks_with_a_channel_dimension(device):
    masks, boxes = _random_case(1)
    with_channel = ops.paste_masks(masks[:, None].to(device), boxes.to(device), (90, 110))
    assert torch.equal(with_channel, ops.paste_masks(masks.to(device), boxes.to(device), (90, 110)))


def test_empty_inputs(device):
    masks = torch.zeros(0, 28, 28, device=device)
    boxes = torch.zeros(0, 4, device=device)
    assert ops.paste_masks(masks, boxes, (40, 50)).shape == (0, 40, 50)
    assert ops.paste_masks(masks, boxes, (40, 50), None).dtype == torch.float32
    one = torch.rand(1, 28, 28, device=device)
    box = torch.tensor([[1.0, 1.0, 9.0, 9.0]], device=device)
    assert ops.paste_masks(one, box, (0, 50)).shape == (1, 0, 50)
    assert ops.paste_masks(one, box, (40, 0), None).shape == (1, 40, 0)


def test_degenerate_and_non_finite_boxes_paste_nothing(device):
    nan, inf = math.nan, math.inf
    boxes = torch.tensor([
        [10.0, 10.0, 10.0, 30.0],  # zero width
        [10.0, 30.0, 30.0, 10.0],  # y1 < y0
        [nan, 10.0, 30.0, 30.0],
        [10.0, 10.0, 30.0, nan],
        [-inf, 10.0, 30.0, 30.0],
        [10.0, 10.0, inf, 30.0],
        [5.0, 5.0, 25.0, 25.0],  # a normal box among them still pastes
    ], device=device)
    masks = torch.ones(7, 4, 4, device=device)
    out = ops.paste_masks(masks, boxes, (40, 40), threshold=None).cpu()
    assert out[:6].eq(0).all()
    assert out[6, 8:22, 8:22].eq(1).all()  # 2.5 pixels in from the edges, where no tap is outside
    torch.testing.assert_close(out.double(), ref.paste_masks(masks.cpu(), boxes.cpu(), (40, 40), None))


def test_far_coordinates(device):
    # Boxes around x = 1e5 on a wide image: float32 coordinates still sample the right cells.
    g = torch.Generator().manual_seed(4)
    n, height = 4, 30
    masks = torch.rand(n, 13, 17, generator=g)
    x0 = 100_000 + torch.rand(n, generator=g) * 60
    y0 = torch.rand(n, generator=g) * 15
    boxes = torch.stack([x0, y0, x0 + 1 + torch.rand(n, generator=g) * 30, y0 + 1 + torch.rand(n, generator=g) * 12],
                        dim=1)
    out = ops.paste_masks(masks.to(device), boxes.to(device), (height, 100_100), threshold=None)
    window = out[:, :, 100_000 - 20:].cpu()
    ys = torch.arange(height).repeat_interleave(120).expand(n, -1)
    xs = torch.arange(100_000 - 20, 100_100).repeat(height).expand(n, -1)
    torch.testing.assert_close(window.reshape(n, -1).double(), ref.sample_pasted(masks, boxes, ys, xs),
                               rtol=0, atol=1e-5)
    assert window.gt(0).any(dim=2).any(dim=1).all()
    assert out[:, :, :100_000 - 20].eq(0).all()


def test_non_contiguous_and_mixed_dtypes(device):
    masks, boxes = _random_case(2, dtype=torch.float64)
    strided_masks = masks.transpose(1, 2).contiguous().transpose(1, 2)  # same values, not contiguous
    strided_boxes = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]], dim=0).t()
    assert not strided_masks.is_contiguous() and not strided_boxes.is_contiguous()
    out = ops.paste_masks(strided_masks.to(device), strided_boxes.to(device), (90, 110), None)
    torch.testing.assert_close(out.cpu(), ref.paste_masks(masks, boxes, (90, 110), None), **_tol(torch.float64))
    # float32 masks with float64 boxes: the boxes are used at full precision
    mixed = ops.paste_masks(masks.float().to(device), boxes.to(device), (90, 110), None)
    torch.testing.assert_close(mixed.cpu().double(), ref.paste_masks(masks.float(), boxes, (90, 110), None),
                               **_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_masks(dtype, device):
    masks, boxes = _random_case(3)
    half = masks.to(dtype)
    out = ops.paste_masks(half.to(device), boxes.to(device), (90, 110), None)
    assert out.dtype == dtype
    expected = ref.paste_masks(half.double(), boxes, (90, 110), None)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-2, atol=1e-2)


def test_many_masks(device):
    # More masks than one CUDA grid dimension holds (65535); the CPU runs it too (4 x 6 images).
    n = 70_000
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(n, 3, 3, generator=g)
    xy = torch.rand(n, 2, generator=g) * 4 - 1
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 4 + 0.5], dim=1)
    out = ops.paste_masks(masks.to(device), boxes.to(device), (4, 6), None).cpu()
    picks = torch.tensor([0, 1, 12_345, 65_534, 65_535, 65_536, n - 1])
    torch.testing.assert_close(out[picks].double(), ref.paste_masks(masks[picks], boxes[picks], (4, 6), None),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("image", [(2000, 2000), (8000, 4000)])
def test_huge_images(image, device):
    """Large images with a few masks, checked at sampled pixels (no full-size reference grid)."""
    height, width = image
    g = torch.Generator().manual_seed(6)
    masks = torch.rand(3, 28, 28, generator=g)
    boxes = torch.tensor([[100.5, 200.25, 1500.0, 1900.75],
                          [width - 300.0, height - 250.0, width + 400.0, height + 100.0],
                          [-50.0, -80.0, 60.0, 40.0]])
    out = ops.paste_masks(masks.to(device), boxes.to(device), image)
    assert out.shape == (3, height, width) and out.dtype == torch.bool
    ys = torch.randint(0, height, (3, 4000), generator=g)
    xs = torch.randint(0, width, (3, 4000), generator=g)
    for i in range(3):  # and pixels inside each box, where the mask is
        x0, y0, x1, y1 = boxes[i].clamp(min=0).tolist()
        xs[i, :2000] = torch.randint(int(x0), min(int(x1) + 1, width), (2000,), generator=g)
        ys[i, :2000] = torch.randint(int(y0), min(int(y1) + 1, height), (2000,), generator=g)
    expected = ref.sample_pasted(masks, boxes, ys, xs)
    got = out[torch.arange(3)[:, None], ys.to(device), xs.to(device)].cpu()
    _assert_bool_matches(got, expected)
    assert got.any()
    # Nothing is set outside a box's reach (half a mask cell around it).
    for i in range(3):
        x0, y0, x1, y1 = boxes[i].tolist()
        cell_x, cell_y = (x1 - x0) / 28, (y1 - y0) / 28
        reach = out[i, max(0, int(y0 - cell_y)):int(y1 + cell_y) + 1, max(0, int(x0 - cell_x)):int(x1 + cell_x) + 1]
        assert int(out[i].sum()) == int(reach.sum())


@pytest.mark.parametrize("call, match", [
    (lambda: ops.paste_masks(torch.rand(2, 5), torch.zeros(2, 4), (9, 9)), "masks"),
    (lambda: ops.paste_masks(torch.rand(2, 3, 5, 5), torch.zeros(2, 4), (9, 9)), "masks"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5).long(), torch.zeros(2, 4), (9, 9)), "masks"),
    (lambda: ops.paste_masks(torch.rand(2, 0, 5), torch.zeros(2, 4), (9, 9)), "masks"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(2, 5), (9, 9)), "boxes"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(3, 4), (9, 9)), "same length"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(2, 4), (9,)), "image_shape"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(2, 4), (-1, 9)), "image_shape"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(2, 4), (9, 9), threshold=0.0), "threshold"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), torch.zeros(2, 4), (9, 9), threshold=math.nan), "threshold"),
    (lambda: ops.paste_masks(torch.rand(2, 5, 5), [[0, 0, 1, 1]] * 2, (9, 9)), "boxes"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="boxes"):
        ops.paste_masks(torch.rand(2, 5, 5, device="cuda"), torch.zeros(2, 4), (9, 9))


def test_kernel_checks_arguments_without_the_wrapper():
    paste = torch.ops.pydet.paste_masks
    with pytest.raises(ValueError, match="masks"):
        paste(torch.rand(2, 1, 5, 5), torch.zeros(2, 4), 9, 9, 0.5)
    with pytest.raises(ValueError, match="same length"):
        paste(torch.rand(2, 5, 5), torch.zeros(1, 4), 9, 9, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        paste(torch.rand(2, 5, 5), torch.zeros(2, 4), 9, 9, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        paste(torch.rand(2, 5, 5), torch.zeros(2, 4), 9, -9, None)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_opcheck(threshold, device):
    masks, boxes = _random_case(0, n=4, image=(20, 24))
    torch.library.opcheck(torch.ops.pydet.paste_masks, (masks.to(device), boxes.to(device), 20, 24, threshold))


def test_probabilities_record_no_grad():
    masks = torch.rand(3, 28, 28, requires_grad=True)
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert not ops.paste_masks(masks, boxes, (20, 20), threshold=None).requires_grad
