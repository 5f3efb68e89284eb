"""Label conversions between datasets and models, and building a registered model from a weights file.

Datasets give labels ``0..K-1``; models differ (their :class:`~pydet.models.ModelSpec` says how): the R-CNN
family reserves 0 for the background (torchvision's convention), YOLOv7 and CenterMask2 use
``0..num_classes-1``. :class:`LabelMap` turns dataset labels into model labels and model labels into
dataset labels and COCO category ids.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import models
from ..errors import InputError

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
        to_dataset = torch.full((self.num_model_classes,), -1, dtype=torch.int64)
        to_dataset[torch.tensor(self.model_labels, dtype=torch.int64)] = torch.arange(len(self.model_labels))
        self._to_dataset = to_dataset

    @classmethod
    def for_model(cls, name: str, categories: Sequence[dict], coco_ids: bool = False) -> "LabelMap":
        offset = models.spec(name).label_offset
        if coco_ids and offset:
            return cls(categories, [c["id"] for c in categories])
        return cls(categories, [i + offset for i in range(len(categories))])

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


def default_label_map(name: str, num_classes: int) -> LabelMap:
    """COCO's categories for models with COCO's class count, numbered classes otherwise."""
    from ..data.coco import COCO_CATEGORIES

    spec = models.spec(name)
    offset = spec.label_offset
    if num_classes == spec.num_classes:
        return LabelMap.for_model(name, COCO_CATEGORIES, coco_ids=True)
    if num_classes == len(COCO_CATEGORIES) + offset:  # COCO's 80 categories in id order (detectron2's layout)
        return LabelMap.for_model(name, COCO_CATEGORIES)
    return LabelMap.for_model(name, [{"id": i + 1, "name": f"class{i + 1}"} for i in range(num_classes - offset)])


def _recognised_converter(name: str, weights, state: dict):
    """The converter of ``name``'s spec that recognises ``state`` by its keys (None if none does). A checkpoint
    that only other models' converters recognise is an error naming those models."""
    for converter in models.spec(name).converters:
        if converter.recognise is not None and converter.recognise(state):
            return converter
    for other in models.available():
        for converter in models.spec(other).converters:
            if converter.recognise is not None and converter.recognise(state):
                takers = [n for n in models.available() if converter in models.spec(n).converters]
                raise InputError(f"{weights}: a {converter.name} checkpoint; use --model "
                                 f"{' or '.join(takers)}, not {name}")
    return None


def _convert(name: str, weights, state: dict, recognised) -> dict:
    """``state`` in ``name``'s layout: through the recognised converter, else through the first of the spec's
    other converters that takes it; unchanged when none does."""
    if recognised is not None:
        try:
            return recognised.convert(state)
        except (KeyError, ValueError) as exc:
            raise InputError(f"{weights}: cannot convert this {recognised.name} checkpoint ({exc})") from None
    for converter in models.spec(name).converters:
        if converter.recognise is None:
            try:
                return converter.convert(state)
            except (KeyError, ValueError, RuntimeError):
                continue
    return state


def build_model(name: str, weights: str | None = None, **overrides):
    """``(model, label_map, meta)``: ``name`` built as the weights file describes (pydet checkpoints store
    the build arguments and categories), then loaded strictly.

    Weights that are not in pydet's layout go through the model's converters (its spec's): those that tell
    a layout by its keys (detectron2 R-CNN, CenterMask2) may also set build arguments (detectron2's
    ``style="detectron2"`` and class count); the others (torchvision R-CNN, official YOLOv7) are tried in
    turn. Without weights the model is randomly initialised.
    """
    from .checkpoint import read_weights

    name = models.canonical_name(name)
    state, meta = read_weights(weights) if weights is not None else ({}, {})
    saved = meta.get("model")
    if saved is None or models.canonical_name(saved) == name:
        return _build_and_load(name, weights, state, meta, overrides)
    try:  # another model's checkpoint: fine when it fits (e.g. yolov7_tiny weights for yolov7_tiny_320)
        return _build_and_load(name, weights, state, meta, overrides)
    except (TypeError, InputError):
        raise InputError(f"{weights}: a checkpoint of {saved}, which {name} cannot load; "
                         f"use --model {saved}") from None


def _build_and_load(name: str, weights, state: dict, meta: dict, overrides: dict):
    recognised = _recognised_converter(name, weights, state) if weights is not None else None
    implied = recognised.build_kwargs(state) if recognised is not None else {}
    kwargs = {**meta.get("model_kwargs", {}), **implied, **overrides}
    kwargs.setdefault("num_classes", models.spec(name).num_classes)
    model = models.build(name, **kwargs)
    if "categories" in meta:
        label_map = LabelMap(meta["categories"], meta["model_labels"])
    else:
        label_map = default_label_map(name, kwargs["num_classes"])
    if weights is None:
        return model, label_map, meta
    if set(state) != set(model.state_dict()):
        state = _convert(name, weights, state, recognised)
    load_fitting_weights(model, state, f"{weights}: weights do not fit {name}")
    return model, label_map, meta


def load_fitting_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with one-line errors (``InputError`` starting with ``what``): the
    missing and unexpected keys, or the first key whose shape differs, with both shapes."""
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
