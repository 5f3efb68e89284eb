"""Checkpoint helpers shared by the converters of detectron2-based code (detectron2's R-CNN, CenterMask2).

detectron2 feeds its first convolution ``(pixels - pixel_mean) / pixel_std`` with pixels in 0-255, in the
channel order of ``input_format`` (BGR for the MSRA/caffe2 backbones of its model zoo). pydet's models take
RGB images in [0, 1] normalised with ImageNet's mean and std (``image_mean``/``image_std``).
"""
from __future__ import annotations

import math
import os
import pickle
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..modeling.transform import IMAGENET_MEAN, IMAGENET_STD


INPUT_FORMATS = ("BGR", "RGB")
# A mean within this many 0-255 levels of pydet's own is the same mean stored at another precision.
MEAN_TOLERANCE = 1e-3


def three_numbers(values: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be three finite numbers, got {values!r}")
    return out


def input_channel_scales(pixel_mean: Sequence[float], pixel_std: Sequence[float], input_format: str = "BGR", *,
                         image_mean: Sequence[float] = IMAGENET_MEAN,
                         image_std: Sequence[float] = IMAGENET_STD) -> list[tuple[int, float]]:
    """For each of detectron2's input channels ``k``: the RGB channel it holds and the factor
    ``255 * image_std / pixel_std[k]`` that takes pydet's normalised input to detectron2's.

    Exact only when ``pixel_mean`` is ``255 * image_mean`` (in the checkpoint's channel order): a different
    mean would be a constant shift that the first conv's zero padding (and the batch padding) do not
    preserve, so that is a ``ValueError``, as are malformed arguments. detectron2's default mean
    (103.53, 116.28, 123.675) BGR is ImageNet's.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    mean, std = three_numbers(pixel_mean, "pixel_mean"), three_numbers(pixel_std, "pixel_std")
    if min(std) <= 0:
        raise ValueError(f"pixel_std must be positive, got {pixel_std!r}")
    rgb = (2, 1, 0) if input_format == "BGR" else (0, 1, 2)  # the RGB channel of each checkpoint channel
    expected = tuple(255.0 * image_mean[c] for c in rgb)
    if max(abs(a - b) for a, b in zip(mean, expected)) > MEAN_TOLERANCE:
        raise ValueError(
            f"pixel_mean={tuple(pixel_mean)} cannot be folded exactly: pydet subtracts 255 x image mean = "
            f"{tuple(round(v, 3) for v in expected)} ({input_format} order) before zero padding, and a different "
            "mean is a constant shift that the first conv's zero padding and the batch padding do not preserve")
    return [(c, 255.0 * image_std[c] / std[k]) for k, c in enumerate(rgb)]


def fold_input_normalisation(weight: Tensor, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                             input_format: str = "BGR", **image_normalisation) -> Tensor:
    """The first conv's weight ``[O, 3, k, k]`` that gives on pydet's input what ``weight`` gives on
    detectron2's (see :func:`input_channel_scales`); computed in float64, returned in ``weight``'s dtype."""
    scales = input_channel_scales(pixel_mean, pixel_std, input_format, **image_normalisation)
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"the first conv's weight must be [O, 3, k, k], got {tuple(weight.shape)}")
    folded = torch.empty_like(weight, dtype=torch.float64)
    for k, (c, scale) in enumerate(scales):
        folded[:, c] = weight[:, k].double() * scale
    return folded.to(weight.dtype)


def as_tensor(key: str, value: Any) -> Tensor:
    """A checkpoint value (numpy array or tensor) as a CPU tensor; ValueError naming ``key`` otherwise."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiub":
            raise ValueError(f"value of {key!r} is a numpy array of {value.dtype}, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        return value.detach().cpu()
    raise ValueError(f"value of {key!r} is a {type(value).__name__}, not a tensor or numpy array")


def read_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The state dict inside ``checkpoint``: a path to a model-zoo ``.pkl`` (numpy arrays, read without
    running pickle code) or a ``.pth`` (``torch.load(weights_only=True)``), or an already-loaded dict,
    ``{"model": state_dict, ...}`` (detectron2's Checkpointer) or the bare state dict. A ``module.`` prefix
    (a checkpoint saved from DistributedDataParallel) is dropped."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint file {path}")
        if path.endswith(".pkl"):
            checkpoint = load_numpy_pickle(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError("expected a detectron2 checkpoint dict {'model': state_dict, ...}, a state dict or a path "
                         f"to one, got {type(checkpoint).__name__}")
    model = checkpoint.get("model")
    state = model if isinstance(model, Mapping) else checkpoint
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, numbers, strings and plain containers, nothing else: a pickle that
    names any other callable (``os.system``, ``builtins.eval`` ...) is refused before anything runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        # Protocol-2 pickles written by Python 3 spell byte strings (array data) as _codecs.encode(str,
        # "latin1"), as torch's weights_only unpickler also admits.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain "
                                         "containers are read from a .pkl checkpoint")
        return super().find_class(module, name)


def load_numpy_pickle(path: str) -> Any:
    """A model-zoo ``.pkl`` (numpy arrays in dicts), read with :class:`NumpyUnpickler`; ``latin1`` decodes
    the byte strings of arrays pickled by Python 2 (the Detectron-era files), as detectron2 does."""
    with open(path, "rb") as f:
        return NumpyUnpickler(f, encoding="latin1").load()
