"""Mask R-CNN ResNet-50-FPN deployment paths on the CPU: one 480x640 image (resized to 800x1066).

Side by side, same weights (random, seed 0: the RPN keeps 1000 proposals and 100 detections get masks):
eager pydet (``model([image])``), the export module run eagerly, ``torch.compile`` of it (inductor,
frozen weights), its AOTInductor package (as ``pydet export`` writes it, and with frozen weights) and its
ONNX file in onnxruntime. Every path is checked to
give eager's detections before it is timed. Compiling takes minutes on 2 cores: each test builds its
artefact before its timed rounds.

    python -m pytest benchmarks/test_bench_deploy_rcnn.py --benchmark-only \
        --benchmark-json=benchmarks/results/cpu-deploy-rcnn.json
"""
import importlib.util

import pytest
import torch

from pydet.deploy import export_onnx, export_program, load_exported, package_aoti
from pydet.models import mask_rcnn_resnet50_fpn

HEIGHT, WIDTH = 480, 640
IMPLS = ["eager", "export-module", "compile-freezing", "aoti",
         pytest.param("onnxruntime", marks=pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                                              reason="needs onnxruntime (the export extra)")),
         "aoti-freezing"]


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
        return model(list(image))[0]


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
    if impl == "aoti-freezing":  # weights folded and prepacked into the package
        return load_exported(torch._inductor.aoti_compile_and_package(
            export_program(module), package_path=str(directory / "mask_rcnn.pt2"), inductor_configs={"freezing": True}))
    return load_exported(export_onnx(module, directory / "mask_rcnn.onnx"))


def assert_same_detections(outputs, reference):
    """The same detections as eager: count, and one-to-one the same label, box (1e-2 px) and score (1e-4).
    Rows may trade places where two scores differ by float rounding only (onnxruntime's convolutions)."""
    if isinstance(outputs, list):  # eager: one dict per image
        detections = outputs[0]
        outputs = [detections[k][None] for k in ("boxes", "scores", "labels")]
        outputs.append(torch.tensor([len(detections["boxes"])]))
    boxes, scores, labels, num_detections = (o[0] for o in outputs[:4])
    n = int(num_detections)
    assert n == len(reference["boxes"]) > 0
    unmatched = list(range(n))
    for box, score, label in zip(boxes[:n], scores[:n], labels[:n]):
        same = [j for j in unmatched if label == reference["labels"][j]
                and (box - reference["boxes"][j]).abs().max() <= 1e-2 and abs(score - reference["scores"][j]) <= 1e-4]
        assert same, f"no eager detection matches {label.item()} {box.tolist()} {score.item()}"
        unmatched.remove(same[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_rcnn_resnet50_fpn_deploy(benchmark, impl, model, module, image, reference, tmp_path):
    benchmark.group = f"mask_rcnn_resnet50_fpn-deploy-{HEIGHT}x{WIDTH}"
    run = runner(impl, model, module, image, tmp_path)

    def call():
        with torch.inference_mode():
            return run(image)

    assert_same_detections(call(), reference)  # also the warm-up round
    outputs = benchmark.pedantic(call, rounds=3, iterations=1)
    assert_same_detections(outputs, reference)
