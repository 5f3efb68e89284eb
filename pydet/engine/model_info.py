"""What the engine needs to know about a model by its registry name, and the label conversions.

Datasets give labels ``0..K-1``; models differ: the R-CNN family reserves 0 for the background
(torchvision's convention), YOLOv7 and CenterMask2 use ``0..num_classes-1``. :class:`LabelMap` turns
dataset labels into model labels and model labels into dataset labels and COCO category ids.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

_RCNN_PREFIXES = ("faster_rcnn", "mask_rcnn")
_MASK_PREFIXES = ("mask_rcnn", "centermask2")


def model_info(name: str) -> tuple[bool, int]:
    """``(has_masks, label_offset)`` of the registered model ``name``."""
    return name.startswith(_MASK_PREFIXES), 1 if name.startswith(_RCNN_PREFIXES) else 0


def is_yolo(name: str) -> bool:
    return name.startswith("yolo")


class LabelMap:
    """Dataset label ``i`` (``0..K-1``) is model label ``model_labels[i]`` and category ``categories[i]``.

    ``for_model`` gives the usual maps: ``i + label_offset``, or for R-CNN weights trained on COCO's 91-id
    layout (torchvision's pretrained models) the category id itself.
    """

    def __init__(self, categories: Sequence[dict], model_labels: Sequence[int]):
        if len(categories) != len(model_labels):
            raise ValueError("categories and model_labels must have the same length")
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
        self.model_labels = [int(v) for v in model_labels]
        self.num_model_classes = max(self.model_labels) + 1 if self.model_labels else 0
        self._to_model = torch.tensor(self.model_labels, dtype=torch.int64)
        to_dataset = torch.full((self.num_model_classes,), -1, dtype=torch.int64)
        to_dataset[self._to_model] = torch.arange(len(self.model_labels))
        self._to_dataset = to_dataset

    @classmethod
    def for_model(cls, name: str, categories: Sequence[dict], coco_ids: bool = False) -> "LabelMap":
        offset = model_info(name)[1]
        if coco_ids and offset:
            return cls(categories, [c["id"] for c in categories])
        return cls(categories, [i + offset for i in range(len(categories))])

    def to_model(self, labels: Tensor) -> Tensor:
        return self._to_model.to(labels.device)[labels]

    def to_dataset(self, model_labels: Tensor) -> Tensor:
        """Dataset labels; -1 for model labels that no category maps to (e.g. the background)."""
        table = self._to_dataset.to(model_labels.device)
        inside = (model_labels >= 0) & (model_labels < len(table))
        return torch.where(inside, table[model_labels.clamp(0, len(table) - 1)], -1)

    def category_ids(self, dataset_labels: Tensor) -> list[int]:
        return [self.categories[i]["id"] for i in dataset_labels.tolist()]

    def names(self, dataset_labels: Tensor) -> list[str]:
        return [self.categories[i]["name"] for i in dataset_labels.tolist()]

    def state(self) -> dict:
        return {"categories": self.categories, "model_labels": self.model_labels}


def default_num_classes(name: str) -> int:
    """The factories' default: COCO's 91-id layout for R-CNN, its 80 categories otherwise."""
    return 91 if model_info(name)[1] else 80


def input_size_kwargs(name: str, size: int) -> dict:
    """Build arguments that make ``name`` work on images of about ``size`` pixels instead of its COCO size."""
    if is_yolo(name):
        return {"img_size": max(32, -(-int(size) // 32) * 32)}
    return {"min_size": int(size), "max_size": int(size) * 1333 // 800}


def default_label_map(name: str, num_classes: int) -> LabelMap:
    """COCO's categories for models with COCO's class count, numbered classes otherwise."""
    from ..data.coco import COCO_CATEGORIES

    offset = model_info(name)[1]
    if num_classes == default_num_classes(name):
        return LabelMap.for_model(name, COCO_CATEGORIES, coco_ids=True)
    return LabelMap.for_model(name, [{"id": i + 1, "name": f"class{i + 1}"} for i in range(num_classes - offset)])


def build_model(name: str, weights: str | None = None, **overrides):
    """``(model, label_map, meta)``: ``name`` built as the weights file describes (pydet checkpoints store
    the build arguments and categories), then loaded strictly.

    Weights that are not in pydet's layout go through the matching :mod:`pydet.convert` function:
    detectron2 R-CNN and CenterMask2 checkpoints are recognised by their keys (a detectron2 R-CNN builds
    the model with ``style="detectron2"`` and the checkpoint's class count), torchvision R-CNN and
    official YOLOv7 state dicts by the model name. Without weights the model is randomly initialised.
    """
    from .. import models
    from .checkpoint import read_weights

    state, meta = read_weights(weights) if weights is not None else ({}, {})
    state, build_kwargs = convert_detectron2_family(name, weights, state)
    kwargs = {**meta.get("model_kwargs", {}), **build_kwargs, **overrides}
    kwargs.setdefault("num_classes", default_num_classes(name))
    model = models.build(name, **kwargs)
    if "categories" in meta:
        label_map = LabelMap(meta["categories"], meta["model_labels"])
    elif build_kwargs.get("style") == "detectron2" and kwargs["num_classes"] == 81:
        from ..data.coco import COCO_CATEGORIES  # detectron2's COCO classes are the 80 categories in id order
        label_map = LabelMap.for_model(name, COCO_CATEGORIES)
    else:
        label_map = default_label_map(name, kwargs["num_classes"])
    if weights is None:
        return model, label_map, meta
    if set(state) != set(model.state_dict()) and not build_kwargs:
        state = _convert_by_name(name, state)
    load_fitting_weights(model, state, f"{weights}: weights do not fit {name}")
    return model, label_map, meta


def convert_detectron2_family(name: str, weights, state: dict) -> tuple[dict, dict]:
    """Convert a detectron2 R-CNN or CenterMask2 checkpoint (recognised by its keys) for ``name``; returns
    the state dict and the build arguments the checkpoint implies. Other state dicts pass unchanged."""
    from .. import convert
    from ..convert.detectron2 import is_detectron2_rcnn
    from ..data.video import InputError

    if any(k.startswith("proposal_generator.fcos_head.") for k in state):
        if not name.startswith("centermask2"):
            raise InputError(f"{weights}: a CenterMask2 checkpoint; use --model centermask2, not {name}")
        converter = getattr(convert, "from_centermask2", None)
        if converter is None:
            raise InputError(f"{weights}: a CenterMask2 checkpoint, but this pydet has no "
                             "pydet.convert.from_centermask2")
        kind, kwargs = "CenterMask2", {}
    elif is_detectron2_rcnn(state):
        if not name.startswith(_RCNN_PREFIXES):
            raise InputError(f"{weights}: a detectron2 R-CNN checkpoint; use --model faster_rcnn_resnet50_fpn or "
                             f"mask_rcnn_resnet50_fpn, not {name}")
        converter, kind = convert.from_detectron2, "detectron2 R-CNN"
        classes = state.get("roi_heads.box_predictor.cls_score.weight")
        kwargs = {"style": "detectron2", **({"num_classes": int(classes.shape[0])} if classes is not None else {})}
    else:
        return state, {}
    try:
        return converter(state), kwargs
    except (KeyError, ValueError) as exc:
        raise InputError(f"{weights}: cannot convert this {kind} checkpoint ({exc})") from None


def _convert_by_name(name: str, state: dict) -> dict:
    """torchvision R-CNN or official YOLOv7 naming; the state dict unchanged when it is neither."""
    from .. import convert

    if name.startswith("centermask2"):
        return state
    try:
        return (convert.from_yolov7 if is_yolo(name) else convert.from_torchvision)(state)
    except (KeyError, ValueError, RuntimeError):
        return state


def load_fitting_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with one-line errors (``InputError`` starting with ``what``): the
    missing and unexpected keys, or the first key whose shape differs, with both shapes."""
    from ..data.video import InputError

    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{what}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                         f"{unexpected[:3]}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(f"{what}: {key} has shape {tuple(state[key].shape)} in the weights, "
                             f"{tuple(value.shape)} in the model")
    model.load_state_dict(state)
