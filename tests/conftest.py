import importlib.util

import pytest
import torch

import pydet  # noqa: F401  (registers torch.ops.pydet.*)

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
SEEDS = [0, 1, 2]

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
# PyAV, from the video extra (`pip install .[video]`); `make test` installs it.
requires_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="needs PyAV (the video extra)")


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def random_boxes(n, *, image_size=1000.0, max_side=200.0, dtype=torch.float32, device="cpu", generator=None):
    """``n`` random xyxy boxes inside an ``image_size`` square with sides in (1, max_side]."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (image_size - max_side)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * (max_side - 1) + 1
    return torch.cat([xy, xy + wh], dim=1).to(dtype=dtype, device=device)
