"""CenterMask2 eval latency: one 600x800 image resized to 800x1067 (the COCO test setting).

The weights are random, so the score threshold is set to 0 to make the model behave like a trained one
on a busy image: 1000 candidates per level go into NMS and the mask branch runs on 50 detections (boxes
are clipped only at the end, as in the official code, so a few random ones may then be dropped as empty).
"""
import pytest
import torch

from pydet.models.centermask2 import centermask2

from .conftest import cuda_timer, requires_cuda

CONFIGS = {"vovnet39": dict(backbone="vovnet39"),
           "lite-vovnet19": dict(backbone="vovnet19", lite=True, min_size=800, max_size=1333)}


def _model(name: str, device: str):
    torch.manual_seed(0)
    return centermask2(num_classes=80, box_score_thresh=0.0, **CONFIGS[name]).eval().to(device)


def _image(device: str):
    return [torch.rand(3, 600, 800, generator=torch.Generator().manual_seed(0)).to(device)]


@pytest.mark.benchmark(group="centermask2-eval-800")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_centermask2_eval_cpu(benchmark, name):
    model, images = _model(name, "cpu"), _image("cpu")
    with torch.no_grad():
        (out,) = benchmark.pedantic(model, args=(images,), rounds=3, warmup_rounds=1)
    # 50 detections go through the mask branch; those whose box the final clip leaves empty are dropped
    assert 0 < len(out["scores"]) <= 50 and out["masks"].shape == (len(out["scores"]), 1, 600, 800)


@requires_cuda
@pytest.mark.benchmark(group="centermask2-eval-800")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_centermask2_eval_cuda(benchmark, name):
    model, images = _model(name, "cuda"), _image("cuda")
    with torch.no_grad():
        (out,) = benchmark.pedantic(cuda_timer(lambda: model(images)), rounds=10, warmup_rounds=2)
    # 50 detections go through the mask branch; those whose box the final clip leaves empty are dropped
    assert 0 < len(out["scores"]) <= 50 and out["masks"].shape == (len(out["scores"]), 1, 600, 800)
