"""COCO-format detection datasets (pycocotools): boxes, labels and instance masks.

The annotation file is checked record by record before use, so a malformed file fails with an
:class:`AnnotationError` naming the file and the offending record instead of a ``KeyError`` deep in
pycocotools. Labels are contiguous ``0..K-1`` in the order of increasing category id
(``dataset.categories[label]``); each model's own label convention is applied by :mod:`pydet.engine`.
Crowd annotations (``iscrowd=1``) are left out of the training targets but kept in ``dataset.coco``,
where COCO evaluation treats them as regions to ignore.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError, require_file
from .video import image_to_tensor, read_image

# The 80 COCO detection categories with their (non-contiguous) ids, as in instances_*.json.
COCO_CATEGORIES = [{"id": i, "name": n} for i, n in [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]]


class AnnotationError(InputError):
    """A malformed COCO annotation file; the message names the file and the record."""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_segmentation(seg, image: dict) -> str | None:
    """Why ``seg`` is not a valid COCO segmentation for ``image``, or None."""
    if isinstance(seg, list):
        if not seg:
            return "segmentation is an empty list"
        for k, polygon in enumerate(seg):
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or \
                    not all(_is_number(v) for v in polygon):
                return f"segmentation polygon {k} must be a list of at least 3 x, y pairs of numbers"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return "RLE segmentation needs 'size': [height, width]"
        if size != [image["height"], image["width"]]:
            return f"RLE size {size} differs from the image's [{image['height']}, {image['width']}]"
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
                return "uncompressed RLE counts must be non-negative integers summing to height * width"
            return None
        if not isinstance(counts, str):
            return "RLE segmentation needs 'counts' (a string or a list of integers)"
        return None
    return f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}"


def _check_annotation_file(path: Path, data) -> None:
    def fail(record: str, why: str):
        raise AnnotationError(f"{path}: {record}: {why}")

    if not isinstance(data, dict):
        fail("top level", f"expected a JSON object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            fail("top level", f"'{key}' must be a list")
    if not isinstance(data.setdefault("annotations", []), list):
        fail("top level", "'annotations' must be a list")
    images, categories, ann_ids = {}, set(), set()
    for i, img in enumerate(data["images"]):
        record = f"images[{i}]" + (f" (id {img.get('id')})" if isinstance(img, dict) else "")
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            fail(record, "needs an integer 'id'")
        if not isinstance(img.get("file_name"), str):
            fail(record, "needs a string 'file_name'")
        if not (_is_int(img.get("height")) and _is_int(img.get("width")) and img["height"] > 0 and img["width"] > 0):
            fail(record, "needs positive integer 'height' and 'width'")
        if img["id"] in images:
            fail(record, "duplicate image id")
        images[img["id"]] = img
    for i, cat in enumerate(data["categories"]):
        record = f"categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            fail(record, "needs an integer 'id' and a string 'name'")
        if cat["id"] in categories:
            fail(record, f"duplicate category id {cat['id']}")
        categories.add(cat["id"])
    for i, ann in enumerate(data["annotations"]):
        record = f"annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            fail(record, "needs an integer 'id'")
        if ann["id"] in ann_ids:
            fail(record, "duplicate annotation id")
        ann_ids.add(ann["id"])
        if ann.get("image_id") not in images:
            fail(record, f"image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in categories:
            fail(record, f"category_id {ann.get('category_id')!r} is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)) \
                or bbox[2] < 0 or bbox[3] < 0:
            fail(record, f"bbox must be [x, y, width, height] with width, height >= 0, got {bbox!r}")
        if ann.setdefault("iscrowd", 0) not in (0, 1):
            fail(record, f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if "segmentation" in ann:
            why = _check_segmentation(ann["segmentation"], images[ann["image_id"]])
            if why:
                fail(record, why)
        if "area" in ann and not _is_number(ann["area"]):
            fail(record, f"area must be a number, got {ann['area']!r}")
        ann.setdefault("area", float(bbox[2] * bbox[3]))


def load_coco(annotation_file: str | os.PathLike):
    """A checked ``pycocotools.coco.COCO`` for ``annotation_file``."""
    from pycocotools.coco import COCO

    path = require_file(annotation_file)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise AnnotationError(f"{path}: cannot read ({exc})") from None
    _check_annotation_file(path, data)
    return coco_from_dict(data)


def coco_from_dict(data: dict):
    """A ``COCO`` object over an in-memory annotation dict (pycocotools' index messages silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images listed in a COCO annotation file, read from ``image_dir``.

    Items are ``(image float [3, H, W] in [0, 1], target)`` with ``boxes`` float ``[M, 4]`` xyxy,
    ``labels`` int64 ``[M]`` in ``0..K-1``, ``masks`` uint8 ``[M, H, W]`` (polygons and RLE;
    annotations without segmentation get their box as mask) and ``image_id`` (the COCO id).
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                 transforms: Callable | None = None, with_masks: bool = True):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise InputError(f"{self.image_dir}: not a directory")
        self.coco = load_coco(annotation_file)
        self.image_ids = sorted(self.coco.imgs)
        self.category_ids = sorted(self.coco.cats)
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        self.transforms = transforms
        self.with_masks = with_masks

    @property
    def categories(self) -> list[dict]:
        return [{"id": cid, "name": self.coco.cats[cid]["name"]} for cid in self.category_ids]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def target(self, index: int) -> dict:
        """The training target of image ``index`` (crowd and empty boxes left out)."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, bw, bh = ann["bbox"]
            box = [max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)]
            if ann["iscrowd"] or box[2] <= box[0] or box[3] <= box[1]:
                continue
            boxes.append(box)
            labels.append(self._label_of[ann["category_id"]])
            if self.with_masks:
                if "segmentation" in ann:
                    masks.append(self.coco.annToMask(ann))
                else:
                    mask = np.zeros((h, w), dtype=np.uint8)
                    mask[int(box[1]):math.ceil(box[3]), int(box[0]):math.ceil(box[2])] = 1
                    masks.append(mask)
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64), "image_id": image_id}
        if self.with_masks:
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        return target

    def __getitem__(self, index: int):
        info = self.coco.imgs[self.image_ids[index]]
        pixels = read_image(self.image_dir / info["file_name"])
        if pixels.shape[:2] != (info["height"], info["width"]):
            raise AnnotationError(f"{self.annotation_file}: images entry id {info['id']}: says "
                                  f"{info['height']}x{info['width']}, {info['file_name']} is "
                                  f"{pixels.shape[0]}x{pixels.shape[1]}")
        image = image_to_tensor(pixels)
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
