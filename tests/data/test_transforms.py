import pytest
import numpy as np
import torch

from pydet import ops
from pydet.data import SyntheticShapes
from pydet.data.transforms import Compose, Mosaic, RandomHorizontalFlip, RandomScaleJitter, mask_extents


def tight_boxes(masks):
    out = []
    for mask in masks.bool():
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


@pytest.fixture
def sample():
    return SyntheticShapes(1, (48, 64), seed=7)[0]


def test_flip_moves_boxes_with_masks(sample):
    image, target = sample
    flipped_image, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.equal(flipped["boxes"], tight_boxes(flipped["masks"]))
    again_image, again = RandomHorizontalFlip(p=1.0)(flipped_image, flipped)
    assert torch.equal(again_image, image) and torch.equal(again["boxes"], target["boxes"])
    same_image, same = RandomHorizontalFlip(p=0.0)(image, target)
    assert same_image is image and same is target


def test_scale_jitter_scales_boxes_and_masks(sample):
    image, target = sample
    torch.manual_seed(0)
    out_image, out = RandomScaleJitter((2.0, 2.0))(image, target)
    assert out_image.shape == (3, 96, 128) and out["masks"].shape[-2:] == (96, 128)
    assert torch.equal(out["boxes"], target["boxes"] * 2)
    assert torch.equal(out["boxes"], tight_boxes(out["masks"]))
    small_image, small = RandomScaleJitter((0.5, 0.75))(image, target)
    assert 24 <= small_image.shape[1] <= 36 and small["masks"].shape[-2:] == small_image.shape[-2:]
    assert torch.equal(small["labels"], target["labels"])


def test_mosaic_combines_four_images_consistently():
    ds = Mosaic(SyntheticShapes(8, 64, seed=1, transforms=Compose([RandomHorizontalFlip()])), size=96)
    torch.manual_seed(0)
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        boxes, masks = target["boxes"], target["masks"]
        assert image.shape == (3, 96, 96) and masks.shape == (len(boxes), 96, 96) == (len(target["labels"]), 96, 96)
        assert ((boxes >= 0) & (boxes <= 96)).all() and (boxes[:, 2:] - boxes[:, :2] >= 2).all()
        # masks stay in their boxes and still fill them, up to the nearest-neighbour resampling of masks
        tight = tight_boxes(masks)
        assert (tight[:, :2] >= boxes[:, :2] - 1).all() and (tight[:, 2:] <= boxes[:, 2:] + 1).all()
        assert (ops.box_iou(tight, boxes).diagonal() > 0.8).all()
        counts.append(len(boxes))
    assert max(counts) > 4  # objects from more than one source image
    assert ds.num_classes == 3  # the wrapped dataset's attributes show through
    torch.manual_seed(0)
    plain = Mosaic(SyntheticShapes(2, 64), size=96, p=0.0)[1]
    assert torch.equal(plain[0], SyntheticShapes(2, 64)[1][0])


def test_image_to_tensor_gives_torchs_float_division_for_every_pixel_value():
    from pydet.data import image_to_tensor

    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)  # every value, every channel
    expected = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    tensor = image_to_tensor(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 16, 16)
    assert torch.equal(tensor, expected)
    assert tensor.max() == 1.0 and tensor.min() == 0.0
