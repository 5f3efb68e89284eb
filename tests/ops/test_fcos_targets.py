import math

import pytest
import torch

from pydet import ops
from pydet.reference import fcos_targets as ref
from tests.conftest import CUDA, SEEDS

DTYPES = [torch.float32, torch.float64]
NUM_CLASSES = 80
FEATURE_SIZES = [(40, 52), (20, 26), (10, 13), (5, 7), (3, 4)]  # a 320 x 416 image, strides 8..128
STRIDES = [8, 16, 32, 64, 128]


def _levels(dtype=torch.float32):
    return ops.fcos_level_inputs(FEATURE_SIZES, STRIDES, dtype=dtype)


def _random_gt(seed, m=40, dtype=torch.float32, width=416, height=320):
    """Boxes on a quarter-pixel grid, so float32 distances and areas are exact (the kernel and the
    float64 reference then take the same decisions); some snapped to the points' grid so points lie
    exactly on edges, and some duplicated so areas tie."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(m, 2, generator=g, dtype=torch.float64) * torch.tensor([width + 40.0, height + 40.0]) - 20
    wh = torch.rand(m, 2, generator=g, dtype=torch.float64) ** 2 * 400 + 0.25
    boxes = (torch.cat([xy, xy + wh], dim=1) * 4).round() / 4
    boxes[: m // 4] = (boxes[: m // 4] / 4).round() * 4  # edges on 4 (mod 8): where the points are
    if m >= 8:
        boxes[m // 4: m // 4 + 3] = boxes[0]  # identical boxes: the lowest index must win
        boxes[m // 2] = boxes[1] + torch.tensor([8.0, 4.0, 8.0, 4.0])  # same area, overlapping
    labels = torch.randint(0, NUM_CLASSES, (m,), generator=g)
    return boxes.to(dtype), labels


def _check(out, expected, dtype=torch.float32):
    labels, reg, matched = out
    assert labels.dtype == torch.int64 and matched.dtype == torch.int64 and reg.dtype == dtype
    assert torch.equal(matched.cpu(), expected[2])
    assert torch.equal(labels.cpu(), expected[0])
    torch.testing.assert_close(reg.cpu().double(), expected[1], rtol=0, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("radius", [0.0, 1.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(seed, radius, dtype, device):
    points, strides, ranges = _levels(dtype)
    boxes, labels = _random_gt(seed, dtype=dtype)
    expected = ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES, radius)
    out = ops.fcos_targets(points.to(device), strides.to(device), ranges.to(device), boxes.to(device),
                           labels.to(device), NUM_CLASSES, radius)
    _check(out, expected, dtype)
    assert 50 < int((expected[2] >= 0).sum()) < points.shape[0]  # a meaningful mix of matched and not


def test_default_radius_is_adelaidet_center_sampling():
    points, strides, ranges = _levels()
    boxes, labels = _random_gt(0)
    default = ops.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES)
    _check(default, ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES, 1.5))


def _one_point(x, y, stride=8.0, size_range=(-1.0, math.inf), device="cpu"):
    return (torch.tensor([[x, y]], device=device), torch.tensor([stride], device=device),
            torch.tensor([size_range], device=device))


def _match(point, boxes, radius=0.0, device="cpu"):
    boxes = torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.arange(boxes.shape[0], device=device) + 10
    out = ops.fcos_targets(*point, boxes, labels, NUM_CLASSES, radius)
    return int(out[2][0])


def test_point_on_an_edge_is_outside(device):
    point = _one_point(12.0, 12.0, device=device)
    assert _match(point, [12.0, 0.0, 40.0, 40.0], device=device) == -1  # l = 0
    assert _match(point, [0.0, 0.0, 12.0, 40.0], device=device) == -1  # r = 0
    assert _match(point, [0.0, 12.0, 40.0, 40.0], device=device) == -1  # t = 0
    assert _match(point, [0.0, 0.0, 40.0, 12.0], device=device) == -1  # b = 0
    assert _match(point, [11.75, 11.75, 12.25, 12.25], device=device) == 0
    # the centre-sampling square's edge too: centre 50, reach 1.5 * 8 = 12 -> region [38, 62]
    assert _match(_one_point(38.0, 50.0, device=device), [0.0, 0.0, 100.0, 100.0], 1.5, device) == -1
    assert _match(_one_point(38.25, 50.0, device=device), [0.0, 0.0, 100.0, 100.0], 1.5, device) == 0
    assert _match(_one_point(62.0, 50.0, device=device), [0.0, 0.0, 100.0, 100.0], 1.5, device) == -1


def test_size_range_is_inclusive_and_uses_the_box_distances(device):
    box = [0.0, 0.0, 74.0, 20.0]  # from (10, 10): l = t = b = 10, r = 64
    for size_range, expected in [((64.0, 128.0), 0), ((-1.0, 64.0), 0), ((64.25, 128.0), -1), ((-1.0, 63.75), -1)]:
        assert _match(_one_point(10.0, 10.0, size_range=size_range, device=device), box, device=device) == expected
    # With centre sampling the point must be near the centre, but max(l, t, r, b) is still measured to
    # the box: 100 here, although the sampling square is only 12 pixels from the point.
    wide = [0.0, 0.0, 200.0, 20.0]
    assert _match(_one_point(100.0, 10.0, size_range=(64.0, 128.0), device=device), wide, 1.5, device) == 0
    assert _match(_one_point(100.0, 10.0, size_range=(-1.0, 64.0), device=device), wide, 1.5, device) == -1


def test_radius_zero_disables_center_sampling(device):
    wide = [0.0, 0.0, 200.0, 20.0]
    assert _match(_one_point(20.0, 10.0, device=device), wide, 0.0, device) == 0
    assert _match(_one_point(20.0, 10.0, device=device), wide, 1.5, device) == -1
    assert _match(_one_point(95.0, 10.0, device=device), wide, 1.5, device) == 0
    # a larger stride reaches further from the centre
    assert _match(_one_point(20.0, 10.0, stride=64.0, device=device), wide, 1.5, device) == 0


def test_ties_go_to_the_smallest_area_then_the_lowest_index(device):
    point = _one_point(10.0, 10.0, device=device)
    same_area = [[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 25.0, 25.0]]
    assert _match(point, same_area, device=device) == 0
    assert _match(point, same_area[::-1], device=device) == 0
    assert _match(point, [[0.0, 0.0, 30.0, 30.0]] * 3, device=device) == 0
    assert _match(point, [[0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 25.0, 25.0]], device=device) == 1


def test_targets_of_a_match(device):
    points, strides, ranges = _one_point(10.0, 12.0, device=device)
    boxes = torch.tensor([[2.0, 4.5, 30.0, 40.0]], device=device)
    labels, reg, matched = ops.fcos_targets(points, strides, ranges, boxes, torch.tensor([2], device=device), 3)
    assert labels.tolist() == [2] and matched.tolist() == [0]
    assert reg.tolist() == [[8.0, 7.5, 20.0, 28.0]]


def test_no_gt_and_no_points(device):
    points, strides, ranges = (t.to(device) for t in _levels())
    labels, reg, matched = ops.fcos_targets(points, strides, ranges, torch.zeros(0, 4, device=device),
                                            torch.zeros(0, dtype=torch.int64, device=device), NUM_CLASSES)
    assert labels.eq(NUM_CLASSES).all() and matched.eq(-1).all() and reg.eq(0).all()
    assert labels.shape == (points.shape[0],) and reg.shape == (points.shape[0], 4)
    boxes, gt_labels = _random_gt(0)
    out = ops.fcos_targets(points[:0], strides[:0], ranges[:0], boxes.to(device), gt_labels.to(device), NUM_CLASSES)
    assert [tuple(t.shape) for t in out] == [(0,), (0, 4), (0,)]


def test_one_gt(device):
    points, strides, ranges = _levels()
    box, label = torch.tensor([[100.0, 80.0, 180.0, 200.0]]), torch.tensor([3])
    out = ops.fcos_targets(points.to(device), strides.to(device), ranges.to(device), box.to(device),
                           label.to(device), NUM_CLASSES)
    expected = ref.fcos_targets(points, strides, ranges, box, label, NUM_CLASSES)
    _check(out, expected)
    assert int((out[2] == 0).sum()) > 0 and out[0][out[2] == 0].eq(3).all()


def test_nan_boxes_are_never_matched(device):
    points, strides, ranges = _levels()
    boxes, labels = _random_gt(1)
    boxes[::3, 0] = math.nan
    boxes[1, 3] = math.nan
    out = ops.fcos_targets(points.to(device), strides.to(device), ranges.to(device), boxes.to(device),
                           labels.to(device), NUM_CLASSES)
    _check(out, ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES))
    nan_rows = torch.isnan(boxes).any(dim=1).nonzero().flatten().to(device)
    assert not torch.isin(out[2], nan_rows).any() and out[2].ge(0).any()


def test_many_boxes(device):
    # More boxes than one CUDA shared-memory tile (256), with the winners spread over the tiles.
    points, strides, ranges = _levels()
    boxes, labels = _random_gt(2, m=700)
    out = ops.fcos_targets(points.to(device), strides.to(device), ranges.to(device), boxes.to(device),
                           labels.to(device), NUM_CLASSES)
    matched = out[2].cpu()
    assert matched.max() > 512
    # the reference on every matched point and as many unmatched ones
    picks = torch.cat([(matched >= 0).nonzero().flatten(), (matched < 0).nonzero().flatten()[::3]])
    expected = ref.fcos_targets(points[picks], strides[picks], ranges[picks], boxes, labels, NUM_CLASSES)
    _check(tuple(t.cpu()[picks] for t in out), expected)


def test_many_points_and_far_coordinates(device):
    # ~200k points (a 1600 x 2000 image at stride 4..64), everything shifted by 1e5 (exact in float32).
    points, strides, ranges = ops.fcos_level_inputs([(400, 500), (200, 250), (100, 125), (50, 63), (25, 32)],
                                                    [4, 8, 16, 32, 64])
    boxes, labels = _random_gt(3, m=60, width=2000, height=1600)
    boxes *= 4
    offset = 1e5
    out = ops.fcos_targets((points + offset).to(device), strides.to(device), ranges.to(device),
                           (boxes + offset).to(device), labels.to(device), NUM_CLASSES)
    picks = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:3000]
    picks = torch.cat([picks, (out[2].cpu() >= 0).nonzero().flatten()[:1000]])
    expected = ref.fcos_targets(points[picks] + offset, strides[picks], ranges[picks], boxes + offset, labels,
                                NUM_CLASSES)
    _check(tuple(t.cpu()[picks] for t in out), expected)


def test_non_contiguous_inputs(device):
    points, strides, ranges = _levels(torch.float64)
    boxes, labels = _random_gt(4, dtype=torch.float64)
    strided_points = points.t().contiguous().t()
    strided_ranges = ranges.t().contiguous().t()
    strided_boxes = boxes.t().contiguous().t()
    strided_labels = torch.stack([labels, labels], dim=1)[:, 0]
    assert not any(t.is_contiguous() for t in (strided_points, strided_ranges, strided_boxes, strided_labels))
    out = ops.fcos_targets(strided_points.to(device), strides.to(device), strided_ranges.to(device),
                           strided_boxes.to(device), strided_labels.to(device), NUM_CLASSES)
    _check(out, ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, device):
    # A 128 x 128 image on a quarter-pixel grid: exact in float16 (and bfloat16 keeps 8 bits: integers).
    points, strides, ranges = ops.fcos_level_inputs([(16, 16), (8, 8), (4, 4)], [8, 16, 32],
                                                    ((-1, 32), (32, 64), (64, math.inf)), dtype=dtype)
    boxes, labels = _random_gt(5, m=20, width=128, height=128)
    boxes = boxes.clamp(0, 128).round().to(dtype)
    out = ops.fcos_targets(points.to(device), strides.to(device), ranges.to(device), boxes.to(device),
                           labels.to(device), NUM_CLASSES)
    _check(out, ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES), dtype)


def test_int_strides_ranges_and_labels_are_converted(device):
    points, strides, ranges = _levels()
    boxes, labels = _random_gt(6)
    out = ops.fcos_targets(points.to(device), strides.long().to(device), ranges.clamp(max=1e6).long().to(device),
                           boxes.to(device), labels.int().to(device), NUM_CLASSES)
    _check(out, ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES))


def test_batched_matches_per_image(device):
    points, strides, ranges = _levels()
    per_image = [_random_gt(seed, m=m) for seed, m in [(7, 25), (8, 0), (9, 40)]]
    padded = torch.tensor([[0.0, 0.0, 500.0, 500.0]]).repeat(3, 40, 1)  # would match a lot if used
    padded_labels = torch.full((3, 40), 99)
    for i, (boxes, labels) in enumerate(per_image):
        padded[i, :boxes.shape[0]], padded_labels[i, :boxes.shape[0]] = boxes, labels
    num_gt = torch.tensor([25, 0, 40])
    args = [t.to(device) for t in (points, strides, ranges, padded, padded_labels, num_gt)]
    out = ops.fcos_targets_batched(*args, NUM_CLASSES)
    assert [tuple(t.shape) for t in out] == [(3, points.shape[0]), (3, points.shape[0], 4), (3, points.shape[0])]
    expected = ref.fcos_targets_batched(points, strides, ranges, padded, padded_labels, num_gt, NUM_CLASSES)
    _check(out, expected)
    for i, (boxes, labels) in enumerate(per_image):
        _check([t[i] for t in out], ref.fcos_targets(points, strides, ranges, boxes, labels, NUM_CLASSES))
    from_lists = ops.fcos_targets_batched(points.to(device), strides.to(device), ranges.to(device),
                                          [b.to(device) for b, _ in per_image], [lb.to(device) for _, lb in per_image],
                                          None, NUM_CLASSES)
    _check(from_lists, expected)


def test_batched_num_gt_out_of_range_raises_on_cpu():
    points, strides, ranges = _levels()
    boxes, labels = torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.int64)
    for bad in ([6, 1], [-1, 1]):
        with pytest.raises(ValueError, match="num_gt"):
            ops.fcos_targets_batched(points, strides, ranges, boxes, labels, bad, NUM_CLASSES)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_batched_num_gt_is_clamped_on_cuda():
    points, strides, ranges = (t.cuda() for t in _levels())
    boxes, labels = _random_gt(10, m=5)
    boxes, labels = boxes.repeat(2, 1, 1).cuda(), labels.repeat(2, 1).cuda()
    clamped = ops.fcos_targets_batched(points, strides, ranges, boxes, labels, [7, -1], NUM_CLASSES)
    in_range = ops.fcos_targets_batched(points, strides, ranges, boxes, labels, [5, 0], NUM_CLASSES)
    assert all(torch.equal(a, b) for a, b in zip(clamped, in_range))


def _args(**overrides):
    points, strides, ranges = _levels()
    boxes, labels = _random_gt(0, m=5)
    args = dict(points=points, strides=strides, size_ranges=ranges, gt_boxes=boxes, gt_labels=labels,
                num_classes=NUM_CLASSES, center_sampling_radius=1.5)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, match", [
    (dict(points=torch.zeros(10, 3)), "points"),
    (dict(points=torch.zeros(10, 2, dtype=torch.int64)), "points"),
    (dict(strides=torch.zeros(3)), "strides"),
    (dict(size_ranges=torch.zeros(3, 2)), "size_ranges"),
    (dict(gt_boxes=torch.zeros(5, 5)), "gt_boxes"),
    (dict(gt_boxes=torch.zeros(5, 4, dtype=torch.float64)), "gt_boxes"),
    (dict(gt_labels=torch.zeros(4, dtype=torch.int64)), "gt_labels"),
    (dict(gt_labels=torch.zeros(5)), "gt_labels"),
    (dict(num_classes=-1), "num_classes"),
    (dict(num_classes=2.5), "num_classes"),
    (dict(center_sampling_radius=-1.0), "center_sampling_radius"),
    (dict(center_sampling_radius=math.nan), "center_sampling_radius"),
    (dict(center_sampling_radius=math.inf), "center_sampling_radius"),
    (dict(points=[[0.0, 0.0]]), "points"),
])
def test_bad_arguments_raise_clear_errors(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.fcos_targets(**_args(**overrides))


def test_batched_bad_arguments():
    points, strides, ranges = _levels()
    boxes, labels = torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="num_gt"):
        ops.fcos_targets_batched(points, strides, ranges, boxes, labels, [1, 2, 3], NUM_CLASSES)
    with pytest.raises(ValueError, match="gt_labels"):
        ops.fcos_targets_batched(points, strides, ranges, boxes, labels[:, :4], [1, 2], NUM_CLASSES)
    with pytest.raises(ValueError, match="num_gt must be None"):
        ops.fcos_targets_batched(points, strides, ranges, [boxes[0]], [labels[0]], [5], NUM_CLASSES)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="gt_boxes"):
        ops.fcos_targets(**_args(points=_levels()[0].cuda(), strides=_levels()[1].cuda(),
                                 size_ranges=_levels()[2].cuda()))


def test_kernels_check_arguments_without_the_wrapper():
    a = _args()
    positional = [a["points"], a["strides"], a["size_ranges"], a["gt_boxes"], a["gt_labels"]]
    with pytest.raises(ValueError, match="gt_labels"):
        torch.ops.pydet.fcos_targets(*positional[:4], a["gt_labels"].int(), NUM_CLASSES, 1.5)
    with pytest.raises(ValueError, match="strides"):
        torch.ops.pydet.fcos_targets(a["points"], a["strides"][:-1], *positional[2:], NUM_CLASSES, 1.5)
    with pytest.raises(ValueError, match="center_sampling_radius"):
        torch.ops.pydet.fcos_targets(*positional, NUM_CLASSES, -1.0)
    with pytest.raises(ValueError, match="num_gt"):
        torch.ops.pydet.fcos_targets_batched(*positional[:3], a["gt_boxes"][None], a["gt_labels"][None],
                                             torch.tensor([9]), NUM_CLASSES, 1.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype, device):
    points, strides, ranges = (t.to(device) for t in ops.fcos_level_inputs([(6, 8), (3, 4)], [8, 16],
                                                                            ((-1, 64), (64, math.inf)),
                                                                            dtype=dtype))
    boxes, labels = _random_gt(0, m=6, dtype=dtype, width=64, height=48)
    boxes, labels = boxes.to(device), labels.to(device)
    torch.library.opcheck(torch.ops.pydet.fcos_targets, (points, strides, ranges, boxes, labels, NUM_CLASSES, 1.5))
    num_gt = torch.tensor([6, 2], device=device)
    torch.library.opcheck(torch.ops.pydet.fcos_targets_batched,
                          (points, strides, ranges, boxes[None].repeat(2, 1, 1), labels[None].repeat(2, 1), num_gt,
                           NUM_CLASSES, 0.0))


def test_centerness():
    reg = torch.tensor([[10.0, 5.0, 10.0, 5.0], [2.0, 1.0, 8.0, 4.0], [0.0, 0.0, 0.0, 0.0],
                        [3.0, 0.0, 3.0, 3.0], [math.nan, 1.0, 1.0, 1.0]])
    expected = torch.tensor([1.0, math.sqrt(0.25 * 0.25), 0.0, 0.0, 0.0])
    torch.testing.assert_close(ops.fcos_centerness(reg), expected)
    assert ops.fcos_centerness(torch.zeros(2, 0, 4)).shape == (2, 0)
    with pytest.raises(ValueError, match="reg_targets"):
        ops.fcos_centerness(torch.zeros(3, 3))


def test_level_inputs():
    points, strides, ranges = ops.fcos_level_inputs([(2, 3), (1, 2)], [8, 16], ((-1, 64), (64, math.inf)))
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2
    assert ranges.tolist() == [[-1, 64]] * 6 + [[64, math.inf]] * 2
    torch.testing.assert_close(points, torch.cat(ops.grid_points([(2, 3), (1, 2)], [8, 16])))
    default = ops.fcos_level_inputs([(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)], [8, 16, 32, 64, 128])
    assert default[0].shape == (22_400, 2) and default[2][-1].tolist() == [512, math.inf]
    with pytest.raises(ValueError, match="size_ranges"):
        ops.fcos_level_inputs([(2, 3)], [8])
    with pytest.raises(ValueError, match="strides"):
        ops.fcos_level_inputs([(2, 3)], [(8, 8)], ((-1, 64),))


@pytest.mark.parametrize("label", [-1, NUM_CLASSES, 500])
def test_labels_outside_the_classes_are_refused(label):
    points, strides, ranges = _levels()
    boxes = torch.tensor([[4.0, 4, 40, 40], [10, 10, 20, 20]])
    with pytest.raises(ValueError, match=r"gt_labels must be in \[0, num_classes\)"):
        ops.fcos_targets(points, strides, ranges, boxes, torch.tensor([0, label]), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"gt_labels must be in \[0, num_classes\)"):
        ops.fcos_targets_batched(points, strides, ranges, [boxes], [torch.tensor([label, 0])], None, NUM_CLASSES)


_CUDA_BAD_LABEL = """
import torch
from pydet import ops
points, strides, ranges = (t.cuda() for t in ops.fcos_level_inputs([(8, 8)], [8]))
boxes = torch.tensor([[[4.0, 4, 40, 40], [10, 10, 20, 20]]], device="cuda")
padded = torch.tensor([[1, {label}]], device="cuda")
# the bad label sits in a padding row (num_gt = 1): not checked, so this runs
ops.fcos_targets_batched(points, strides, ranges, boxes, padded, torch.tensor([1], device="cuda"), 3)
torch.cuda.synchronize()
print("padding ok", flush=True)
ops.fcos_targets(points, strides, ranges, boxes[0], padded[0], 3)
torch.cuda.synchronize()
"""


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("label", [-1, 3])
def test_labels_outside_the_classes_fail_the_cuda_stream(label):
    """On CUDA the check is a device-side assertion (no host sync): the stream fails, as it does for an
    out-of-range index in torch. It poisons the CUDA context, so it runs in its own process."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _CUDA_BAD_LABEL.format(label=label)], capture_output=True,
                            text=True, timeout=300)
    assert "padding ok" in result.stdout
    assert result.returncode != 0
    assert "gt_labels must be in [0, num_classes)" in result.stderr or "device-side assert" in result.stderr
