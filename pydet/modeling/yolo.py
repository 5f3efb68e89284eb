"""YOLOv7 building blocks, named and shaped as in the official implementation (WongKinYiu/yolov7).

Module and attribute names (``conv``/``bn``, ``cv1``..``cv7``, ``rbr_dense``/``rbr_1x1``/``rbr_identity``,
``m``/``ia``/``im``, the ``anchors``/``anchor_grid`` buffers) follow the official code, so a network built by
:func:`build_layer_graph` from a layer table equivalent to the official yaml has the official state-dict keys.
ELAN, ELAN-H and MP-1 are not modules of their own: as in the official configuration they are runs of rows in
the layer table (see :mod:`pydet.models.yolov7`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv_with_weights, fold_batchnorm, fold_batchnorm_into

# The official Model.initialize_weights sets these on every BatchNorm2d after building.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"activation must be 'silu' or 'leaky', got {name!r}")


class Conv(nn.Module):
    """Convolution without bias, BatchNorm, activation ("same" padding for odd kernels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: str = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = _batch_norm(out_channels)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (deployment; uses the running statistics)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = conv_with_weights(self.conv, *fold_batchnorm(self.conv, self.bn))
            self.bn = nn.Identity()


class RepConv(nn.Module):
    """RepVGG block: 3x3 conv-BN + 1x1 conv-BN (+ BN identity when shapes allow), summed, activation.

    :meth:`fuse` re-parameterises the branches into the single 3x3 convolution ``rbr_reparam``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 act: str = "silu"):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"RepConv needs an odd kernel_size, got {kernel_size}")
        pad = kernel_size // 2
        self.act = _activation(act)
        self.rbr_identity = _batch_norm(in_channels) if in_channels == out_channels and stride == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False),
                                       _batch_norm(out_channels))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                                     _batch_norm(out_channels))
        self.rbr_reparam = None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.rbr_reparam is not None:
            return
        dense = self.rbr_dense[0]
        kernel, bias = fold_batchnorm(dense, self.rbr_dense[1])
        k1, b1 = fold_batchnorm(self.rbr_1x1[0], self.rbr_1x1[1])
        pad = dense.kernel_size[0] // 2
        kernel = kernel + F.pad(k1, [pad, pad, pad, pad])
        bias = bias + b1
        if self.rbr_identity is not None:
            identity = torch.zeros_like(kernel)
            channels = torch.arange(kernel.shape[0], device=kernel.device)
            identity[channels, channels, pad, pad] = 1.0
            ki, bi = fold_batchnorm_into(identity, None, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        self.rbr_reparam = conv_with_weights(dense, kernel, bias)
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class SPPCSPC(nn.Module):
    """CSP spatial pyramid pooling: max-pools 5/9/13 on one branch, a 1x1 shortcut on the other."""

    def __init__(self, in_channels: int, out_channels: int, expansion: float = 0.5,
                 pool_sizes: Sequence[int] = (5, 9, 13), act: str = "silu"):
        super().__init__()
        hidden = int(2 * out_channels * expansion)
        self.cv1 = Conv(in_channels, hidden, 1, 1, act)
        self.cv2 = Conv(in_channels, hidden, 1, 1, act)
        self.cv3 = Conv(hidden, hidden, 3, 1, act)
        self.cv4 = Conv(hidden, hidden, 1, 1, act)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pool_sizes)
        self.cv5 = Conv((len(pool_sizes) + 1) * hidden, hidden, 1, 1, act)
        self.cv6 = Conv(hidden, hidden, 3, 1, act)
        self.cv7 = Conv(2 * hidden, out_channels, 1, 1, act)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [pool(x1) for pool in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class ImplicitA(nn.Module):
    """Learned per-channel offset added to the input (YOLOR implicit knowledge)."""

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """Learned per-channel scale multiplied with the input (YOLOR implicit knowledge)."""

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.implicit


class Concat(nn.Module):
    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, 1)


class IDetect(nn.Module):
    """YOLOR detection head: per level ImplicitA -> 1x1 conv -> ImplicitM, ``num_anchors * (5 + C)`` outputs.

    ``forward`` returns the raw per-level predictions ``[B, A, H, W, 5 + C]`` (x, y, w, h, objectness,
    classes; logits); decoding is the model's business. Buffers as the official head: ``anchors`` in units of
    each level's stride ``[L, A, 2]`` and ``anchor_grid`` in pixels ``[L, 1, A, 1, 1, 2]``.
    """

    def __init__(self, num_classes: int, anchors: Sequence[Sequence[float]], strides: Sequence[int],
                 in_channels: Sequence[int]):
        super().__init__()
        if not (len(anchors) == len(strides) == len(in_channels)):
            raise ValueError("anchors, strides and in_channels need one entry per level")
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.strides = tuple(int(s) for s in strides)
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        stride_tensor = torch.tensor(self.strides, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors", pixels / stride_tensor)
        self.register_buffer("anchor_grid", pixels.clone().view(self.nl, 1, self.na, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in in_channels)
        self.ia = nn.ModuleList(ImplicitA(c) for c in in_channels)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in in_channels)
        self.implicit_folded = False
        self._initialize_biases()

    @torch.no_grad()
    def _initialize_biases(self) -> None:
        # Focal-loss style prior (about 8 objects per 640 image, class prior 0.6 / nc), as the official code.
        for conv, stride in zip(self.m, self.strides):
            bias = conv.bias.view(self.na, self.no)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for i, x in enumerate(features):
            if self.implicit_folded:
                x = self.m[i](x)
            else:
                x = self.im[i](self.m[i](self.ia[i](x)))
            b, _, h, w = x.shape
            out.append(x.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the implicit layers into the output convolutions: conv(x + a) * m == conv'(x).

        As in the official fused model, ``ia`` and ``im`` stay registered (unused afterwards), so the state-dict
        layout and the parameter count (36,907,898 for yolov7) are the official ones.
        """
        if self.implicit_folded:
            return
        for conv, add, mul in zip(self.m, self.ia, self.im):
            weight = conv.weight.flatten(1)
            conv.bias.add_(weight @ add.implicit.flatten())
            scale = mul.implicit.flatten()
            conv.bias.mul_(scale)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.implicit_folded = True


class LayerGraph(nn.ModuleList):
    """The official ``Model.model``: layers run in order, each reading the previous output or earlier ones.

    ``sources[i]`` is ``-1`` (previous layer), an absolute layer index, or a list of them (for Concat and the
    detection head). Outputs are kept only for layers that a later layer reads.
    """

    def __init__(self, layers: Sequence[nn.Module], sources: Sequence[int | list[int]]):
        super().__init__(layers)
        self.sources = [s if isinstance(s, int) else list(s) for s in sources]
        self._kept = {j for s in self.sources for j in ([s] if isinstance(s, int) else s) if j != -1}

    def forward(self, x):
        outputs: dict[int, object] = {}
        for i, (layer, source) in enumerate(zip(self, self.sources)):
            if isinstance(source, list):
                x = [x if j == -1 else outputs[j] for j in source]
            elif source != -1:
                x = outputs[source]
            x = layer(x)
            if i in self._kept:
                outputs[i] = x
        return x


def build_layer_graph(table: Sequence[tuple], *, num_classes: int, anchors, strides, act: str,
                      in_channels: int = 3) -> LayerGraph:
    """Build a :class:`LayerGraph` from rows ``(from, kind, *args)`` read like the official yaml.

    ``from`` is -1, a negative offset or an absolute index (or a list of those). Kinds: ``conv c k s``,
    ``repconv c k s``, ``sppcspc c``, ``concat``, ``mp`` (2x2 max-pool, stride 2), ``sp k`` (k x k max-pool,
    stride 1), ``upsample`` (nearest, x2), ``idetect`` (anchors, strides and class count from the keywords).
    """
    layers, sources, channels = [], [], []
    for i, (source, kind, *args) in enumerate(table):
        absolute = [j if j == -1 else (j if j >= 0 else i + j) for j in
                    (source if isinstance(source, (list, tuple)) else [source])]
        inputs = [channels[-1] if j == -1 else channels[j] for j in absolute] if i else [in_channels]
        c_in = inputs[0]
        if kind == "conv":
            layer, c_out = Conv(c_in, args[0], args[1], args[2], act), args[0]
        elif kind == "repconv":
            layer, c_out = RepConv(c_in, args[0], args[1], args[2], act), args[0]
        elif kind == "sppcspc":
            layer, c_out = SPPCSPC(c_in, args[0], act=act), args[0]
        elif kind == "concat":
            layer, c_out = Concat(), sum(inputs)
        elif kind == "mp":
            layer, c_out = nn.MaxPool2d(2, 2), c_in
        elif kind == "sp":
            layer, c_out = nn.MaxPool2d(args[0], 1, args[0] // 2), c_in
        elif kind == "upsample":
            layer, c_out = nn.Upsample(scale_factor=2, mode="nearest"), c_in
        elif kind == "idetect":
            layer, c_out = IDetect(num_classes, anchors, strides, inputs), None
        else:
            raise ValueError(f"layer {i}: unknown kind {kind!r}")
        layers.append(layer)
        sources.append(absolute[0] if not isinstance(source, (list, tuple)) else absolute)
        channels.append(c_out)
    return LayerGraph(layers, sources)


def fuse_modules(module: nn.Module) -> None:
    """Re-parameterise every Conv, RepConv and IDetect under ``module`` for deployment (in place)."""
    for m in list(module.modules()):
        if isinstance(m, (Conv, RepConv, IDetect)):
            m.fuse()
