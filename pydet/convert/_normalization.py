"""Checkpoint helpers shared by the converters of detectron2-based code (detectron2's R-CNN, CenterMask2).

detectron2 feeds its first convolution ``(pixels - pixel_mean) / pixel_std`` with pixels in 0-255, in the
channel order of ``input_format`` (BGR for the MSRA/caffe2 backbones of its model zoo). pydet's models take
RGB images in [0, 1] normalised with ImageNet's mean and std (``image_mean``/``image_std``).
"""
from __future__ import annotations

import pickle
from typing import Any, Sequence

import torch
from torch import Tensor

from ..modeling.transform import IMAGENET_MEAN, IMAGENET_STD


def fold_input_normalisation(weight: Tensor, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                             input_format: str = "BGR", *, image_mean: Sequence[float] = IMAGENET_MEAN,
                             image_std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """The first conv's weight ``[O, 3, k, k]`` that gives on pydet's input what ``weight`` gives on
    detectron2's: input channels permuted to RGB and scaled by ``255 * image_std / pixel_std``.

    Exact only when ``pixel_mean`` is ``255 * image_mean`` (in the checkpoint's channel order): a different
    mean would leave a constant offset that a bias-free, zero-padded convolution cannot absorb, so that is a
    ``ValueError``. detectron2's default mean (103.53, 116.28, 123.675) BGR is ImageNet's.
    """
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"the first conv's weight must be [O, 3, k, k], got {tuple(weight.shape)}")
    mean = torch.as_tensor(pixel_mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(pixel_std, dtype=torch.float64).flatten()
    if mean.numel() != 3 or std.numel() != 3 or not (std > 0).all():
        raise ValueError(f"pixel_mean and pixel_std must hold 3 values (std positive), got {mean.tolist()} "
                         f"and {std.tolist()}")
    order = [2, 1, 0] if input_format == "BGR" else [0, 1, 2]  # checkpoint channel of each RGB channel
    mean, std = mean[order], std[order]
    expected = 255.0 * torch.tensor(image_mean, dtype=torch.float64)
    if (mean - expected).abs().max() > 1e-3:
        raise ValueError(f"pixel_mean {mean.tolist()} (RGB) cannot be folded into the first conv: pydet's input "
                         f"normalisation subtracts {expected.tolist()} (255 x image_mean)")
    scale = 255.0 * torch.tensor(image_std, dtype=torch.float64) / std
    return (weight.double()[:, order] * scale.view(1, 3, 1, 1)).to(weight.dtype)


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
