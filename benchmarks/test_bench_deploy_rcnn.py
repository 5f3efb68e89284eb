"""Mask R-CNN ResNet-50-FPN deployment paths on the CPU: one 480x640 image (resized to 800x1066).

Side by side, same weights (random, seed 0: the RPN keeps 1000 proposals and 100 detections get masks):
eager pydet (``model([image])``), the export module run eagerly, ``torch.compile`` of it (inductor,
frozen weights), its AOTInductor package (``package_aoti``, frozen weights, as ``pydet export`` writes it)
and its ONNX file in onnxruntime. Every path must give eager's detections (``assert_same_detections``: same
counts and labels, boxes within 1e-2 px, scores within 1e-4) before and after its timed rounds. Compiling
takes minutes on 2 cores: each test builds its artefact before its timed rounds.

    python -m pytest benchmarks/test_bench_deploy_rcnn.py --benchmark-only \
        --benchmark-json=benchmarks/results/cpu-deploy-rcnn.json
"""
import importlib.util

import pytest
import torch

from pydet.deploy import export_onnx, export_program, load_exported, package_aoti
from pydet.deploy.verify import assert_same_detections, outputs_from_detections
from pydet.models import mask_rcnn_resnet50_fpn

HEIGHT, WIDTH = 480, 640
# The compiled and exported paths build their artefact first (a minute or more on 2 cores): `make test` leaves
# them to `make test-export` (marker `compiles`).
IMPLS = ["eager", "export-module",
         pytest.param("compile-freezing", marks=pytest.mark.compiles), pytest.param("aoti", marks=pytest.mark.compiles),
         pytest.param("onnxruntime", marks=[pytest.mark.compiles, pytest.mark.skipif(
             importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime (the export extra)")])]
ROWS = 100  # the export module's max_detections (default)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mask_rcnn_resnet50_fpn().eval()


@pytest.fixture(scope="module")
def module(model):
    return model.export_module((HEIGHT, WIDTH))


@pytest.fixture(scope="module")
def reference(model, image):
    with torch.inference_mode():
        return outputs_from_detections(model(list(image)), ROWS)


def compiled_with_freezing(module, image):
    with torch._inductor.config.patch(freezing=True), torch.inference_mode():
        compiled = torch.compile(module)
        compiled(image)  # compiles under the patched config, in the mode the benchmark calls it
    return compiled


def runner(impl, model, module, image, directory):
    if impl == "eager":
        return lambda x: model(list(x))
    if impl == "export-module":
        return module
    if impl == "compile-freezing":
        return compiled_with_freezing(module, image)
    if impl == "aoti":
        return load_exported(package_aoti(export_program(module), directory / "mask_rcnn.pt2"))
    return load_exported(export_onnx(module, directory / "mask_rcnn.onnx"))


def same_as_eager(outputs, reference):
    """Rows may trade places where two scores differ by float rounding only (onnxruntime's convolutions)."""
    if isinstance(outputs, list):  # eager: one dict per image
        outputs = outputs_from_detections(outputs, ROWS)
    assert int(reference[3][0]) > 0
    return assert_same_detections(reference, outputs[:4])


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_rcnn_resnet50_fpn_deploy(benchmark, impl, model, module, image, reference, tmp_path):
    benchmark.group = f"mask_rcnn_resnet50_fpn-deploy-{HEIGHT}x{WIDTH}"
    run = runner(impl, model, module, image, tmp_path)

    def call():
        with torch.inference_mode():
            return run(image)

    benchmark.extra_info.update(same_as_eager(call(), reference))  # also the warm-up round
    outputs = benchmark.pedantic(call, rounds=3, iterations=1)
    same_as_eager(outputs, reference)
