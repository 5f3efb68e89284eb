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
        scale, shift = batchnorm_scale_shift(self)
        # Multiply, then add in place into the product: the same two roundings as torchvision's
        # x * scale + shift (so outputs stay bit-identical), without a second full-size temporary.
        return x.mul(scale.reshape(1, -1, 1, 1).to(x.dtype)).add_(shift.reshape(1, -1, 1, 1).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def batchnorm_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel, for a FrozenBatchNorm2d or a
    BatchNorm2d's running statistics (what it computes in eval mode); None for anything else (e.g.
    ``nn.Identity``)."""
    frozen = isinstance(bn, FrozenBatchNorm2d)
    batchnorm = isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.running_var is not None
    if not (frozen or batchnorm):
        return None
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


def fold_batchnorm_into(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Weight and bias of the one convolution that computes ``bn(conv(x))`` for a convolution of ``weight``
    and ``bias`` (None where ``bn`` does not fold, see ``batchnorm_scale_shift``). Differentiable, with
    respect to the convolution's weight and the BatchNorm's affine parameters alike."""
    scale_shift = batchnorm_scale_shift(bn)
    if scale_shift is None:
        return None
    scale, shift = scale_shift
    return weight * scale.reshape(-1, 1, 1, 1), shift if bias is None else bias * scale + shift


def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``fold_batchnorm_into`` for the convolution ``conv``."""
    return fold_batchnorm_into(conv.weight, conv.bias, bn)


@torch.no_grad()
def conv_with_weights(template: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A copy of ``template``'s geometry with the given weight and bias (a folded or re-parameterised
    convolution); its parameters train when ``template``'s weight does."""
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, template.stride,
                     template.padding, template.dilation, template.groups, bias=True,
                     device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    conv.requires_grad_(template.weight.requires_grad)
    return conv


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``. Out of training, a FrozenBatchNorm2d or BatchNorm2d after the convolution is
    folded into its weight and bias on the fly: one convolution instead of a convolution plus two
    full-size passes (multiply, add) over its output, about a tenth of a ResNet-50-FPN detector's CPU
    time. The fold is recomputed at each call (a few ms for ResNet-50, against seconds of convolutions)
    so that it can never go stale, whatever changes the weights, and keeps autograd working. Results
    differ from the two-step computation by float rounding only (~1e-6 relative). Training keeps the
    two steps, so it computes exactly what it always did."""
    if norm.training or (folded := fold_batchnorm(conv, norm)) is None:
        return norm(conv(x))
    return conv._conv_forward(x, *folded)


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
