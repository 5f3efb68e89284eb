import math

import pytest
import torch

from pydet import ops
from pydet.reference import boxes as ref
from tests.conftest import SEEDS, random_boxes

DTYPES = [torch.float32, torch.float64]
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_matches_reference(seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    a, b = random_boxes(57, generator=g, dtype=dtype), random_boxes(31, generator=g, dtype=dtype)
    out = ops.box_iou(a.to(device), b.to(device))
    assert out.dtype == dtype and out.shape == (57, 31)
    torch.testing.assert_close(out.cpu().double(), ref.box_iou(a, b), **_tol(dtype))


def test_box_iou_edge_cases(device):
    empty = torch.zeros(0, 4, device=device)
    one = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    assert ops.box_iou(empty, one).shape == (0, 1)
    assert ops.box_iou(one, empty).shape == (1, 0)
    # Touching boxes do not overlap; a zero-area box against itself is 0/0, as in torchvision.
    touching = torch.tensor([[10.0, 0.0, 20.0, 10.0]], device=device)
    assert ops.box_iou(one, touching).item() == 0.0
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]], device=device)
    assert math.isnan(ops.box_iou(point, point).item())
    assert ops.box_iou(one, point).item() == 0.0
    # Far from the origin float32 keeps the answer (1e5 + 10 is exact in float32).
    far = one + 1e5
    assert ops.box_iou(far, far).item() == 1.0


def test_box_iou_non_contiguous(device):
    g = torch.Generator().manual_seed(3)
    a = random_boxes(40, generator=g, dtype=torch.float64).to(device)
    strided = torch.cat([a, a], dim=1)[:, ::2]  # not contiguous, different values
    assert not strided.is_contiguous()
    torch.testing.assert_close(ops.box_iou(strided, a).cpu(), ref.box_iou(strided.cpu().contiguous(), a.cpu()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_decode_match_reference(seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    props, gts = random_boxes(200, generator=g, dtype=dtype), random_boxes(200, generator=g, dtype=dtype)
    codes = ops.encode_boxes(gts.to(device), props.to(device), WEIGHTS)
    torch.testing.assert_close(codes.cpu().double(), ref.encode_boxes(gts, props, WEIGHTS), **_tol(dtype))
    # decode with K=3 classes of codes per box, including codes past the clamp
    rel = torch.randn(200, 12, generator=g, dtype=torch.float64).to(dtype) * 3
    out = ops.decode_boxes(rel.to(device), props.to(device), WEIGHTS, scale_clamp=1.5)
    torch.testing.assert_close(out.cpu().double(), ref.decode_boxes(rel, props, WEIGHTS, 1.5), **_tol(dtype))
    # decode(encode(x)) recovers x when nothing is clamped
    back = ops.decode_boxes(codes, props.to(device), WEIGHTS, scale_clamp=math.inf)
    torch.testing.assert_close(back.cpu(), gts, rtol=1e-4, atol=1e-2 if dtype == torch.float32 else 1e-8)


def test_decode_default_clamp_and_nan(device):
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]], device=device)
    huge = torch.tensor([[0.0, 0.0, 100.0, float("nan")]], device=device)
    out = ops.decode_boxes(huge, box)
    w = (out[0, 2] - out[0, 0]).item()
    assert w == pytest.approx(1000.0, rel=1e-5)  # exp(log(1000/16)) * 16
    assert math.isnan(out[0, 1].item()) and math.isnan(out[0, 3].item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_half_computes_in_float32(dtype, device):
    if device.type == "cpu" and dtype == torch.float16:
        pass  # the CPU kernel supports half too: exercised on purpose
    g = torch.Generator().manual_seed(0)
    props = random_boxes(64, generator=g)
    rel = torch.randn(64, 4, generator=g)
    out = ops.decode_boxes(rel.to(dtype).to(device), props.to(dtype).to(device), WEIGHTS)
    assert out.dtype == dtype
    expected = ref.decode_boxes(rel.to(dtype).double(), props.to(dtype).double(), WEIGHTS).to(dtype)
    # one rounding at the end: within one half-precision ulp of the exact answer
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-2, atol=1.0)


def test_empty_inputs(device):
    e = torch.zeros(0, 4, device=device)
    assert ops.encode_boxes(e, e).shape == (0, 4)
    assert ops.decode_boxes(torch.zeros(0, 8, device=device), e).shape == (0, 8)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4)), "boxes1"),
    (lambda: ops.box_iou(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.int64)), "boxes2"),
    (lambda: ops.box_iou(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64)), "boxes2"),
    (lambda: ops.box_iou([[0, 0, 1, 1]], torch.zeros(2, 4)), "boxes1"),
    (lambda: ops.encode_boxes(torch.zeros(3, 4), torch.zeros(2, 4)), "same length"),
    (lambda: ops.encode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), (1.0, 1.0)), "weights"),
    (lambda: ops.decode_boxes(torch.zeros(3, 6), torch.zeros(3, 4)), "rel_codes"),
    (lambda: ops.decode_boxes(torch.zeros(3, 4), torch.zeros(2, 4)), "same length"),
    (lambda: ops.decode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), scale_clamp=float("nan")), "scale_clamp"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_kernels_check_arguments_without_the_wrapper():
    with pytest.raises(ValueError, match="boxes1"):
        torch.ops.pydet.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weights"):
        torch.ops.pydet.encode_boxes(torch.zeros(3, 4), torch.zeros(3, 4), [1.0])


def test_clip_and_remove_small():
    b = torch.tensor([[-5.0, -5.0, 50.0, 50.0], [10.0, 10.0, 10.5, 30.0], [0.0, 0.0, 200.0, 20.0]])
    clipped = ops.clip_boxes_to_image(b, (40, 100))
    assert clipped.tolist() == [[0.0, 0.0, 50.0, 40.0], [10.0, 10.0, 10.5, 30.0], [0.0, 0.0, 100.0, 20.0]]
    assert ops.remove_small_boxes(b, 1.0).tolist() == [0, 2]
    assert ops.clip_boxes_to_image(torch.zeros(2, 3, 4) - 1, (5, 5)).eq(0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype, device):
    g = torch.Generator().manual_seed(0)
    a = random_boxes(8, generator=g, dtype=dtype).to(device)
    b = random_boxes(5, generator=g, dtype=dtype).to(device)
    torch.library.opcheck(torch.ops.pydet.box_iou, (a, b))
    torch.library.opcheck(torch.ops.pydet.encode_boxes, (a, a.flip(0), [10.0, 10.0, 5.0, 5.0]))
    torch.library.opcheck(torch.ops.pydet.decode_boxes, (torch.randn(8, 8, dtype=dtype, device=device), a,
                                                          [1.0, 1.0, 1.0, 1.0], 4.0))
