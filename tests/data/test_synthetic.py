import numpy as np
import pytest
import torch

from pydet.data import SHAPES, SyntheticShapes, read_video, write_synthetic_video
from tests.conftest import requires_av


def tight_box(mask):
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def test_items_are_deterministic_whatever_the_access_order():
    a, b = SyntheticShapes(6, 64, seed=3), SyntheticShapes(6, 64, seed=3)
    first = [a[i] for i in range(6)]
    for i in reversed(range(6)):
        image, target = b[i]
        assert torch.equal(image, first[i][0])
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(target[key], first[i][1][key])
    other = SyntheticShapes(6, 64, seed=4)[0][0]
    assert not torch.equal(other, first[0][0])


@pytest.mark.parametrize("size,num_classes", [(64, 3), ((48, 80), 5)])
def test_masks_agree_with_boxes_and_labels(size, num_classes):
    ds = SyntheticShapes(12, size, num_classes=num_classes, seed=1)
    h, w = ds.image_size
    seen = set()
    for image, target in ds:
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert len(boxes) >= 1 and boxes.shape == (len(labels), 4) and masks.shape == (len(labels), h, w)
        assert labels.dtype == torch.int64 and masks.dtype == torch.uint8
        assert ((labels >= 0) & (labels < num_classes)).all()
        for box, mask in zip(boxes, masks):
            assert torch.equal(tight_box(mask.bool()), box)
        # instances do not overlap
        assert masks.sum(0).max() <= 1
        seen.update(labels.tolist())
    assert len(seen) > 1
    assert [c["name"] for c in ds.categories] == list(SHAPES[:num_classes])


def test_shapes_stand_out_from_the_background():
    image, target = SyntheticShapes(1, 96, seed=5)[0]
    inside = target["masks"].bool().any(0)
    assert inside.any() and (~inside).any()
    inside_mean, outside_mean = image[:, inside].mean(1), image[:, ~inside].mean(1)
    assert (inside_mean - outside_mean).norm() > 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(4, 64, num_classes=9)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticShapes(4, 8)
    with pytest.raises(IndexError):
        SyntheticShapes(4, 64)[4]


@requires_av
def test_synthetic_video_roundtrip(tmp_path):
    path = tmp_path / "clip.mp4"
    write_synthetic_video(path, num_frames=12, image_size=(64, 96), fps=10, seed=2)
    frames = list(read_video(path))
    assert [f.index for f in frames] == list(range(12))
    assert all(f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8 for f in frames)
    # the shapes move: consecutive frames differ by more than the noise
    assert np.abs(frames[0].image.astype(int) - frames[-1].image.astype(int)).mean() > 2


def test_read_image_gives_a_writable_array(tmp_path):
    import warnings

    import numpy as np
    import torch

    from pydet.data.video import read_image

    Image = pytest.importorskip("PIL.Image")
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(path)
    image = read_image(path)
    assert image.shape == (4, 6, 3) and image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(image)
