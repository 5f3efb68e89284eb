import json

import numpy as np
import pytest
import torch

# The coco and video extras (`pip install .[coco,video]`); `make test` installs them.
Image = pytest.importorskip("PIL.Image")
mask_utils = pytest.importorskip("pycocotools.mask")

from pydet.data.coco import AnnotationError, CocoDetection, load_coco
from pydet.errors import InputError
from pydet.engine.evaluate import coco_evaluate


def make_coco(tmp_path, annotations=None):
    """Two 40x60 images; categories with non-contiguous ids 3 and 7."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(images / name)
    block = np.zeros((40, 60), np.uint8, order="F")
    block[10:20, 30:50] = 1
    compressed = mask_utils.encode(block)
    compressed["counts"] = compressed["counts"].decode()
    # uncompressed RLE: column-major runs of 0s and 1s alternating, 0s first; rows 5..14 of columns 10..14
    runs = [10 * 40 + 5] + [10, 30] * 4 + [10]
    runs.append(40 * 60 - sum(runs))
    data = {
        "images": [{"id": 11, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 12, "file_name": "b.png", "height": 40, "width": 60}],
        "categories": [{"id": 7, "name": "square"}, {"id": 3, "name": "tri"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 11, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [30, 10, 20, 10], "iscrowd": 0,
             "segmentation": compressed},
            {"id": 3, "image_id": 12, "category_id": 7, "bbox": [10, 5, 5, 10], "iscrowd": 0,
             "segmentation": {"size": [40, 60], "counts": runs}},
            {"id": 4, "image_id": 12, "category_id": 3, "bbox": [40, 0, 20, 40], "iscrowd": 1,
             "segmentation": {"size": [40, 60], "counts": [2400]}},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, images, block


def test_boxes_labels_and_masks_from_polygons_and_rle(tmp_path):
    path, images, block = make_coco(tmp_path)
    ds = CocoDetection(path, images)
    assert len(ds) == 2 and ds.categories == [{"id": 3, "name": "tri"}, {"id": 7, "name": "square"}]
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and abs(float(image.mean()) - 128 / 255) < 1e-6
    assert target["image_id"] == 11
    assert target["labels"].tolist() == [0, 1]  # category 3 -> 0, category 7 -> 1
    assert torch.equal(target["boxes"], torch.tensor([[2, 2, 12, 12], [30, 10, 50, 20]], dtype=torch.float32))
    polygon_mask, rle_mask = target["masks"]
    assert abs(int(polygon_mask.sum()) - 100) <= 25 and polygon_mask[5, 5] == 1 and polygon_mask[30, 30] == 0
    assert torch.equal(rle_mask, torch.from_numpy(block))
    _, target = ds[1]
    # the crowd box is not a training target
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 40, 60)
    assert int(target["masks"][0].sum()) == 50 and target["masks"][0, 5:15, 10:15].all()


def test_crowd_regions_are_ignored_by_evaluation(tmp_path):
    path, images, _ = make_coco(tmp_path)
    ds = CocoDetection(path, images)
    perfect = [{"image_id": ds.image_ids[i], "category_id": ds.categories[int(l)]["id"], "score": 1.0,
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i in range(len(ds)) for b, l in zip(ds.target(i)["boxes"], ds.target(i)["labels"])]
    # a detection on the crowd region neither counts as a false positive nor as a miss
    perfect.append({"image_id": 12, "category_id": 3, "score": 0.9, "bbox": [40, 0, 20, 40]})
    assert coco_evaluate(ds.coco, perfect, print_table=False)["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad,message", [
    ({"id": 9, "image_id": 11, "category_id": 3, "iscrowd": 0}, r"annotations\[0\] \(id 9\): bbox"),
    ({"id": 9, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]}, r"annotations\[0\] \(id 9\): image_id 99"),
    ({"id": 9, "image_id": 11, "category_id": 5, "bbox": [0, 0, 1, 1]}, r"annotations\[0\] \(id 9\): category_id 5"),
    ({"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, 0, 1, 1], "segmentation": [[1, 2, 3]]},
     r"annotations\[0\] \(id 9\): segmentation polygon 0"),
    ({"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, 0, 1, 1],
      "segmentation": {"size": [4, 4], "counts": "abc"}}, r"annotations\[0\] \(id 9\): RLE size"),
    ({"id": 9, "image_id": 11, "category_id": 3, "bbox": [0, 0, -1, 1]}, r"annotations\[0\] \(id 9\): bbox"),
])
def test_malformed_annotation_names_file_and_record(tmp_path, bad, message):
    path, images, _ = make_coco(tmp_path, annotations=[bad])
    with pytest.raises(AnnotationError, match=str(path).replace(".", r"\.") + ": " + message):
        CocoDetection(path, images)


def test_unreadable_annotation_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON"):
        load_coco(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": [{"id": 1}], "categories": []}))
    with pytest.raises(AnnotationError, match=r"wrong\.json: images\[0\] \(id 1\): needs a string 'file_name'"):
        load_coco(wrong)
    with pytest.raises(InputError, match=r"missing\.json: no such file"):
        load_coco(tmp_path / "missing.json")
