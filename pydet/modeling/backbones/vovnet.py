"""VoVNetV2 (CenterMask, Lee & Park 2020): One-Shot Aggregation stages with eSE attention and identity residuals.

An OSA module runs a chain of 3x3 convs, concatenates its input with every intermediate output once,
fuses them with a 1x1 conv and reweights the channels with effective Squeeze-Excitation (one 1x1
conv, hard sigmoid). Every block after a stage's first adds its input back. Layouts follow
youngwanLEE/centermask2's ``V-19-eSE``, ``V-19-slim-eSE``, ``V-39-eSE``, ``V-57-eSE`` and ``V-99-eSE``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import FrozenBatchNorm2d

NormLayer = Callable[[int], nn.Module]


class VoVNetSpec(NamedTuple):
    stage_channels: tuple[int, int, int, int]  # width of the 3x3 convs inside each stage's OSA modules
    out_channels: tuple[int, int, int, int]  # width after each OSA module's 1x1 aggregation
    layers_per_block: int
    blocks_per_stage: tuple[int, int, int, int]


_WIDTHS = dict(stage_channels=(128, 160, 192, 224), out_channels=(256, 512, 768, 1024))
VOVNET_SPECS = {
    "V-19-eSE": VoVNetSpec(**_WIDTHS, layers_per_block=3, blocks_per_stage=(1, 1, 1, 1)),
    # CenterMask-Lite's real-time backbone: the V-19 layout at half the OSA widths
    "V-19-slim-eSE": VoVNetSpec(stage_channels=(64, 80, 96, 112), out_channels=(112, 256, 384, 512),
                                layers_per_block=3, blocks_per_stage=(1, 1, 1, 1)),
    "V-39-eSE": VoVNetSpec(**_WIDTHS, layers_per_block=5, blocks_per_stage=(1, 1, 2, 2)),
    "V-57-eSE": VoVNetSpec(**_WIDTHS, layers_per_block=5, blocks_per_stage=(1, 1, 4, 3)),
    "V-99-eSE": VoVNetSpec(**_WIDTHS, layers_per_block=5, blocks_per_stage=(1, 3, 9, 3)),
}
STEM_CHANNELS = (64, 64, 128)


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm_layer: NormLayer):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
                         norm_layer(out_channels), nn.ReLU(inplace=True))


class EffectiveSE(nn.Module):
    """Channel attention from a global average: one full-width 1x1 conv (no reduction) and a hard sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class OSAModule(nn.Module):
    def __init__(self, in_channels: int, stage_channels: int, out_channels: int, num_layers: int, residual: bool,
                 norm_layer: NormLayer):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormReLU(in_channels if i == 0 else stage_channels, stage_channels, 3, 1, norm_layer)
            for i in range(num_layers))
        self.concat = ConvNormReLU(in_channels + num_layers * stage_channels, out_channels, 1, 1, norm_layer)
        self.ese = EffectiveSE(out_channels)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        out = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return out + x if self.residual else out


class VoVNet(nn.Module):
    """VoVNetV2-19/39/57/99 trunk; ``forward`` returns ``{"stage2": C2, ..., "stage5": C5}`` (strides 4-32)
    restricted to ``returned_stages``.

    The stem's three 3x3 convs (strides 2, 1, 2) reach stride 4, so stage 2 starts without pooling and
    stages 3-5 each open with a 3x3 stride-2 max-pool in ceil mode.
    """

    def __init__(self, depth: int = 39, *, slim: bool = False, norm_layer: NormLayer = FrozenBatchNorm2d,
                 returned_stages: Sequence[int] = (3, 4, 5)):
        super().__init__()
        name = f"V-{depth}{'-slim' if slim else ''}-eSE"
        if name not in VOVNET_SPECS:
            raise ValueError(f"depth (and slim) must name one of {', '.join(VOVNET_SPECS)}, got {name}")
        if not returned_stages or any(s not in (2, 3, 4, 5) for s in returned_stages):
            raise ValueError(f"returned_stages must be a non-empty subset of 2..5, got {returned_stages}")
        spec = VOVNET_SPECS[name]
        c1, c2, c3 = STEM_CHANNELS
        self.stem = nn.Sequential(ConvNormReLU(3, c1, 3, 2, norm_layer), ConvNormReLU(c1, c2, 3, 1, norm_layer),
                                  ConvNormReLU(c2, c3, 3, 2, norm_layer))
        in_channels = c3
        for index, (stage_channels, out_channels, blocks) in enumerate(
                zip(spec.stage_channels, spec.out_channels, spec.blocks_per_stage)):
            stage = nn.Sequential()
            if index > 0:
                stage.add_module("pool", nn.MaxPool2d(3, 2, ceil_mode=True))
            for block in range(blocks):
                stage.add_module(f"osa{block + 1}", OSAModule(in_channels, stage_channels, out_channels,
                                                              spec.layers_per_block, block > 0, norm_layer))
                in_channels = out_channels
            setattr(self, f"stage{index + 2}", stage)
        self.stage_out_channels = dict(zip((2, 3, 4, 5), spec.out_channels))
        self.returned_stages = tuple(sorted(returned_stages))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @property
    def out_channels_list(self) -> list[int]:
        return [self.stage_out_channels[s] for s in self.returned_stages]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.stem(x)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for stage in range(2, self.returned_stages[-1] + 1):
            x = getattr(self, f"stage{stage}")(x)
            if stage in self.returned_stages:
                out[f"stage{stage}"] = x
        return out
