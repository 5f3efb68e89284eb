"""Models with informative random weights for the deployment tests (comparisons: pydet.deploy.verify)."""
from __future__ import annotations

import torch
from torch import nn

from pydet import models


def spread_weights(model: nn.Module, seed: int = 0, gain: float = 0.5) -> nn.Module:
    """BatchNorm statistics calibrated on :func:`scenes` and wider-spread output layers, so that random
    weights give well separated scores (freshly initialised heads score nearly every box alike, and
    near-ties would make any two runtimes order the detections differently).

    Calibration runs at the resolution the network sees in use (:func:`network_input_side`), so that, as in
    a trained network, BatchNorm keeps every layer's activations near unit scale. Calibrated on smaller
    images, full YOLOv7's head activations grew 10-50x at 640 px, its scores saturated near 1 with
    near-ties, and float32 rounding (1e-3 in the head's logits) decided which of them were kept.
    """
    g = torch.Generator().manual_seed(seed)
    side = network_input_side(model)
    with torch.no_grad():
        for conv, bias in _output_convs(model):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * gain / conv.weight[0].numel() ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.5 + bias)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
        if norms:
            network = model.backbone if hasattr(model, "fcos") else model.model
            network.train()
            network(scenes(4, side, side, seed=seed + 1))
        if not hasattr(model, "fcos"):  # deep YOLOs: bring each level's logits to about `gain` standard deviation
            model.eval()
            for conv, level in zip(model.head.m, model.model(scenes(2, side, side, seed=seed + 2))):
                conv.weight.div_(level.std() / gain)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.5 - 1.5)
    return model.eval()


def network_input_side(model: nn.Module) -> int:
    """The side of the images the network runs on: YOLOv7's letterbox size, CenterMask2's test-time resize."""
    return model.transform.min_size[-1] if hasattr(model, "fcos") else model.img_size


def _output_convs(model: nn.Module) -> list[tuple[nn.Conv2d, float]]:
    """The prediction layers and the mean of their random bias (rare objects, boxes a few strides wide)."""
    if not hasattr(model, "fcos"):  # YOLOv7
        return [(conv, -3.0) for conv in model.head.m]
    head = model.fcos.head
    return [(head.cls_logits, -3.0), (head.bbox_pred, 1.0), (head.centerness, 0.0)]


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return spread_weights(models.build(name, **kwargs), seed)


def scenes(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[batch, 3, height, width]`` images in [0, 1]: smooth noise with a few bright rectangles."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height // 8 + 1, width // 8 + 1, generator=g)
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False) * 0.4
    for image in images:
        for _ in range(4):
            y, x = int(torch.randint(0, height - 8, (1,), generator=g)), int(torch.randint(0, width - 8, (1,), generator=g))
            h, w = int(torch.randint(8, height // 2, (1,), generator=g)), int(torch.randint(8, width // 2, (1,), generator=g))
            image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.4
    return images

