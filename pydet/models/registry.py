"""The model registry: each name maps to a factory and a :class:`ModelSpec`, the facts that the engine, the
CLI, the benchmarks and the demo need about the model. Nothing is inferred from a model's name.

Adding a model: write its file in ``pydet/models/`` (the ``nn.Module``, its factory and its ``ModelSpec``),
then add one ``register(name, factory, spec)`` line to ``pydet/models/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn


def _short_side_kwargs(size: int) -> dict:
    """Build arguments of the resize-to-short-side models (R-CNN, CenterMask2) for images of ``size`` px."""
    return {"min_size": int(size), "max_size": int(size) * 1333 // 800}


def _nothing(state: Mapping) -> dict:
    return {}


@dataclass(frozen=True)
class Converter:
    """A foreign checkpoint layout that a model loads. ``convert(state)`` gives the model's state dict and
    raises ``KeyError``/``ValueError`` when the layout is not its own. ``recognise(state)``, where the layout
    can be told by its keys alone, lets a checkpoint given to the wrong model be named for what it is;
    ``build_kwargs(state)`` are the build arguments the checkpoint implies (e.g. its class count)."""
    name: str
    convert: Callable[[Mapping], dict]
    recognise: Callable[[Mapping], bool] | None = None
    build_kwargs: Callable[[Mapping], dict] = _nothing


@dataclass(frozen=True)
class TrainingDefaults:
    """What ``pydet train`` uses for the options the user leaves out."""
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema: bool = False  # an exponential moving average of the weights (YOLOv7's recipe)


@dataclass(frozen=True)
class ModelSpec:
    """The facts of a registered model.

    ``label_offset`` is the model label of dataset class 0: 1 when label 0 is the background (torchvision's
    R-CNN convention), 0 when labels are ``0..num_classes-1``. ``num_classes`` is the factory's default (the
    COCO layout the official weights use). ``input_size(size)`` gives the build arguments that make the model
    work on images of about ``size`` pixels. ``converters`` are the foreign checkpoint layouts it loads.
    """
    has_masks: bool
    label_offset: int
    num_classes: int
    input_size: Callable[[int], dict] = _short_side_kwargs
    converters: tuple[Converter, ...] = ()
    training: TrainingDefaults = field(default_factory=TrainingDefaults)


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelSpec]] = {}


def register(name: str, factory: Callable[..., nn.Module], spec: ModelSpec) -> Callable[..., nn.Module]:
    """Register ``factory`` under ``name`` with its ``spec``; returns ``factory``."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is registered twice")
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec of {name!r} must be a ModelSpec, got {type(spec).__name__}")
    _REGISTRY[name] = (factory, spec)
    return factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    """``name`` with ``-`` read as ``_`` (``yolov7-tiny`` is ``yolov7_tiny``)."""
    key = str(name).replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[key]


def canonical_name(name: str) -> str:
    """The registered spelling of ``name`` (``yolov7-tiny`` -> ``yolov7_tiny``); ValueError when unknown."""
    _entry(name)
    return str(name).replace("-", "_")


def spec(name: str) -> ModelSpec:
    return _entry(name)[1]


def build(name: str, **kwargs) -> nn.Module:
    """Build a model by name, e.g. ``build("faster_rcnn_resnet50_fpn", num_classes=3)``."""
    return _entry(name)[0](**kwargs)
