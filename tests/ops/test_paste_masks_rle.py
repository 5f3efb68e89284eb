"""paste_masks_rle: the RLE of paste_masks' bool masks, compared with pycocotools' encoding of them and
with the reference encoder (pydet/reference/paste_masks.py), which is itself checked against pycocotools."""
import math

import numpy as np
import pytest
import torch

from pydet import ops
from pydet.reference import paste_masks as ref
from tests.conftest import CUDA, SEEDS
from tests.ops.test_paste_masks import _random_case as paste_case

mask_utils = pytest.importorskip("pycocotools.mask")


def _random_case(seed, n=16, image=(90, 110), dtype=torch.float32):
    """paste_masks' test case (boxes inside, partly and wholly outside, sub-pixel, covering the image)
    with a box over the bottom-left corner too."""
    masks, boxes = paste_case(seed, n=n, image=image, dtype=torch.float64)
    height = image[0]
    boxes[3] = torch.tensor([-8.0, height - 12.0, 15.0, height + 9.0])
    return masks.to(dtype), boxes.to(dtype)


def _pycocotools_rles(binary):
    """pycocotools' RLEs of bool ``[N, H, W]`` masks, counts as str."""
    fortran = np.asfortranarray(binary.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in mask_utils.encode(fortran)]


def _decode(rles):
    """bool ``[N, H, W]`` masks decoded by pycocotools."""
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles])
    return torch.from_numpy(decoded).permute(2, 0, 1).bool()


def _assert_matches_paste_masks(masks, boxes, image_shape, threshold=0.5):
    rles = ops.paste_masks_rle(masks, boxes, image_shape, threshold)
    expected = ops.paste_masks(masks, boxes, image_shape, threshold).cpu()
    assert isinstance(rles, list) and len(rles) == masks.shape[0]
    assert all(set(r) == {"size", "counts"} and r["size"] == list(image_shape) and isinstance(r["counts"], str)
               for r in rles)
    assert rles == _pycocotools_rles(expected)
    if rles and expected[0].numel() > 0:
        assert torch.equal(_decode(rles), expected)
    return rles, expected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_paste_masks_and_pycocotools(seed, dtype, device):
    masks, boxes = _random_case(seed, dtype=dtype)
    _, expected = _assert_matches_paste_masks(masks.to(device), boxes.to(device), (90, 110))
    assert expected[0].any() and not expected[1].any()  # the case covers what it claims


@pytest.mark.parametrize("threshold", [0.05, 0.5, 1.0, 1.5])
def test_thresholds(threshold, device):
    masks, boxes = _random_case(7)
    masks[4] = torch.round(masks[4] * 4) / 4  # values exactly on the thresholds 0.5 and 1.0
    masks[5] = 1.0
    _, expected = _assert_matches_paste_masks(masks.to(device), boxes.to(device), (90, 110), threshold)
    assert expected[5].any() == (threshold <= 1.0)


def test_empty_full_and_single_pixel_masks(device):
    height, width = 40, 30
    masks = torch.rand(8, 28, 28)
    masks[0] = 0.0  # below any threshold: the RLE is one run of zeros
    masks[1:] = 1.0
    boxes = torch.tensor([
        [5.0, 5.0, 20.0, 20.0],
        [-10.0, -10.0, width + 10.0, height + 10.0],  # every pixel set: counts 0, H * W
        [0.0, 0.0, 1.0, 1.0],  # the first pixel: the RLE starts with a 0-length run of zeros
        [width - 1.0, height - 1.0, width, height],  # the last pixel: it ends with a run of ones
        [12.0, 7.0, 13.0, 8.0],  # a 1-pixel box
        [12.0, 7.0, 12.5, 7.5],
        [29.5, 3.0, 31.0, 39.5],  # a sliver on the right edge
        [0.0, 39.0, 30.0, 40.0],  # one row at the bottom
    ])
    rles, expected = _assert_matches_paste_masks(masks.to(device), boxes.to(device), (height, width))
    assert not expected[0].any() and rles[0]["counts"] == ref.rle_string([height * width])
    assert expected[1].all() and rles[1]["counts"] == ref.rle_string([0, height * width])
    assert expected[2, 0, 0] and rles[2]["counts"].startswith("0")
    assert expected[3, -1, -1] and expected[4].any() and expected[6].any() and expected[7].any()


def test_degenerate_and_non_finite_boxes_give_empty_masks(device):
    nan, inf = math.nan, math.inf
    boxes = torch.tensor([
        [10.0, 10.0, 10.0, 30.0],  # zero width
        [10.0, 30.0, 30.0, 10.0],  # y1 < y0
        [30.0, 10.0, 10.0, 30.0],  # x1 < x0
        [nan, 10.0, 30.0, 30.0],
        [10.0, 10.0, 30.0, nan],
        [-inf, 10.0, 30.0, 30.0],
        [10.0, 10.0, inf, 30.0],
        [5.0, 5.0, 25.0, 25.0],  # a normal box among them still pastes
    ])
    masks = torch.ones(8, 4, 4)
    rles, expected = _assert_matches_paste_masks(masks.to(device), boxes.to(device), (40, 40))
    assert all(r["counts"] == ref.rle_string([1600]) for r in rles[:7]) and expected[7].any()


def test_boxes_outside_the_image(device):
    masks = torch.ones(4, 28, 28)
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [60.0, 5.0, 90.0, 30.0],
                          [-20.0, 10.0, 8.0, 30.0], [20.0, 35.0, 40.0, 70.0]])
    _, expected = _assert_matches_paste_masks(masks.to(device), boxes.to(device), (40, 50))
    assert not expected[:2].any() and expected[2:].any()


def test_empty_inputs(device):
    masks = torch.zeros(0, 28, 28, device=device)
    assert ops.paste_masks_rle(masks, torch.zeros(0, 4, device=device), (40, 50)) == []
    one = torch.rand(2, 28, 28, device=device)
    boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0]] * 2, device=device)
    for image in [(0, 50), (40, 0), (0, 0)]:
        assert ops.paste_masks_rle(one, boxes, image) == _pycocotools_rles(torch.zeros(2, *image, dtype=torch.bool))


def test_large_image_with_realistic_boxes(device):
    g = torch.Generator().manual_seed(3)
    height, width = 1500, 2100
    masks = torch.rand(30, 28, 28, generator=g)
    xy = torch.rand(30, 2, generator=g) * torch.tensor([width + 100.0, height + 100.0]) - 100
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 600 + 1], dim=1)
    _assert_matches_paste_masks(masks.to(device), boxes.to(device), (height, width))


def test_huge_image_costs_only_the_box_areas(device):
    # 60000 x 60000 bool masks would take 3.6 GB each; the RLEs take the boxes' pixels only. All the
    # boxes end left of x = 260, so the same masks pasted on a 260-pixel-wide image are the check.
    g = torch.Generator().manual_seed(10)
    masks = torch.rand(3, 28, 28, generator=g)
    boxes = torch.tensor([[10.5, 59_800.0, 250.0, 59_990.5], [100.0, 100.0, 200.0, 300.0],
                          [-20.0, 30_000.0, 120.0, 30_200.0]])
    rles = ops.paste_masks_rle(masks.to(device), boxes.to(device), (60_000, 60_000))
    narrow = ops.paste_masks(masks, boxes, (60_000, 260))
    coco = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    assert mask_utils.area(coco).tolist() == narrow.sum(dim=(1, 2)).tolist()
    for bbox, mask in zip(mask_utils.toBbox(coco).tolist(), narrow):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_non_contiguous_channel_dimension_and_mixed_dtypes(device):
    masks, boxes = _random_case(2, dtype=torch.float64)
    strided_masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
    strided_boxes = boxes.t().contiguous().t()
    assert not strided_masks.is_contiguous() and not strided_boxes.is_contiguous()
    expected = ops.paste_masks_rle(masks, boxes, (90, 110))
    assert ops.paste_masks_rle(strided_masks.to(device), strided_boxes.to(device), (90, 110)) == expected
    assert ops.paste_masks_rle(masks[:, None].to(device), boxes.to(device), (90, 110)) == expected
    _assert_matches_paste_masks(masks.float().to(device), boxes.to(device), (90, 110))  # float64 boxes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_masks(dtype, device):
    masks, boxes = _random_case(4)
    _assert_matches_paste_masks(masks.to(dtype).to(device), boxes.to(device), (90, 110))


def test_many_masks_in_parallel():
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(500, 7, 7, generator=g)
    xy = torch.rand(500, 2, generator=g) * 40 - 5
    boxes = torch.cat([xy, xy + torch.rand(500, 2, generator=g) * 20 + 0.5], dim=1)
    _assert_matches_paste_masks(masks, boxes, (40, 45))


def test_matches_the_reference_encoder():
    # The float64 reference pastes with its own arithmetic: equal RLEs where no pixel is near 0.5.
    masks, boxes = _random_case(6, dtype=torch.float64)
    masks = torch.where((masks - 0.5).abs() < 0.05, masks + 0.1, masks)
    expected_probs = ref.paste_masks(masks, boxes, (90, 110), threshold=None)
    if ((expected_probs - 0.5).abs() < 1e-9).any():
        pytest.fail("the case has a pixel on the threshold")
    assert ops.paste_masks_rle(masks, boxes, (90, 110)) == ref.paste_masks_rle(masks, boxes, (90, 110))


@pytest.mark.parametrize("shape", [(1, 1), (0, 4), (5, 0), (7, 3), (64, 48)])
def test_reference_encoder_matches_pycocotools(shape):
    # Long, short and repeated runs, including the negative deltas of the compressed string.
    g = torch.Generator().manual_seed(8)
    for density in (0.02, 0.5, 0.98):
        mask = torch.rand(*shape, generator=g) < density
        if mask.numel() > 4:
            mask[:, : shape[1] // 3] = torch.rand(shape[0], 1, generator=g) < 0.5
        assert ref.rle_encode(mask) == _pycocotools_rles(mask[None])[0]


GOOD_ARGS = {"masks": torch.rand(2, 5, 5), "boxes": torch.zeros(2, 4), "image_shape": (9, 9)}


@pytest.mark.parametrize("bad, match", [
    ({"masks": torch.rand(2, 5)}, "masks"),
    ({"masks": torch.rand(2, 3, 5, 5)}, "masks"),
    ({"masks": torch.rand(2, 5, 5).long()}, "masks"),
    ({"masks": torch.rand(2, 0, 5)}, "masks"),
    ({"boxes": torch.zeros(2, 5)}, "boxes"),
    ({"boxes": torch.zeros(2, 4).int()}, "boxes"),
    ({"boxes": [[0, 0, 1, 1]] * 2}, "boxes"),
    ({"boxes": torch.zeros(3, 4)}, "same length"),
    ({"image_shape": (9,)}, "image_shape"),
    ({"image_shape": (-1, 9)}, "image_shape"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": math.nan}, "threshold"),
    ({"threshold": None}, "threshold"),
])
def test_bad_arguments_raise_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.paste_masks_rle(**{**GOOD_ARGS, **bad})


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="boxes"):
        ops.paste_masks_rle(torch.rand(2, 5, 5, device="cuda"), torch.zeros(2, 4), (9, 9))


@pytest.mark.parametrize("masks, boxes, width, threshold, match", [
    (torch.rand(2, 1, 5, 5), torch.zeros(2, 4), 9, 0.5, "masks"),
    (torch.rand(2, 5, 5), torch.zeros(1, 4), 9, 0.5, "same length"),
    (torch.rand(2, 5, 5), torch.zeros(2, 4), 9, 0.0, "threshold"),
    (torch.rand(2, 5, 5), torch.zeros(2, 4), -9, 0.5, "non-negative"),
])
def test_kernel_checks_arguments_without_the_wrapper(masks, boxes, width, threshold, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.pydet.paste_masks_rle(masks, boxes, 9, width, threshold)


def test_kernel_outputs(device):
    masks, boxes = _random_case(0, n=4, image=(20, 24))
    chars, offsets = torch.ops.pydet.paste_masks_rle(masks.to(device), boxes.to(device), 20, 24, 0.5)
    assert chars.dtype == torch.uint8 and offsets.dtype == torch.int64 and offsets.shape == (5,)
    assert chars.device.type == "cpu" and offsets.device.type == "cpu"  # host strings on any device
    assert offsets[0] == 0 and offsets[-1] == chars.numel() and (offsets.diff() > 0).all()
    torch.library.opcheck(torch.ops.pydet.paste_masks_rle, (masks.to(device), boxes.to(device), 20, 24, 0.5))


def test_coco_records_of_box_relative_masks():
    # `pydet eval` (and `detect`) records: box-relative masks go straight to RLE and give the records that
    # the same masks pasted first give.
    from pydet.engine import LabelMap
    from pydet.engine.evaluate import detections_to_coco

    masks, boxes = _random_case(9, n=6, image=(64, 80))
    detection = {"boxes": boxes, "scores": torch.linspace(1, 0.5, 6), "labels": torch.tensor([1, 2, 1, 0, 2, 1]),
                 "masks": masks[:, None]}
    label_map = LabelMap([{"id": 5, "name": "a"}, {"id": 7, "name": "b"}], [1, 2])
    pasted = dict(detection, masks=ops.paste_masks(masks, boxes, (64, 80), threshold=None)[:, None])
    records = detections_to_coco(detection, 3, label_map, True, image_size=(64, 80))
    assert len(records) == 5  # label 0 maps to no category
    assert records == detections_to_coco(pasted, 3, label_map, True, image_size=(64, 80))
    assert [r["segmentation"] for r in records] == ops.paste_masks_rle(masks[[0, 1, 2, 4, 5]], boxes[[0, 1, 2, 4, 5]],
                                                                     (64, 80))
