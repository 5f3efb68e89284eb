import math
from collections import OrderedDict

import pytest
import torch

from pydet.modeling import MultiScaleRoIAlign
from pydet.modeling.poolers import infer_scale
from pydet.ops import roi_align
from pydet.ops.roi_align import area_ratio_levels, fpn_levels, level_range
from pydet.reference import roi_align as ref
from tests.conftest import SEEDS, random_boxes

IMAGE_SHAPES = [(128, 160), (112, 150)]
CANONICAL = 28  # 224 scaled like these images (1/8 of a 1024 x 1280 input)


def _fpn(seed, device, channels=3, dtype=torch.float64):
    """A 4-level pyramid (strides 4..32) of a padded 128x160 batch, plus an unused 'pool' level."""
    g = torch.Generator().manual_seed(seed)
    x = OrderedDict((name, torch.randn(2, channels, 128 // s, 160 // s, generator=g, dtype=torch.float64)
                     .to(dtype=dtype, device=device))
                    for name, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64)))
    boxes = [random_boxes(n, image_size=110.0, max_side=100.0, generator=g, dtype=dtype).to(device) for n in (13, 9)]
    boxes[0][:3] = torch.tensor([[0.0, 0.0, 2.0, 3.0], [10.0, 10.0, 110.0, 108.0], [5.0, 5.0, 40.0, 60.0]])
    return x, boxes


def _boxes_of_many_sizes(seed, n=500, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 500
    wh = torch.exp(torch.rand(n, 2, generator=g, dtype=torch.float64) * 7)  # 1 .. 1100 pixels
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fpn_levels_match_reference(seed, dtype):
    boxes = _boxes_of_many_sizes(seed, dtype=dtype)
    for k_min, k_max, canonical_scale, canonical_level in ((2, 5, 224, 4), (3, 7, 224, 4), (2, 6, 100, 3)):
        got = fpn_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
        assert got.dtype == torch.int64
        assert torch.equal(got, ref.fpn_levels(boxes, k_min, k_max, canonical_scale, canonical_level))
        assert len(set(got.tolist())) >= 3  # the sizes span several levels


def test_fpn_levels_at_the_boundaries():
    sides = [224.0, 223.0, 112.0, 111.9, 448.0, 1000.0, 1.0, 0.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    # 224 px is the canonical level 4; 1e-6 puts exact powers of two on the upper level
    assert fpn_levels(boxes, 2, 5).tolist() == [2, 1, 1, 0, 3, 3, 0, 0]
    odd = torch.tensor([[0.0, 0.0, float("nan"), 5.0], [10.0, 10.0, 0.0, 20.0], [0.0, 0.0, 5.0, 5.0]])
    assert fpn_levels(odd, 2, 5).tolist() == [-1, -1, 0]  # NaN and negative areas pool nothing


@pytest.mark.parametrize("seed", SEEDS)
def test_area_ratio_levels_match_reference(seed):
    boxes = _boxes_of_many_sizes(seed)
    g = torch.Generator().manual_seed(seed)
    image_areas = torch.randint(400, 1400, (boxes.shape[0],), generator=g).float() ** 2
    got = area_ratio_levels(boxes, image_areas, 3, 5)
    assert torch.equal(got, ref.area_ratio_levels(boxes, image_areas, 3, 5))
    assert set(got.tolist()) == {0, 1, 2}


def test_area_ratio_levels_at_the_boundaries():
    image_area = torch.full((5,), 800.0 * 1024.0)
    # box area = image area / 4 -> ceil(5 - 2) = 3; a bit larger -> 4; image / 2 -> 4; whole image -> 5
    boxes = torch.tensor([[0.0, 0.0, 400.0, 512.0], [0.0, 0.0, 401.0, 512.0], [0.0, 0.0, 800.0, 512.0],
                          [0.0, 0.0, 800.0, 1024.0], [0.0, 0.0, 10.0, 10.0]])
    assert area_ratio_levels(boxes, image_area, 3, 5).tolist() == [0, 1, 1, 2, 0]


def test_infer_scale_and_level_range():
    assert infer_scale(torch.zeros(1, 1, 200, 304), (800, 1216)) == 0.25
    assert infer_scale(torch.zeros(1, 1, 13, 19), (800, 1216)) == 1 / 64
    assert infer_scale(torch.zeros(1, 1, 25, 38), (800, 1216)) == 1 / 32
    assert level_range([0.25, 0.125, 0.0625, 0.03125]) == (2, 5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_torchvision_rule_matches_reference(seed, aligned, sampling_ratio, device):
    x, boxes = _fpn(seed, device)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], (7, 5), sampling_ratio, canonical_scale=CANONICAL,
                                aligned=aligned)
    out = pooler(x, boxes, IMAGE_SHAPES)
    assert pooler.scales == [0.25, 0.125, 0.0625, 0.03125]
    features = [x[k].cpu() for k in ("0", "1", "2", "3")]
    cat = torch.cat([b.cpu() for b in boxes])
    levels = ref.fpn_levels(cat, 2, 5, CANONICAL)
    assert len(set(levels.tolist())) >= 3
    expected = ref.multi_scale_roi_align(features, [b.cpu() for b in boxes], levels, (7, 5), pooler.scales,
                                         sampling_ratio, aligned)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_centermask_rule_matches_reference(seed, device):
    x, boxes = _fpn(seed, device, dtype=torch.float32)
    p3_p5 = OrderedDict((k, v) for k, v in x.items() if k in ("1", "2", "3"))
    pooler = MultiScaleRoIAlign(["1", "2", "3"], 14, 0, aligned=True, assign_rule="centermask")
    out = pooler(p3_p5, boxes, IMAGE_SHAPES)
    assert pooler.scales == [0.125, 0.0625, 0.03125]
    image_areas = torch.cat([torch.full((len(b),), float(h * w)) for b, (h, w) in zip(boxes, IMAGE_SHAPES)])
    cat = torch.cat([b.cpu() for b in boxes])
    levels = ref.area_ratio_levels(cat, image_areas, 3, 5)
    assert len(set(levels.tolist())) >= 2
    expected = ref.multi_scale_roi_align([v.cpu() for v in p3_p5.values()], [b.cpu() for b in boxes], levels, 14,
                                         pooler.scales, 0, True)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)
    # the rules differ: the same boxes through the torchvision rule land elsewhere
    assert not torch.equal(levels, ref.fpn_levels(cat, 3, 5))


def test_feature_selection_order_and_single_level(device):
    x, boxes = _fpn(0, device)
    # the order of x decides, as in torchvision; 'pool' is ignored
    a = MultiScaleRoIAlign(["3", "0", "2", "1"], 3, 2, canonical_scale=CANONICAL)(x, boxes, IMAGE_SHAPES)
    b = MultiScaleRoIAlign(["0", "1", "2", "3"], 3, 2, canonical_scale=CANONICAL)(x, boxes, IMAGE_SHAPES)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    single = MultiScaleRoIAlign(["1"], 3, 2)(x, boxes, IMAGE_SHAPES)
    torch.testing.assert_close(single, roi_align(x["1"], boxes, 3, 0.125, 2), rtol=0, atol=0)


def test_scales_are_inferred_once_like_torchvision(device):
    x, boxes = _fpn(1, device)
    pooler = MultiScaleRoIAlign(["0", "1"], 3, 2)
    first = pooler(x, boxes, IMAGE_SHAPES)
    # scales use the largest image of the batch and are kept for later calls
    assert pooler.scales == [0.25, 0.125]
    torch.testing.assert_close(pooler(x, boxes, [(30, 30), (20, 20)]), first, rtol=0, atol=0)


def test_gradients_reach_the_used_levels(device):
    x, boxes = _fpn(2, device)
    leaves = OrderedDict((k, v.detach().requires_grad_()) for k, v in x.items())
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 4, 2, canonical_scale=CANONICAL)
    pooler(leaves, boxes, IMAGE_SHAPES).sum().backward()
    used = ref.fpn_levels(torch.cat([b.cpu() for b in boxes]), 2, 5, CANONICAL)
    for level, name in enumerate(("0", "1", "2", "3")):
        assert bool(leaves[name].grad.any()) == bool((used == level).any())
    assert leaves["pool"].grad is None


def test_degenerate_boxes_give_zero_rows(device):
    x, boxes = _fpn(3, device)
    boxes[1][0] = torch.tensor([float("nan"), 0.0, 10.0, 10.0])
    boxes[1][1] = torch.tensor([50.0, 50.0, 40.0, 60.0])  # inverted: negative area
    out = MultiScaleRoIAlign(["0", "1", "2", "3"], 3, 2, canonical_scale=CANONICAL)(x, boxes, IMAGE_SHAPES)
    assert torch.isfinite(out).all()
    assert not out[13:15].any() and out[15:].abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="assign_rule"):
        MultiScaleRoIAlign(["0"], 7, 2, assign_rule="area")
    with pytest.raises(TypeError, match="featmap_names"):
        MultiScaleRoIAlign("0", 7, 2)
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(["0"], (7, 7, 7), 2)
    x, boxes = _fpn(0, "cpu")
    with pytest.raises(ValueError, match="feature maps"):
        MultiScaleRoIAlign(["p2"], 7, 2)(x, boxes, IMAGE_SHAPES)
    with pytest.raises(ValueError, match="batch"):
        MultiScaleRoIAlign(["0"], 7, 2)(x, boxes * 2, IMAGE_SHAPES * 2)
    assert math.isclose(infer_scale(x["3"], (128, 160)), 1 / 32)
