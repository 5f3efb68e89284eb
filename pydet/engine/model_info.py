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
    return LabelMap.for_model(name, [{"id": i + 1, "name": f"class{i + 1}"} for i in range(num_classes - offset)])


def _convert(state: dict, converters) -> dict:
    """``state`` through the first converter that recognises it; unchanged when none does."""
    for converter in converters:
        try:
            return converter(state)
        except (KeyError, ValueError, RuntimeError):
            continue
    return state


def build_model(name: str, weights: str | None = None, **overrides):
    """``(model, label_map, meta)``: ``name`` built as the weights file describes (pydet checkpoints store
    the build arguments and categories), then loaded strictly.

    Weights that are not in pydet's layout go through the model's converters (its spec's: torchvision R-CNN,
    official YOLOv7, ...). Without weights the model is randomly initialised.
    """
    from ..data.video import InputError
    from .checkpoint import read_weights

    state, meta = read_weights(weights) if weights is not None else ({}, {})
    kwargs = {**meta.get("model_kwargs", {}), **overrides}
    spec = models.spec(name)
    kwargs.setdefault("num_classes", spec.num_classes)
    model = models.build(name, **kwargs)
    if "categories" in meta:
        label_map = LabelMap(meta["categories"], meta["model_labels"])
    else:
        label_map = default_label_map(name, kwargs["num_classes"])
    if weights is None:
        return model, label_map, meta
    expected = set(model.state_dict())
    if set(state) != expected:
        state = _convert(state, spec.converters)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(f"{weights}: weights do not fit {name}: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise InputError(f"{weights}: weights do not fit {name} ({first})") from None
    return model, label_map, meta
