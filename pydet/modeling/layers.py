"""Layers shared by several models."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    Detection backbones train with batches of 1-2 images per device, far too few for batch statistics;
    freezing them (as torchvision and detectron2 do) keeps the pretrained normalisation. Being buffers,
    they are not counted as parameters, which is what the published parameter counts assume.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A BatchNorm2d checkpoint carries a counter this layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # Multiply, then add in place into the product: the same two roundings as torchvision's
        # x * scale + shift (so outputs stay bit-identical), without a second full-size temporary.
        return x.mul(scale.reshape(1, -1, 1, 1).to(x.dtype)).add_(shift.reshape(1, -1, 1, 1).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# Backbone normalisation by name, as detectron2's NORM setting: "frozen_bn" keeps pretrained statistics
# (fine-tuning with 1-2 images per device); "bn" learns them, which a backbone trained from scratch needs
# (torchvision builds BatchNorm2d whenever no pretrained weights are loaded, for the same reason).
NORM_LAYERS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}


def norm_layer(name: str):
    """The normalisation layer class called ``name`` (one of ``NORM_LAYERS``)."""
    try:
        return NORM_LAYERS[name]
    except KeyError:
        raise ValueError(f"backbone_norm must be one of {', '.join(map(repr, NORM_LAYERS))}, got {name!r}") from None
