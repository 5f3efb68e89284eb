"""COCO mAP with pycocotools: box AP, and mask AP for mask models.

Ground truth is the dataset's own COCO object when it has one (``CocoDetection``, crowd regions
included), otherwise it is built in memory from the dataset's targets while the model runs.
"""
from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import ops
from ..data.coco import coco_from_dict
from .model_info import LabelMap
from .train import collate, default_device

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def encode_masks(masks: Tensor) -> list[dict]:
    """COCO RLEs (``counts`` as str, JSON-ready) of binary ``[N, H, W]`` masks."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).cpu().numpy()))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_rles(masks: Tensor, boxes: Tensor, image_size: tuple[int, int] | None = None) -> list[dict]:
    """COCO RLEs of detections' mask probabilities ``[D, 1, h, w]``, kept where >= 0.5.

    Masks of the image's size are already pasted; box-relative ones (``[D, 1, M, M]`` of another size,
    as the deployment module returns them) are pasted into their boxes straight to RLE, without
    full-frame masks. Without ``image_size`` the masks are taken as pasted.
    """
    masks = masks[:, 0]
    if image_size is not None and tuple(masks.shape[-2:]) != tuple(image_size):
        return ops.paste_masks_rle(masks, boxes, image_size)
    return encode_masks(masks >= 0.5)


def detections_to_coco(detection: dict, image_id: int, label_map: LabelMap, with_masks: bool,
                       score_threshold: float = 0.0, image_size: tuple[int, int] | None = None) -> list[dict]:
    """COCO result records (``bbox`` as ``[x, y, w, h]``) of one image's model output (``image_size``:
    see :func:`mask_rles`)."""
    scores = detection["scores"]
    labels = label_map.to_dataset(detection["labels"])
    keep = (scores >= score_threshold) & (labels >= 0)
    boxes, scores, labels = detection["boxes"][keep], scores[keep], labels[keep]
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    records = [{"image_id": int(image_id), "category_id": cid, "bbox": [round(v, 2) for v in box],
                "score": round(float(s), 5)}
               for box, s, cid in zip(xywh, scores.tolist(), label_map.category_ids(labels))]
    if with_masks:
        for record, rle in zip(records, mask_rles(detection["masks"][keep], boxes, image_size)):
            record["segmentation"] = rle
    return records


def ground_truth_records(target: dict, image_id: int, image_size: tuple[int, int], categories: list[dict],
                         first_ann_id: int) -> tuple[dict, list[dict]]:
    """The COCO ``images`` entry and ``annotations`` of one dataset target (labels ``0..K-1``)."""
    h, w = image_size
    boxes = target["boxes"].double()
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    masks = target.get("masks")
    rles = encode_masks(masks) if masks is not None else [None] * len(xywh)
    anns = []
    for k, (box, label, rle) in enumerate(zip(xywh, target["labels"].tolist(), rles)):
        ann = {"id": first_ann_id + k, "image_id": int(image_id), "category_id": categories[label]["id"],
               "bbox": box, "area": float(masks[k].sum()) if rle is not None else box[2] * box[3], "iscrowd": 0}
        if rle is not None:
            ann["segmentation"] = rle
        anns.append(ann)
    return {"id": int(image_id), "height": int(h), "width": int(w)}, anns


def coco_evaluate(ground_truth, results: list[dict], iou_types: tuple[str, ...] = ("bbox",),
                  print_table: bool = True) -> dict[str, dict[str, float]]:
    """pycocotools' COCOeval for each of ``iou_types``; returns ``{iou_type: {"AP": ..., "AP50": ...}}``."""
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    quiet = contextlib.redirect_stdout(io.StringIO())
    for iou_type in iou_types:
        with quiet:
            if results:
                detections = ground_truth.loadRes([dict(r) for r in results])
            else:  # loadRes cannot take an empty list; nothing detected is a valid (zero) result
                detections = coco_from_dict({"images": ground_truth.dataset["images"],
                                             "categories": ground_truth.dataset["categories"], "annotations": []})
            evaluator = COCOeval(ground_truth, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
        if print_table:
            print(f"IoU metric: {iou_type}")
            evaluator.summarize()
        else:
            with quiet:
                evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
    return metrics


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, *, label_offset: int = 0, label_map: LabelMap | None = None,
             with_masks: bool = False, batch_size: int = 4, device: str | torch.device | None = None,
             num_workers: int = 0, progress: bool = True, print_table: bool = True) -> dict[str, dict[str, float]]:
    """COCO mAP of ``model`` on ``dataset``: ``{"bbox": {...}, "segm": {...}}`` (``segm`` with ``with_masks``).

    Model labels map to dataset labels by ``label_map``, by default ``dataset label + label_offset``.
    """
    from tqdm import tqdm

    categories = getattr(dataset, "categories", None)
    if label_map is None:
        if categories is None:
            raise ValueError("the dataset has no 'categories'; pass a label_map")
        label_map = LabelMap(categories, [i + label_offset for i in range(len(categories))])
    device = torch.device(device) if device is not None else default_device()
    known_gt = getattr(dataset, "coco", None)
    images, annotations, results = [], [], []
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    try:
        for batch, targets in tqdm(loader, desc="eval", file=sys.stderr, disable=not progress, dynamic_ncols=True):
            outputs = model([img.to(device) for img in batch])
            for image, target, output in zip(batch, targets, outputs):
                image_id = target["image_id"]
                results += detections_to_coco({k: v.cpu() for k, v in output.items()}, image_id, label_map,
                                              with_masks, image_size=tuple(image.shape[-2:]))
                if known_gt is None:
                    info, anns = ground_truth_records(target, image_id, tuple(image.shape[-2:]), label_map.categories,
                                                      len(annotations) + 1)
                    images.append(info)
                    annotations += anns
    finally:
        model.train(was_training)
    ground_truth = known_gt or coco_from_dict({"images": images, "annotations": annotations,
                                               "categories": label_map.categories})
    return coco_evaluate(ground_truth, results, ("bbox", "segm") if with_masks else ("bbox",), print_table)
