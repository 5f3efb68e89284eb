import math

import pytest
import torch

from pydet import ops
from pydet.reference import nms as ref
from tests.conftest import SEEDS, random_boxes, requires_cuda

NAN, INF = float("nan"), float("inf")


def _scored_boxes(n, seed, dtype=torch.float32, **kw):
    g = torch.Generator().manual_seed(seed)
    return random_boxes(n, generator=g, dtype=dtype, **kw), torch.rand(n, generator=g, dtype=torch.float64).to(dtype)


def _assert_equal(out, expected):
    assert out.dtype == expected.dtype
    assert out.cpu().tolist() == expected.tolist()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 17, 300, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_reference(seed, n, dtype, device):
    boxes, scores = _scored_boxes(n, seed, dtype)
    for threshold in (0.3, 0.7):
        out = ops.nms(boxes.to(device), scores.to(device), threshold)
        _assert_equal(out, ref.nms(boxes, scores, threshold))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_batched_nms_matches_reference(seed, num_classes, device):
    boxes, scores = _scored_boxes(800, seed)
    idxs = torch.randint(0, num_classes, (800,), generator=torch.Generator().manual_seed(seed))
    out = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    _assert_equal(out, ref.batched_nms(boxes, scores, idxs, 0.5))


def test_batched_nms_any_integer_classes(device):
    # Negative, huge and int32 class ids: only equality matters.
    boxes, scores = _scored_boxes(400, 4)
    ids = torch.tensor([-(2**40), -3, 0, 2**50])[torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(0))]
    expected = ref.batched_nms(boxes, scores, ids, 0.5)
    _assert_equal(ops.batched_nms(boxes.to(device), scores.to(device), ids.to(device), 0.5), expected)
    small = torch.randint(0, 5, (400,), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    _assert_equal(ops.batched_nms(boxes.to(device), scores.to(device), small.to(device), 0.5),
                  ref.batched_nms(boxes, scores, small.long(), 0.5))


def test_batched_nms_exact_far_from_origin(device):
    # Overlapping boxes near 1e5 in different classes never interact; an offset trick would lose this
    # in float32 (1e5 * num_classes does not leave room for the box sizes).
    boxes = torch.tensor([[1e5, 1e5, 1e5 + 10, 1e5 + 10], [1e5 + 1, 1e5, 1e5 + 11, 1e5 + 10]] * 2, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 1, 0, 1], device=device)
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1]
    assert ops.batched_nms(boxes, scores, torch.arange(4, device=device), 0.5).tolist() == [0, 1, 2, 3]
    far, far_scores = _scored_boxes(800, 0)
    far = far + 1e5
    far_idxs = torch.randint(0, 20, (800,), generator=torch.Generator().manual_seed(0))
    _assert_equal(ops.batched_nms(far.to(device), far_scores.to(device), far_idxs.to(device), 0.5),
                  ref.batched_nms(far, far_scores, far_idxs, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_exactly_at_threshold_is_kept(dtype, device):
    # IoU([0,0,2,1], [0,0,1,1]) = 1 / 2 exactly: suppression needs IoU > threshold.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.nms(boxes, scores, math.nextafter(0.5, 0)).tolist() == [0]
    zeros = torch.zeros(2, dtype=torch.int64, device=device)
    assert ops.batched_nms(boxes, scores, zeros, 0.5).tolist() == [0, 1]
    # 0.1 is not a float32: the comparison is exact, IoU 0.1 (float32) is above the double 0.1.
    tenth = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype, device=device)
    iou = torch.tensor(1.0, dtype=dtype) / 10
    expected = [0] if iou.item() > 0.1 else [0, 1]
    assert ops.nms(tenth, scores, 0.1).tolist() == expected
    out = ops.multiclass_nms(boxes[None], scores[None, :, None], 0.0, 0.5, 4)
    assert out[3].tolist() == [2]


def test_tied_scores_keep_index_order(device):
    boxes, _ = _scored_boxes(500, 1)
    scores = torch.full((500,), 0.5)
    scores[::7] = 0.75
    out = ops.nms(boxes.to(device), scores.to(device), 0.5)
    _assert_equal(out, ref.nms(boxes, scores, 0.5))
    # identical boxes with tied scores: the lowest index survives
    same = torch.tensor([[1.0, 1.0, 5.0, 5.0]] * 6, device=device)
    assert ops.nms(same, torch.ones(6, device=device), 0.5).tolist() == [0]
    assert ops.nms(same, torch.arange(6.0, device=device), 0.99).tolist() == [5]
    assert ops.nms(same, torch.arange(6.0, device=device), 1.0).tolist() == [5, 4, 3, 2, 1, 0]


def test_zero_area_boxes_are_never_suppressed(device):
    # IoU of a zero-area box is 0 (with a box of positive area) or 0/0 = NaN (with another zero-area
    # box), and NaN > threshold is false: torchvision keeps them all.
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 3.0, 9.0]],
                         device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    assert ops.nms(boxes, scores, 0.0).tolist() == [0, 1, 2, 3]
    assert ops.batched_nms(boxes, scores, torch.zeros(4, dtype=torch.int64, device=device), 0.0).tolist() == [0, 1, 2, 3]
    assert ops.multiclass_nms(boxes[None], scores[None, :, None], 0.0, 0.0, 10)[3].tolist() == [4]


def test_nan_and_inf_scores(device):
    # NaN-scored boxes are dropped: never kept, and they suppress nothing (box 1 overlaps box 0 fully).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4 + [[20.0, 20.0, 30.0, 30.0]], device=device)
    scores = torch.tensor([NAN, 0.5, INF, -INF, NAN], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [2]
    assert ops.nms(boxes[[0, 1, 4]], scores[[0, 1, 4]], 0.5).tolist() == [1]
    assert ops.nms(boxes, torch.full((5,), NAN, device=device), 0.5).tolist() == []
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1, 0], device=device), 0.5).tolist() == [2, 1]
    b, s = _scored_boxes(300, 2)
    s[::5] = NAN
    s[1::9] = INF
    s[2::11] = -INF
    _assert_equal(ops.nms(b.to(device), s.to(device), 0.5), ref.nms(b, s, 0.5))
    out = ops.multiclass_nms(boxes[None], scores[None, :, None], -INF, 0.5, 5)
    assert out[3].tolist() == [1] and out[1][0, 0].item() == INF and out[2][0].tolist() == [0, -1, -1, -1, -1]


def test_nan_and_inf_coordinates_do_not_crash(device):
    # IoU with a NaN-coordinate box is NaN and with an infinite box 0: neither suppresses anything.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [NAN, 0.0, 10.0, 10.0], [-INF, -INF, INF, INF], [1.0, 1.0, 10.0, 10.0]],
                         device=device)
    scores = torch.tensor([0.9, 0.95, 0.99, 0.5], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [2, 1, 0]
    assert ops.nms(boxes, scores, -1.0).tolist() == [2, 1]  # 0 > -1 suppresses, NaN does not


def test_thresholds_outside_unit_interval(device):
    boxes, scores = _scored_boxes(300, 3)
    # negative: any pair with a defined IoU suppresses, the exhaustive path
    _assert_equal(ops.nms(boxes.to(device), scores.to(device), -0.5), ref.nms(boxes, scores, -0.5))
    _assert_equal(ops.nms(boxes.to(device), scores.to(device), INF), ref.nms(boxes, scores, INF))
    assert len(ops.nms(boxes.to(device), scores.to(device), 1.0)) == 300


def test_empty_and_single(device):
    empty = ops.nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64 and empty.device.type == device.type
    idx = torch.zeros(0, dtype=torch.int64, device=device)
    assert ops.batched_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), idx, 0.5).shape == (0,)
    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
    assert ops.nms(one, torch.tensor([0.3], device=device), 0.5).tolist() == [0]
    out = ops.multiclass_nms(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, 3, device=device), 0.1, 0.5, 3)
    assert out[0].shape == (2, 3, 4) and out[3].tolist() == [0, 0] and out[2].eq(-1).all()


def test_non_contiguous(device):
    boxes, scores = _scored_boxes(600, 5, torch.float64)
    wide = torch.cat([boxes, boxes.flip(0)], dim=1).to(device)[:, ::2]  # strided, different values
    s = torch.stack([scores, scores], dim=1).to(device)[:, 0]
    idxs = torch.randint(0, 3, (600, 2), generator=torch.Generator().manual_seed(0)).to(device)[:, 1]
    assert not wide.is_contiguous() and not s.is_contiguous() and not idxs.is_contiguous()
    dense = wide.cpu().contiguous()
    _assert_equal(ops.nms(wide, s, 0.5), ref.nms(dense, scores, 0.5))
    _assert_equal(ops.batched_nms(wide, s, idxs, 0.5), ref.batched_nms(dense, scores, idxs.cpu(), 0.5))
    b3 = wide[:, None].expand(600, 2, 4).transpose(0, 1)  # [2, 600, 4] with stride 0 over images
    s3 = torch.rand(600, 2, 3, dtype=torch.float64).transpose(0, 1).to(device)
    for o, e in zip(ops.multiclass_nms(b3, s3, 0.5, 0.5, 50), ref.multiclass_nms(b3.cpu(), s3.cpu(), 0.5, 0.5, 50)):
        torch.testing.assert_close(o.cpu(), e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, device):
    # IoU is computed in float32 from the half-precision values (exactly representable there).
    boxes, scores = _scored_boxes(400, 6, dtype, image_size=256.0, max_side=64.0)
    expected = ref.nms(boxes, scores, 0.5)
    _assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.5), expected)
    out = ops.multiclass_nms(boxes.view(2, 200, 4).to(device), scores.view(2, 200, 1).to(device), 0.2, 0.5, 30)
    exp = ref.multiclass_nms(boxes.view(2, 200, 4), scores.view(2, 200, 1), 0.2, 0.5, 30)
    assert out[0].dtype == dtype and out[1].dtype == dtype
    for o, e in zip(out, exp):
        torch.testing.assert_close(o.cpu(), e, rtol=0, atol=0)


def _multiclass_inputs(seed, batch=3, n=250, classes=6, per_class_boxes=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, n, classes) if per_class_boxes else (batch, n)
    boxes = random_boxes(math.prod(shape), generator=g, dtype=dtype, image_size=400.0).view(*shape, 4)
    scores = torch.rand(batch, n, classes, generator=g, dtype=torch.float64).to(dtype)
    scores[-1] *= 0.1  # the last image has no candidate above 0.2
    return boxes, scores


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("per_class_boxes", [False, True])
@pytest.mark.parametrize("class_agnostic", [False, True])
@pytest.mark.parametrize("pre_nms_topk, max_per_image", [(None, 1000), (60, 20), (5000, 7)])
def test_multiclass_nms_matches_reference(seed, per_class_boxes, class_agnostic, pre_nms_topk, max_per_image,
                                          device):
    boxes, scores = _multiclass_inputs(seed, per_class_boxes=per_class_boxes)
    out = ops.multiclass_nms(boxes.to(device), scores.to(device), 0.2, 0.5, max_per_image,
                             class_agnostic=class_agnostic, pre_nms_topk=pre_nms_topk)
    expected = ref.multiclass_nms(boxes, scores, 0.2, 0.5, max_per_image, class_agnostic=class_agnostic,
                                  pre_nms_topk=pre_nms_topk)
    for o, e in zip(out, expected):
        assert o.dtype == e.dtype and o.shape == e.shape
        torch.testing.assert_close(o.cpu(), e, rtol=0, atol=0)
    assert expected[3][-1] == 0 and expected[3][0] > 0


def test_multiclass_nms_layout_and_ties(device):
    # One box with two classes: class-aware keeps both, class-agnostic keeps the better pair (IoU 1).
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 12.0]]], dtype=torch.float64, device=device)
    scores = torch.tensor([[[0.6, 0.9, 0.1], [0.6, 0.0, 0.6]]], dtype=torch.float64, device=device)
    b, s, labels, count = ops.multiclass_nms(boxes, scores, 0.5, 0.5, 6)
    assert count.tolist() == [4] and count.dtype == torch.int64
    assert labels.tolist() == [[1, 0, 0, 2, -1, -1]]  # ties at 0.6: box index, then class
    assert s.tolist() == [[0.9, 0.6, 0.6, 0.6, 0.0, 0.0]]
    assert b[0, :4].tolist() == [boxes[0, i].tolist() for i in (0, 0, 1, 1)] and b[0, 4:].eq(0).all()
    _, s, labels, count = ops.multiclass_nms(boxes, scores, 0.5, 0.5, 6, class_agnostic=True)
    assert count.tolist() == [2] and labels[0, :2].tolist() == [1, 0]
    _, _, labels, count = ops.multiclass_nms(boxes, scores, 0.5, 0.5, 6, pre_nms_topk=2)
    assert count.tolist() == [2] and labels[0, :2].tolist() == [1, 0]


@pytest.mark.parametrize("call, match", [
    (lambda: ops.nms(torch.zeros(3, 5), torch.zeros(3), 0.5), "boxes"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(2), 0.5), "scores"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(3, 1), 0.5), "scores"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(3, dtype=torch.float64), 0.5), "scores"),
    (lambda: ops.nms(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5), "boxes"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(3), NAN), "iou_threshold"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(3), torch.tensor(0.5)), "iou_threshold"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5), "idxs"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5), "idxs"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.bool), 0.5), "idxs"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3), 0.1, 0.5, 5), "scores"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 4, 4), torch.zeros(2, 3, 2), 0.1, 0.5, 5), "boxes"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 3, 4), torch.zeros(2, 3, 2), 0.1, 0.5, 5), "boxes"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), NAN, 0.5, 5), "score_threshold"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 0.1, NAN, 5), "iou_threshold"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 0.1, 0.5, 0), "max_per_image"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 0.1, 0.5, 2.0), "max_per_image"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 0.1, 0.5, 5, pre_nms_topk=0),
     "pre_nms_topk"),
    (lambda: ops.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2, dtype=torch.float64), 0.1, 0.5, 5),
     "scores"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("other", ["meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_devices_must_match(other):
    with pytest.raises(ValueError, match="scores"):
        ops.nms(torch.zeros(3, 4), torch.zeros(3, device=other), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64, device=other), 0.5)
    with pytest.raises(ValueError, match="scores"):
        ops.multiclass_nms(torch.zeros(1, 3, 4), torch.zeros(1, 3, 2, device=other), 0.1, 0.5, 5)


def test_kernels_check_arguments_without_the_wrapper():
    with pytest.raises(ValueError, match="scores"):
        torch.ops.pydet.nms(torch.zeros(3, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        torch.ops.pydet.nms(torch.zeros(3, 4), torch.zeros(3), NAN)
    with pytest.raises(ValueError, match="idxs"):
        torch.ops.pydet.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        torch.ops.pydet.multiclass_nms(torch.zeros(2, 3, 5), torch.zeros(2, 3, 2), 0.1, 0.5, 5, False, -1)
    with pytest.raises(ValueError, match="max_per_image"):
        torch.ops.pydet.multiclass_nms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), 0.1, 0.5, -1, False, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype, device):
    boxes, scores = _scored_boxes(40, 0, dtype)
    boxes, scores = boxes.to(device), scores.to(device)
    idxs = torch.arange(40, device=device) % 3
    torch.library.opcheck(torch.ops.pydet.nms, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.pydet.batched_nms, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.pydet.multiclass_nms,
                          (boxes.view(2, 20, 4), scores.view(2, 20, 1).expand(2, 20, 3).contiguous(), 0.3, 0.5, 8,
                           False, 10))


def test_torch_compile_fullgraph_matches_eager():
    def detect(boxes, scores, idxs):
        return ops.batched_nms(boxes, scores, idxs, 0.5)

    boxes, scores = _scored_boxes(120, 0)
    idxs = torch.arange(120) % 4
    compiled = torch.compile(detect, fullgraph=True)
    _assert_equal(compiled(boxes, scores, idxs), detect(boxes, scores, idxs))


@requires_cuda
def test_cuda_batched_nms_mask_grows_with_the_classes_not_the_boxes():
    # A mask of n x n/64 words would need 125 GB here; per class it is n x 1 words (8 MB).
    n = 1_000_000
    boxes, scores = _scored_boxes(n, 0)
    idxs = torch.arange(n) // 8
    _assert_equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5), ops.batched_nms(boxes, scores, idxs, 0.5))
    torch.cuda.empty_cache()


# ---- the CUDA nms/batched_nms algorithm replayed on the CPU (csrc/cpu/nms_cuda_simulation.cpp) ----
# Same index logic (segments, 64-box chunks and tiles, word folding by warps) and math as the GPU kernels.

def _clustered_boxes(n, seed, spread):
    # Boxes around a few centres: many overlaps, so suppression crosses 64-box words.
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, 2, generator=g, dtype=torch.float64) * 100
    xy = centres[torch.randint(0, 4, (n,), generator=g)] + torch.rand(n, 2, generator=g, dtype=torch.float64) * spread
    wh = 10 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    return torch.cat([xy, xy + wh], 1).float(), torch.rand(n, generator=g, dtype=torch.float64).float()


def _simulate(boxes, scores, idxs, threshold):
    return torch.ops.pydet._simulate_cuda_nms(boxes, scores, idxs, threshold)


# Segment sizes around the 64-box word: 1, 63, 64, 65, 128 (a tile edge), 129 and a long one.
@pytest.mark.parametrize("sizes", [[1], [64], [65], [1, 64, 65], [63, 1, 128, 129, 1], [300], [2, 700, 5]])
@pytest.mark.parametrize("spread", [5.0, 60.0])
def test_simulated_cuda_batched_nms_matches_cpu(sizes, spread):
    n = sum(sizes)
    boxes, scores = _clustered_boxes(n, len(sizes) + n, spread)
    idxs = torch.repeat_interleave(torch.arange(len(sizes)) * 7 - 3, torch.tensor(sizes))
    idxs = idxs[torch.randperm(n, generator=torch.Generator().manual_seed(n))]  # classes interleaved in box order
    for threshold in (0.0, 0.3, 0.7, 1.0):
        _assert_equal(_simulate(boxes, scores, idxs, threshold), ops.batched_nms(boxes, scores, idxs, threshold))
        _assert_equal(_simulate(boxes, scores, None, threshold), ops.nms(boxes, scores, threshold))


def test_simulated_cuda_nms_edge_cases():
    boxes, scores = _clustered_boxes(130, 0, 2.0)
    idxs = torch.arange(130) % 3
    # Nothing kept: every score NaN, in one segment and in several.
    nan = torch.full((130,), NAN)
    assert _simulate(boxes, nan, None, 0.5).tolist() == []
    assert _simulate(boxes, nan, idxs, 0.5).tolist() == []
    # NaN scores mixed in, ties, inf, and identical boxes (everything after the first suppressed).
    mixed = scores.clone()
    mixed[::5] = NAN
    mixed[1::7] = 0.5
    mixed[3] = INF
    _assert_equal(_simulate(boxes, mixed, idxs, 0.5), ops.batched_nms(boxes, mixed, idxs, 0.5))
    same = boxes[:1].repeat(130, 1)
    _assert_equal(_simulate(same, scores, None, 0.5), ops.nms(same, scores, 0.5))
    _assert_equal(_simulate(same, scores, idxs, 0.5), ops.batched_nms(same, scores, idxs, 0.5))
    # float64 and the empty input.
    _assert_equal(_simulate(boxes.double(), scores.double(), idxs, 0.5), ops.batched_nms(boxes.double(), scores.double(), idxs, 0.5))
    assert _simulate(boxes[:0], scores[:0], idxs[:0], 0.5).tolist() == []


@pytest.mark.parametrize("seed", SEEDS)
def test_simulated_cuda_batched_nms_random(seed):
    boxes, scores = _scored_boxes(2000, seed)
    idxs = torch.randint(0, 80, (2000,), generator=torch.Generator().manual_seed(seed))
    _assert_equal(_simulate(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs, 0.5))


@requires_cuda
@pytest.mark.parametrize("agnostic", [False, True])
def test_cuda_multiclass_nms_never_synchronises(agnostic):
    def detect(boxes, scores):
        return ops.multiclass_nms(boxes, scores, 0.3, 0.5, 100, class_agnostic=agnostic, pre_nms_topk=3000)

    b, s = (t.cuda() for t in _multiclass_inputs(0, batch=4, n=2000, classes=20))
    expected = detect(b, s)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = detect(b, s)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # A CUDA graph cannot capture a host synchronisation either, and replays the op on new inputs.
    static_b, static_s = b.clone(), torch.zeros_like(s)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture (cub workspace, allocator pools)
        detect(static_b, static_s)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        captured = detect(static_b, static_s)
    static_s.copy_(s)
    graph.replay()
    torch.cuda.synchronize()
    for e, o, c in zip(expected, eager, captured):
        assert torch.equal(o, e) and torch.equal(c, e)


@requires_cuda
@pytest.mark.parametrize("seed", SEEDS)
def test_cuda_matches_cpu(seed):
    # Large enough for many 64-box tiles, several classes per tile and classes spanning tiles.
    boxes, scores = _scored_boxes(5000, seed)
    idxs = torch.randint(0, 30, (5000,), generator=torch.Generator().manual_seed(seed))
    _assert_equal(ops.nms(boxes.cuda(), scores.cuda(), 0.5), ops.nms(boxes, scores, 0.5))
    _assert_equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5),
                  ops.batched_nms(boxes, scores, idxs, 0.5))
    b, s = _multiclass_inputs(seed, batch=4, n=2000, classes=20)
    for agnostic in (False, True):
        out = ops.multiclass_nms(b.cuda(), s.cuda(), 0.3, 0.5, 300, class_agnostic=agnostic, pre_nms_topk=3000)
        for o, e in zip(out, ops.multiclass_nms(b, s, 0.3, 0.5, 300, class_agnostic=agnostic, pre_nms_topk=3000)):
            torch.testing.assert_close(o.cpu(), e, rtol=0, atol=0)


def test_multiclass_nms_raw_op_refuses_zero_topk_and_records_no_grad():
    boxes = torch.rand(2, 30, 4) * 50
    boxes[..., 2:] += boxes[..., :2] + 1
    scores = torch.rand(2, 30, 3)
    with pytest.raises(ValueError, match="pre_nms_topk must be positive"):
        torch.ops.pydet.multiclass_nms(boxes, scores, 0.1, 0.5, 10, False, 0)
    outputs = ops.multiclass_nms(boxes.requires_grad_(), scores.requires_grad_(), 0.1, 0.5, 10)
    assert not any(out.requires_grad for out in outputs)
