import pytest
import torch

from pydet import ops
from pydet.ops.roi_align import fpn_levels
from pydet.reference import roi_align as ref
from tests.conftest import SEEDS, random_boxes, requires_cuda

OUTPUT_SIZES = [1, (2, 5), 7]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _problem(seed, *, batch=2, channels=3, height=20, width=24, num_boxes=24, dtype=torch.float64, scale=0.25):
    """Feature maps and [K, 5] rois in image pixels (feature size / scale), some of them past the border."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)
    image = max(height, width) / scale
    boxes = random_boxes(num_boxes, image_size=image * 1.2, max_side=image * 0.6, generator=g, dtype=torch.float64)
    boxes -= image * 0.1
    index = torch.randint(0, batch, (num_boxes, 1), generator=g).double()
    return x, torch.cat([index, boxes], dim=1).to(dtype), g


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(seed, aligned, sampling_ratio, dtype, device):
    x, rois, _ = _problem(seed, dtype=dtype)
    for output_size in OUTPUT_SIZES:
        out = ops.roi_align(x.to(device), rois.to(device), output_size, 0.25, sampling_ratio, aligned)
        expected = ref.roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
        assert out.dtype == dtype and out.shape == expected.shape
        torch.testing.assert_close(out.cpu().double(), expected, **_tol(dtype))


@pytest.mark.parametrize("seed", SEEDS)
def test_list_of_boxes_equals_tensor_form(seed, device):
    x, rois, _ = _problem(seed, dtype=torch.float32)
    x, rois = x.to(device), rois.to(device)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(x.shape[0])]
    as_list = ops.roi_align(x, per_image, (3, 4), 0.25, 2)
    as_tensor = ops.roi_align(x, torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1)
                                            for i, b in enumerate(per_image)]), (3, 4), 0.25, 2)
    torch.testing.assert_close(as_list, as_tensor, rtol=0, atol=0)
    # fewer lists than images is fine (the later images have no boxes)
    assert ops.roi_align(x, per_image[:1], 2, 0.25).shape == (per_image[0].shape[0], x.shape[1], 2, 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_backward_matches_reference_autograd(seed, aligned, sampling_ratio, device):
    x, rois, g = _problem(seed)
    grad_out = torch.randn(rois.shape[0], x.shape[1], 3, 4, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    ref.roi_align(xr, rois, (3, 4), 0.25, sampling_ratio, aligned).backward(grad_out)
    xd = x.to(device).detach().requires_grad_()
    ops.roi_align(xd, rois.to(device), (3, 4), 0.25, sampling_ratio, aligned).backward(grad_out.to(device))
    torch.testing.assert_close(xd.grad.cpu(), xr.grad, rtol=1e-10, atol=1e-10)
    # float32 with float32 accumulation
    xf = x.float().to(device).requires_grad_()
    ops.roi_align(xf, rois.float().to(device), (3, 4), 0.25, sampling_ratio, aligned).backward(
        grad_out.float().to(device))
    torch.testing.assert_close(xf.grad.cpu().double(), xr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned, device):
    x, rois, _ = _problem(0, batch=2, channels=2, height=6, width=7, num_boxes=5)
    x = x.to(device).requires_grad_()
    rois = rois.to(device)
    for sampling_ratio in (-1, 2):
        fn = lambda inp: ops.roi_align(inp, rois, (2, 3), 0.25, sampling_ratio, aligned)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(lambda inp: ops.roi_align(inp, rois, 2, 0.25, 2, aligned), (x,))


def test_cpu_backward_is_deterministic():
    x, rois, g = _problem(1, channels=40, num_boxes=60)
    grad_out = torch.randn(rois.shape[0], 40, 7, 7, generator=g)
    rois = rois.float()
    args = (rois, 0.25, 7, 7, x.shape[0], 40, x.shape[2], x.shape[3], 2, False)
    first = torch.ops.pydet.roi_align_backward(grad_out, *args)
    assert torch.equal(first, torch.ops.pydet.roi_align_backward(grad_out, *args))
    threads = torch.get_num_threads()
    try:  # the summation order does not depend on the number of threads either
        torch.set_num_threads(1)
        assert torch.equal(first, torch.ops.pydet.roi_align_backward(grad_out, *args))
    finally:
        torch.set_num_threads(threads)


def test_zero_rois(device):
    x = torch.randn(2, 3, 8, 9, device=device, requires_grad=True)
    out = ops.roi_align(x, torch.zeros(0, 5, device=device), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()
    assert ops.roi_align(x, [torch.zeros(0, 4, device=device)] * 2, 4).shape == (0, 3, 4, 4)


def test_empty_and_inverted_boxes_follow_torchvision(device):
    x, _, _ = _problem(2, batch=1)
    x = x.to(device)
    rois = torch.tensor([[0, 20.0, 20.0, 20.0, 20.0],    # empty
                         [0, 30.0, 40.0, 10.0, 12.0],    # inverted
                         [0, 10.0, 10.0, 10.0, 50.0]],   # zero width
                        dtype=torch.float64, device=device)
    for aligned in (False, True):
        for sampling_ratio in (-1, 2):
            out = ops.roi_align(x, rois, 3, 0.25, sampling_ratio, aligned)
            torch.testing.assert_close(out.cpu(), ref.roi_align(x.cpu(), rois.cpu(), 3, 0.25, sampling_ratio, aligned))
    # aligned=False forces RoIs to at least 1x1 pixel: an empty box still pools the pixel at its corner
    assert ops.roi_align(x, rois[:1], 3, 0.25, -1, False).abs().sum() > 0
    # aligned=True with adaptive sampling: an empty box takes no samples, so zeros and no gradient
    xg = x.clone().requires_grad_()
    out = ops.roi_align(xg, rois[:1], 3, 0.25, -1, True)
    assert not out.any()
    out.sum().backward()
    assert not xg.grad.any()


def test_boxes_outside_the_map(device):
    x, _, _ = _problem(3, batch=1)
    x = x.to(device).requires_grad_()
    rois = torch.tensor([[0, -400.0, -300.0, -100.0, -50.0],   # wholly outside, above-left
                         [0, 500.0, 500.0, 900.0, 700.0],      # wholly outside, below-right
                         [0, -40.0, -30.0, 30.0, 40.0],        # partly outside
                         [0, 60.0, 50.0, 140.0, 120.0]],       # crossing the bottom-right border
                        dtype=torch.float64, device=device)
    out = ops.roi_align(x, rois, 4, 0.25, 2)
    assert not out[:2].any()
    torch.testing.assert_close(out.detach().cpu(), ref.roi_align(x.detach().cpu(), rois.cpu(), 4, 0.25, 2))
    out[:2].sum().backward()
    assert not x.grad.any()


def test_nan_and_inf_boxes_give_zeros(device):
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64, device=device, requires_grad=True)
    nan, inf = float("nan"), float("inf")
    rois = torch.tensor([[0, nan, 1.0, 5.0, 5.0], [0, 1.0, 1.0, nan, nan], [0, 1.0, 1.0, 5.0, inf],
                         [0, -inf, -inf, inf, inf], [0, 1.0, 1.0, 6.0, 6.0]], dtype=torch.float64, device=device)
    for sampling_ratio in (-1, 2):
        for aligned in (False, True):
            out = ops.roi_align(x, rois, 3, 1.0, sampling_ratio, aligned)
            assert torch.isfinite(out).all() and not out[:4].any()
            assert out[4].abs().sum() > 0
            (grad,) = torch.autograd.grad(out[:4].sum(), x)
            assert not grad.any()


def test_huge_boxes_with_adaptive_sampling_finish(device):
    # ceil(2e6 / 7) samples per bin side would be 285715: capped at 65536, all but a few outside the map
    x = torch.randn(1, 2, 10, 10, device=device)
    out = ops.roi_align(x, torch.tensor([[0, -1e6, -1e6, 1e6, 1e6], [0, 0.0, 0.0, 1e30, 1e30]], device=device), 7)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-6


def test_far_coordinates(device):
    x, _, _ = _problem(4, batch=1, dtype=torch.float32)
    x = x.to(device)
    rois = torch.tensor([[0, 1e5, 1e5, 1e5 + 50, 1e5 + 80], [0, 0.0, 0.0, 2e5, 1.6e5]], device=device)
    out = ops.roi_align(x, rois, 3, 1e-4, 2)  # the second box covers the whole map at this scale
    torch.testing.assert_close(out.cpu().double(), ref.roi_align(x.cpu(), rois.cpu(), 3, 1e-4, 2), rtol=1e-5,
                               atol=1e-5)
    assert not ops.roi_align(x, rois[:1], 3, 1.0, 2).any()  # far outside the map at scale 1


def test_non_contiguous_and_channels_last(device):
    x, rois, _ = _problem(5, channels=40, dtype=torch.float32)
    x, rois = x.to(device), rois.to(device)
    expected = ops.roi_align(x, rois, 5, 0.25, 2)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.roi_align(channels_last, rois, 5, 0.25, 2), expected)
    wide = torch.cat([x, x], dim=3)[..., ::2]  # strided view with other values
    torch.testing.assert_close(ops.roi_align(wide, rois, 5, 0.25, 2),
                               ops.roi_align(wide.contiguous(), rois, 5, 0.25, 2))
    strided_rois = torch.cat([rois, rois], dim=1)[:, ::2]
    torch.testing.assert_close(ops.roi_align(x, strided_rois, 5, 0.25, 2),
                               ops.roi_align(x, strided_rois.contiguous(), 5, 0.25, 2))
    xg = channels_last.clone().requires_grad_()
    ops.roi_align(xg, rois, 5, 0.25, 2).sum().backward()
    xc = x.clone().requires_grad_()
    ops.roi_align(xc, rois, 5, 0.25, 2).sum().backward()
    torch.testing.assert_close(xg.grad, xc.grad)


def test_degenerate_maps(device):
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], device=device)
    assert not ops.roi_align(torch.randn(1, 2, 0, 5, device=device), rois, 2).any()
    assert ops.roi_align(torch.randn(1, 0, 5, 5, device=device), rois, 2).shape == (1, 0, 2, 2)
    one_pixel = torch.full((1, 1, 1, 1), 3.0, device=device)
    assert torch.equal(ops.roi_align(one_pixel, rois, 2, 0.25, 2), torch.full((1, 1, 2, 2), 3.0, device=device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float(dtype, device):
    x, rois, g = _problem(6, channels=8, dtype=torch.float32)
    x_half = x.to(dtype)
    out = ops.roi_align(x_half.to(device), rois.to(device), 4, 0.25, 2)
    assert out.dtype == dtype
    expected = ref.roi_align(x_half.double(), rois, 4, 0.25, 2).to(dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-2, atol=1e-2)
    xg = x_half.to(device).detach().requires_grad_()
    grad_out = torch.randn(out.shape, generator=g).to(dtype)
    ops.roi_align(xg, rois.to(device), 4, 0.25, 2).backward(grad_out.to(device))
    xr = x_half.double().requires_grad_()
    ref.roi_align(xr, rois, 4, 0.25, 2).backward(grad_out.double())
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.cpu().double(), xr.grad, rtol=1e-2, atol=1e-2)


def test_rois_may_have_another_floating_dtype(device):
    x, rois, _ = _problem(7, dtype=torch.float32)
    torch.testing.assert_close(ops.roi_align(x.to(device), rois.double().to(device), 3, 0.25),
                               ops.roi_align(x.to(device), rois.to(device), 3, 0.25))


def test_autocast_runs_in_float32_and_returns_the_input_dtype():
    x, rois, _ = _problem(8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.roi_align(x, rois, 3, 0.25).dtype == torch.float32
        out = ops.roi_align(x.bfloat16(), rois.bfloat16(), 3, 0.25)
    assert out.dtype == torch.bfloat16
    expected = ops.roi_align(x.bfloat16().float(), rois.bfloat16().float(), 3, 0.25).bfloat16()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    xg = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops.roi_align(xg, rois, 3, 0.25).sum().backward()
    assert xg.grad.dtype == torch.bfloat16 and xg.grad.any()


BAD_CALLS = [
    (lambda: ops.roi_align(torch.zeros(2, 3, 4), torch.zeros(1, 5), 2), ValueError, "input"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4, dtype=torch.int64), torch.zeros(1, 5), 2), ValueError, "input"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(2, 4), 2), ValueError, "boxes"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), [torch.zeros(2, 5)], 2), ValueError, "boxes"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), [torch.zeros(2, 4)] * 2, 2), ValueError, "batch"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), [], 2), ValueError, "boxes"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), "boxes", 2), TypeError, "boxes"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 0), ValueError, "output_size"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), (2, 2, 2)), ValueError, "output_size"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 2.5), ValueError, "output_size"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 2, float("nan")), ValueError, "spatial_scale"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 2, -1.0), ValueError, "spatial_scale"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5), 2, 1.0, 2.0), TypeError, "sampling_ratio"),
    (lambda: ops.roi_align(torch.zeros(1, 3, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(torch.zeros(2, 3, 4, 4), torch.tensor([[-1.0, 0, 0, 2, 2]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(torch.zeros(2, 3, 4, 4), torch.tensor([[0.5, 0, 0, 2, 2]]), 2), ValueError, "batch index"),
    (lambda: ops.roi_align(torch.zeros(2, 3, 4, 4), torch.tensor([[float("nan"), 0, 0, 2, 2]]), 2), ValueError,
     "batch index"),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_kernels_check_arguments_without_the_wrapper():
    x, rois = torch.zeros(1, 3, 4, 4), torch.zeros(2, 5)
    with pytest.raises(ValueError, match="rois"):
        torch.ops.pydet.roi_align(x, torch.zeros(2, 4), 1.0, 2, 2, -1, False)
    with pytest.raises(ValueError, match="input"):
        torch.ops.pydet.roi_align(torch.zeros(3, 4, 4), rois, 1.0, 2, 2, -1, False)
    with pytest.raises(ValueError, match="output size"):
        torch.ops.pydet.roi_align(x, rois, 1.0, 0, 2, -1, False)
    with pytest.raises(ValueError, match="batch index"):
        torch.ops.pydet.roi_align(x, torch.tensor([[3.0, 0, 0, 1, 1]]), 1.0, 2, 2, -1, False)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.pydet.roi_align_backward(torch.zeros(2, 3, 2, 3), rois, 1.0, 2, 2, 1, 3, 4, 4, -1, False)
    with pytest.raises(ValueError, match="batch index"):
        torch.ops.pydet.roi_align_backward(torch.zeros(1, 3, 2, 2), torch.tensor([[3.0, 0, 0, 1, 1]]), 1.0, 2, 2,
                                           1, 3, 4, 4, -1, False)
    with pytest.raises(ValueError, match="levels"):
        torch.ops.pydet.multi_scale_roi_align([x], rois, torch.zeros(3, dtype=torch.int64), [1.0], 2, 2, -1, False)
    with pytest.raises(ValueError, match="spatial_scales"):
        torch.ops.pydet.multi_scale_roi_align([x, x], rois, torch.zeros(2, dtype=torch.int64), [1.0], 2, 2, -1,
                                              False)
    with pytest.raises(ValueError, match="feature maps must share"):
        torch.ops.pydet.multi_scale_roi_align([x, torch.zeros(1, 2, 4, 4)], rois, torch.zeros(2, dtype=torch.int64),
                                              [1.0, 0.5], 2, 2, -1, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    x, rois, g = _problem(9, batch=2, channels=3, height=9, width=11, num_boxes=6, dtype=dtype)
    x, rois = x.to(device), rois.to(device)
    torch.library.opcheck(torch.ops.pydet.roi_align, (x, rois, 0.25, 3, 2, 2, False))
    torch.library.opcheck(torch.ops.pydet.roi_align, (x.clone().requires_grad_(), rois, 0.25, 3, 2, -1, True))
    grad = torch.randn(6, 3, 3, 2, generator=g, dtype=dtype).to(device)
    torch.library.opcheck(torch.ops.pydet.roi_align_backward, (grad, rois, 0.25, 3, 2, 2, 3, 9, 11, 2, False))
    coarse = torch.randn(2, 3, 5, 6, generator=g, dtype=dtype).to(device)
    levels = torch.tensor([0, 1, 1, 0, 2, 1], device=device)
    for features in ([x, coarse], [x.clone().requires_grad_(), coarse.clone().requires_grad_()]):
        torch.library.opcheck(torch.ops.pydet.multi_scale_roi_align,
                              (features, rois, levels, [0.25, 0.125], 3, 2, 2, False))
    torch.library.opcheck(torch.ops.pydet.multi_scale_roi_align_backward,
                          (grad, rois, levels, [0.25, 0.125], 3, 2, 2, 3, [9, 5], [11, 6], 2, False))


# ---- multi-level pooling ----

def _pyramid(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(2, 3, 32 // 2 ** i, 40 // 2 ** i, generator=g, dtype=torch.float64).to(dtype)
                for i in range(3)]
    boxes = [random_boxes(n, image_size=128.0, max_side=120.0, generator=g, dtype=dtype) for n in (9, 7)]
    return features, boxes, [0.25, 0.125, 0.0625], g


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aligned", [False, True])
def test_multi_scale_matches_reference(seed, aligned, device):
    features, boxes, scales, g = _pyramid(seed)
    levels = torch.randint(-1, 4, (16,), generator=g)  # -1 and 3 are out of range: zero rows
    out = ops.multi_scale_roi_align([f.to(device) for f in features], [b.to(device) for b in boxes], (3, 2),
                                    scales, 2, aligned, levels=levels.to(device))
    expected = ref.multi_scale_roi_align(features, boxes, levels, (3, 2), scales, 2, aligned)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)
    assert not out[(levels < 0) | (levels > 2)].any()
    # backward vs the reference's autograd, and gradcheck on a smaller problem
    leaves = [f.to(device).detach().requires_grad_() for f in features]
    grad_out = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    ops.multi_scale_roi_align(leaves, [b.to(device) for b in boxes], (3, 2), scales, 2, aligned,
                              levels=levels.to(device)).backward(grad_out.to(device))
    ref_leaves = [f.clone().requires_grad_() for f in features]
    ref.multi_scale_roi_align(ref_leaves, boxes, levels, (3, 2), scales, 2, aligned).backward(grad_out)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.cpu(), want.grad, rtol=1e-10, atol=1e-10)


def test_multi_scale_channels_last_and_mixed_layouts(device):
    features, boxes, scales, g = _pyramid(4, dtype=torch.float32)
    features, boxes = [f.to(device) for f in features], [b.to(device) for b in boxes]
    levels = torch.randint(0, 3, (16,), generator=g).to(device)
    expected = ops.multi_scale_roi_align(features, boxes, 4, scales, 2, levels=levels)
    last = [f.contiguous(memory_format=torch.channels_last) for f in features]
    for layout in (last, [last[0], features[1], last[2]]):
        torch.testing.assert_close(ops.multi_scale_roi_align(layout, boxes, 4, scales, 2, levels=levels), expected)


def test_multi_scale_gradcheck(device):
    features, boxes, scales, _ = _pyramid(0)
    small = [f[:, :1, :4, :5].contiguous().to(device).requires_grad_() for f in features]
    rois = [b[:2].to(device) / 8 for b in boxes]
    levels = torch.tensor([0, 1, 2, 1], device=device)
    fn = lambda *fs: ops.multi_scale_roi_align(list(fs), rois, 2, scales, -1, True, levels=levels)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(small))
    assert torch.autograd.gradgradcheck(fn, tuple(small))


def test_multi_scale_default_levels_are_torchvision_levels(device):
    features, boxes, scales, _ = _pyramid(1, dtype=torch.float32)
    features, boxes = [f.to(device) for f in features], [b.to(device) for b in boxes]
    rois = torch.cat(boxes)
    # scales 1/4 .. 1/16 are levels 2..4; a canonical box of 56 px lands on level 4
    out = ops.multi_scale_roi_align(features, boxes, 3, scales, 2, canonical_scale=56)
    with_levels = ops.multi_scale_roi_align(features, boxes, 3, scales, 2, levels=fpn_levels(rois, 2, 4, 56, 4))
    torch.testing.assert_close(out, with_levels, rtol=0, atol=0)
    expected = ref.multi_scale_roi_align([f.cpu() for f in features], [b.cpu() for b in boxes],
                                         ref.fpn_levels(rois.cpu(), 2, 4, 56, 4), 3, scales, 2)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)
    # one level: plain roi_align
    torch.testing.assert_close(ops.multi_scale_roi_align(features[:1], boxes, 3, scales[:1], 2),
                               ops.roi_align(features[0], boxes, 3, scales[0], 2))


def test_multi_scale_bad_arguments():
    features, boxes, scales, _ = _pyramid(2)
    with pytest.raises(ValueError, match="spatial_scales"):
        ops.multi_scale_roi_align(features, boxes, 3, scales[:2])
    with pytest.raises(TypeError, match="features"):
        ops.multi_scale_roi_align(features[0], boxes, 3, scales)
    with pytest.raises(ValueError, match="levels"):
        ops.multi_scale_roi_align(features, boxes, 3, scales, levels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="levels"):
        ops.multi_scale_roi_align(features, boxes, 3, scales, levels=torch.zeros(16))


# ---- CUDA-specific ----

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_deterministic_backward_matches_atomic_and_cpu(dtype):
    x, rois, g = _problem(10, channels=37, num_boxes=80, dtype=torch.float32)
    x, rois = x.to(dtype), rois.cuda()
    grad_out = torch.randn(80, 37, 7, 7, generator=g).to(dtype)
    args = (rois, 0.25, 7, 7, x.shape[0], 37, x.shape[2], x.shape[3])
    tol = dict(rtol=1e-2, atol=1e-2) if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-5, atol=1e-5)
    for sampling_ratio, aligned in ((2, False), (-1, True)):
        cpu = torch.ops.pydet.roi_align_backward(grad_out, rois.cpu(), *args[1:], sampling_ratio, aligned)
        atomic = torch.ops.pydet.roi_align_backward(grad_out.cuda(), *args, sampling_ratio, aligned)
        torch.use_deterministic_algorithms(True)
        try:
            gathered = torch.ops.pydet.roi_align_backward(grad_out.cuda(), *args, sampling_ratio, aligned)
            again = torch.ops.pydet.roi_align_backward(grad_out.cuda(), *args, sampling_ratio, aligned)
        finally:
            torch.use_deterministic_algorithms(False)
        assert gathered.dtype == dtype and torch.equal(gathered, again)
        torch.testing.assert_close(gathered.cpu().float(), cpu.float(), **tol)
        torch.testing.assert_close(atomic.cpu().float(), cpu.float(), **tol)


@requires_cuda
def test_cuda_deterministic_multi_scale_backward():
    features, boxes, scales, g = _pyramid(3, dtype=torch.float32)
    levels = torch.randint(-1, 3, (16,), generator=g)
    grad_out = torch.randn(16, 3, 4, 4, generator=g)
    leaves = [f.clone().requires_grad_() for f in features]
    ops.multi_scale_roi_align(leaves, boxes, 4, scales, -1, True, levels=levels).backward(grad_out)
    torch.use_deterministic_algorithms(True)
    try:
        cuda_leaves = [f.cuda().requires_grad_() for f in features]
        ops.multi_scale_roi_align(cuda_leaves, [b.cuda() for b in boxes], 4, scales, -1, True,
                                  levels=levels.cuda()).backward(grad_out.cuda())
    finally:
        torch.use_deterministic_algorithms(False)
    for got, want in zip(cuda_leaves, leaves):
        torch.testing.assert_close(got.grad.cpu(), want.grad, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_autocast_upcasts_to_float32():
    x, rois, _ = _problem(11, dtype=torch.float32)
    x, rois = x.cuda(), rois.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = ops.roi_align(x.half(), rois.half(), 3, 0.25)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, ops.roi_align(x.half().float(), rois.half().float(), 3, 0.25).half(),
                               rtol=0, atol=0)


def _backward_three_ways(grad_out, rois, scale, shape, sampling_ratio, aligned):
    """roi_align_backward on the CPU, on CUDA with atomics and on CUDA with the deterministic gather."""
    args = (scale, grad_out.shape[2], grad_out.shape[3], *shape, sampling_ratio, aligned)
    cpu = torch.ops.pydet.roi_align_backward(grad_out, rois, *args)
    atomic = torch.ops.pydet.roi_align_backward(grad_out.cuda(), rois.cuda(), *args)
    torch.use_deterministic_algorithms(True)
    try:
        gathered = torch.ops.pydet.roi_align_backward(grad_out.cuda(), rois.cuda(), *args)
    finally:
        torch.use_deterministic_algorithms(False)
    return cpu, atomic.cpu(), gathered.cpu()


@requires_cuda
def test_cuda_non_finite_values_match_cpu():
    # inf in the last column, read by samples clamped onto it; aligned, the samples of the second box sit
    # exactly on column 3, so column 4 (inf) has weight 0 and must not turn the result into 0 * inf = NaN.
    x = torch.zeros(1, 1, 4, 5)
    x[..., 4] = float("inf")
    rois = torch.tensor([[0, 16.0, 0.0, 24.0, 16.0], [0, 14.0, 0.0, 14.0, 16.0]])
    for aligned in (False, True):
        cpu = ops.roi_align(x, rois, 2, 0.25, 2, aligned)
        assert cpu[0].isinf().any()
        if aligned:
            assert cpu[1].isfinite().all()
        torch.testing.assert_close(ops.roi_align(x.cuda(), rois.cuda(), 2, 0.25, 2, aligned).cpu(), cpu, equal_nan=True)
    # A NaN upstream gradient reaches only the pixels its samples weigh, on every path.
    grad_out = torch.zeros(2, 1, 2, 2)
    grad_out[1, 0, 0, 0] = float("nan")
    cpu, atomic, gathered = _backward_three_ways(grad_out, rois, 0.25, (1, 1, 4, 5), 2, False)
    assert cpu.isnan().any()
    torch.testing.assert_close(atomic, cpu, equal_nan=True)
    torch.testing.assert_close(gathered, cpu, equal_nan=True)


@requires_cuda
def test_cuda_deterministic_backward_of_a_near_empty_box_half_a_pixel_outside():
    # aligned, scale 0.25: x = -2 maps to exactly -1 (the map's edge, where a sample's weight jumps from 1
    # to 0) and the box is 3e-6 pixels wide, so the sample step is below sample_coord's rounding error.
    rois = torch.tensor([[0, -2.0, 1.0, -2.0000031, 9.0], [0, 1.0, -2.0, 9.0, -2.0000031]])
    grad_out = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    cpu, atomic, gathered = _backward_three_ways(grad_out, rois, 0.25, (1, 3, 6, 7), 45, True)
    assert cpu.abs().sum() > 0
    torch.testing.assert_close(atomic, cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered, cpu, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_bad_batch_index_poisons_its_roi_and_keeps_the_context():
    x = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
    bad = torch.tensor([[0.0, 0, 0, 4, 4], [2.0, 0, 0, 4, 4], [0.5, 1, 1, 5, 5]], device="cuda")
    out = ops.roi_align(x, bad, 2)
    assert torch.isnan(out[1:]).all()
    torch.testing.assert_close(out[0], ops.roi_align(x.detach().cpu(), bad[:1].cpu(), 2)[0].cuda())
    out[:1].sum().backward()  # the bad RoIs pass no gradient
    expected = torch.autograd.grad(ops.roi_align(x, bad[:1], 2).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)
    torch.cuda.synchronize()  # no device-side assert: the context still works
    assert torch.ones(1, device="cuda").item() == 1


# The CUDA kernels' paths: per-RoI tables (the usual case), the per-sample fallback (bins above 64 per
# side, or more than 1024 table entries from huge adaptive sample counts), and in the gather backward
# pixels covered by more than 4 bins per axis (RoIs smaller than a pixel).
@requires_cuda
@pytest.mark.parametrize("case", ["tables", "many_bins", "huge_adaptive", "subpixel"])
def test_cuda_kernel_paths_match_cpu(case):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 48, 64, generator=g, dtype=torch.float64)
    boxes = {"tables": random_boxes(30, image_size=250.0, max_side=120.0, generator=g, dtype=torch.float64),
             "many_bins": random_boxes(6, image_size=250.0, max_side=200.0, generator=g, dtype=torch.float64),
             # 600 feature pixels in 17 bins: 36 samples per bin side, 17 x 64 column entries > 1024.
             "huge_adaptive": torch.tensor([[0.0, 0.0, 2400.0, 2400.0], [100.0, 50.0, 2000.0, 1500.0]], dtype=torch.float64),
             "subpixel": torch.tensor([[40.0, 40.0, 41.5, 41.0], [8.0, 100.0, 9.0, 100.5]], dtype=torch.float64)}[case]
    rois = torch.cat([torch.arange(len(boxes), dtype=torch.float64)[:, None] % 2, boxes], 1)
    size, sampling = {"tables": (7, 2), "many_bins": (70, 2), "huge_adaptive": (17, -1), "subpixel": (14, -1)}[case]
    for aligned in (False, True):
        cpu = ops.roi_align(x, rois, size, 0.25, sampling, aligned)
        torch.testing.assert_close(ops.roi_align(x.cuda(), rois.cuda(), size, 0.25, sampling, aligned).cpu(), cpu)
        grad_out = torch.randn(cpu.shape, generator=g, dtype=torch.float64)
        want, atomic, gathered = _backward_three_ways(grad_out, rois, 0.25, (2, 40, 48, 64), sampling, aligned)
        torch.testing.assert_close(atomic, want)
        torch.testing.assert_close(gathered, want)


def test_huge_sampling_ratio_is_refused():
    features, rois = torch.rand(1, 2, 8, 8), torch.tensor([[0.0, 0, 0, 4, 4]])
    with pytest.raises(ValueError, match="sampling_ratio must be at most 64"):
        ops.roi_align(features, rois, 2, sampling_ratio=10**6)
    assert ops.roi_align(features, rois, 2, sampling_ratio=64).shape == (1, 2, 2, 2)
