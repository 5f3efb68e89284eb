import pytest
import torch

from pydet.modeling.transform import GeneralizedRCNNTransform, check_images_and_targets, resize_boxes


def test_resize_normalise_pad_and_map_back():
    t = GeneralizedRCNNTransform(min_size=800, max_size=1333).eval()
    image = torch.rand(3, 480, 640)
    target = {"boxes": torch.tensor([[10.0, 20.0, 100.0, 200.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 480, 640, dtype=torch.uint8)}
    batch, targets = t([image], [target])
    assert batch.image_sizes == [(800, 1066)]
    assert batch.tensors.shape == (1, 3, 800, 1088)  # padded to a multiple of 32
    assert targets[0]["masks"].shape == (1, 800, 1066) and targets[0]["masks"].dtype == torch.uint8
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[10 * 1066 / 640, 20 * 800 / 480,
                                                                   100 * 1066 / 640, 200 * 800 / 480]]))
    # the mean/std normalisation is applied before resizing
    mean = batch.tensors[0, :, :800, :1066].mean(dim=(1, 2))
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(mean, expected, atol=0.02, rtol=0)
    dets = t.postprocess([{"boxes": targets[0]["boxes"].clone()}], batch.image_sizes, [(480, 640)])
    torch.testing.assert_close(dets[0]["boxes"], target["boxes"], atol=1e-4, rtol=0)


def test_long_side_is_capped_and_training_draws_sizes():
    t = GeneralizedRCNNTransform(min_size=(320, 352), max_size=400).train()
    batch, _ = t([torch.rand(3, 100, 400)])
    assert batch.image_sizes == [(100, 400)]
    assert resize_boxes(torch.zeros(0, 4), (10, 10), (20, 20)).shape == (0, 4)


@pytest.mark.parametrize("images, targets, match", [
    ([], None, "non-empty"),
    ([torch.rand(1, 8, 8)], None, r"images\[0\]"),
    ([torch.zeros(3, 8, 8, dtype=torch.uint8)], None, "floating"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int32)}], "labels"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 5), "labels": torch.zeros(1, dtype=torch.int64)}], "boxes"),
    ([torch.rand(3, 8, 8)], [], "one dict per image"),
])
def test_bad_inputs(images, targets, match):
    with pytest.raises(ValueError, match=match):
        check_images_and_targets(images, targets)


def test_masks_required_when_asked():
    with pytest.raises(ValueError, match="masks"):
        check_images_and_targets([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 4),
                                                         "labels": torch.zeros(1, dtype=torch.int64)}],
                                 need_masks=True)
