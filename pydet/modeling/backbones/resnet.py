"""ResNet (torchvision's v1.5 layout: stride in the 3x3 conv, or with ``stride_in_1x1=True`` detectron2's
MSRA layout: stride in the first 1x1 conv of a bottleneck) and the ResNet-FPN backbone.

Module names match torchvision's ``resnet*`` inside ``fasterrcnn_resnet50_fpn``'s ``backbone.body``,
so torchvision checkpoints load with the key names unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

from torch import Tensor, nn

from ..fpn import FeaturePyramidNetwork, LastLevelMaxPool
from ..layers import FrozenBatchNorm2d, conv_norm

NormLayer = Callable[[int], nn.Module]


def _downsample(downsample: nn.Sequential | None, x: Tensor) -> Tensor:
    """The residual branch: ``x``, or ``downsample = Sequential(conv, norm)`` applied with ``conv_norm``."""
    if downsample is None:
        return x
    conv, norm = downsample
    return conv_norm(conv, norm, x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormLayer, stride_in_1x1: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = _downsample(self.downsample, x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        out += identity  # in place, as torchvision: no full-size temporary (nothing saved for backward needs it)
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None,
                 norm_layer: NormLayer, stride_in_1x1: bool = False):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, channels, 1, stride_1x1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride_3x3, 1, bias=False)
        self.bn2 = norm_layer(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = norm_layer(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = _downsample(self.downsample, x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        out += identity  # in place, as torchvision: no full-size temporary (nothing saved for backward needs it)
        return self.relu(out)


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
           101: (Bottleneck, (3, 4, 23, 3))}


class ResNet(nn.Module):
    """ResNet-18/34/50/101 trunk; ``forward`` returns ``{"0": C2, "1": C3, "2": C4, "3": C5}``
    restricted to ``returned_layers`` (1-based stage numbers, torchvision's convention).

    ``stride_in_1x1=True`` strides a bottleneck's 1x1 conv instead of its 3x3 (detectron2's MSRA weights);
    basic blocks have no 1x1 conv and ignore it."""

    def __init__(self, depth: int = 50, *, norm_layer: NormLayer = FrozenBatchNorm2d,
                 returned_layers: Sequence[int] = (1, 2, 3, 4), stride_in_1x1: bool = False):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if not returned_layers or any(i not in (1, 2, 3, 4) for i in returned_layers):
            raise ValueError(f"returned_layers must be a non-empty subset of 1..4, got {returned_layers}")
        block, counts = _DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        self.stage_channels = []
        for stage, (channels, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            stride = 1 if stage == 1 else 2
            downsample = None
            if stride != 1 or in_channels != channels * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(in_channels, channels * block.expansion, 1, stride, bias=False),
                                           norm_layer(channels * block.expansion))
            blocks = [block(in_channels, channels, stride, downsample, norm_layer, stride_in_1x1)]
            in_channels = channels * block.expansion
            blocks += [block(in_channels, channels, 1, None, norm_layer) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            self.stage_channels.append(in_channels)
        self.returned_layers = tuple(sorted(returned_layers))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def out_channels_list(self) -> list[int]:
        return [self.stage_channels[i - 1] for i in self.returned_layers]

    def freeze(self, trainable_layers: int) -> None:
        """Train only the last ``trainable_layers`` stages (0-5; 5 also trains the stem), like torchvision."""
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            train.append("bn1")
        for name, p in self.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in train))

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, x)))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.returned_layers:
                out[str(self.returned_layers.index(stage))] = x
            if stage == self.returned_layers[-1]:
                break
        return out


class BackboneWithFPN(nn.Module):
    """``body`` (a trunk returning ordered features) followed by ``fpn``; ``out_channels`` for the heads."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))


def resnet_fpn_backbone(depth: int = 50, *, trainable_layers: int = 3, returned_layers: Sequence[int] = (1, 2, 3, 4),
                        out_channels: int = 256, extra_blocks: nn.Module | None = None,
                        norm_layer: NormLayer = FrozenBatchNorm2d, stride_in_1x1: bool = False) -> BackboneWithFPN:
    """torchvision's ``resnet_fpn_backbone``: FPN over the returned stages plus a max-pool level by default."""
    body = ResNet(depth, norm_layer=norm_layer, returned_layers=returned_layers, stride_in_1x1=stride_in_1x1)
    body.freeze(trainable_layers)
    fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels,
                                extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
    return BackboneWithFPN(body, fpn)
