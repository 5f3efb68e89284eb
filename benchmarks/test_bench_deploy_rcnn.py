"""Mask R-CNN ResNet-50-FPN deployment paths on the CPU: one 480x640 image (resized to 800x1066).

Side by side, same weights (random, seed 0: the RPN keeps 1000 proposals and 100 detections get masks):
eager pydet (``model([image])``), the export module run eagerly, ``torch.compile`` of it (inductor,
frozen weights), its AOTInductor package and its ONNX file in onnxruntime. Every path is checked to
give eager's detections before it is timed. Compiling takes minutes on 2 cores: the compiled artefacts
are built once per session (module-scoped fixtures), outside the timings.

    python -m pytest benchmarks/test_bench_deploy_rcnn.py --benchmark-only \
        --benchmark-json=benchmarks/results/cpu-deploy-rcnn.json
"""
import importlib.util

import pytest
import torch
from torch.export import Dim, export

from pydet.models import mask_rcnn_resnet50_fpn

HEIGHT, WIDTH = 480, 640
IMPLS = ["eager", "export-module", "compile-freezing", "aoti",
         pytest.param("onnxruntime", marks=pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                                              reason="needs onnxruntime (the export extra)"))]


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


@pytest.fixture(scope="module")
def exported(module, image):
    return export(module, (image,), dynamic_shapes=({0: Dim("batch")},))


def compiled_with_freezing(module, image):
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        compiled = torch.compile(module)
        compiled(image)  # compiles under the patched config
    return lambda x: compiled(x)


def aoti_package(exported, tmp_path_factory):
    path = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path_factory.mktemp("aoti") / "mask_rcnn.pt2"))
    return torch._inductor.aoti_load_package(path)


def onnxruntime_session(module, image, tmp_path_factory):
    import onnxruntime

    path = str(tmp_path_factory.mktemp("onnx") / "mask_rcnn.onnx")
    torch.onnx.export(module, (image,), path, dynamo=True, dynamic_shapes=({0: Dim("batch")},),
                      input_names=["images"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]


def runner(impl, model, module, exported, image, tmp_path_factory):
    if impl == "eager":
        return lambda x: model(list(x))
    if impl == "export-module":
        return module
    if impl == "compile-freezing":
        return compiled_with_freezing(module, image)
    if impl == "aoti":
        return aoti_package(exported, tmp_path_factory)
    return onnxruntime_session(module, image, tmp_path_factory)


def assert_same_detections(outputs, reference):
    if isinstance(outputs, list):  # eager: one dict per image
        detections = outputs[0]
        outputs = [detections[k][None] for k in ("boxes", "scores", "labels")] + [torch.tensor([len(detections["boxes"])])]
    boxes, scores, labels, num_detections = outputs[:4]
    n = int(num_detections[0])
    assert n == len(reference["boxes"]) > 0
    assert torch.equal(labels[0, :n], reference["labels"])
    torch.testing.assert_close(boxes[0, :n], reference["boxes"], atol=1e-2, rtol=0)
    torch.testing.assert_close(scores[0, :n], reference["scores"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_rcnn_resnet50_fpn_deploy(benchmark, impl, model, module, exported, image, reference, tmp_path_factory):
    benchmark.group = f"mask_rcnn_resnet50_fpn-deploy-{HEIGHT}x{WIDTH}"
    run = runner(impl, model, module, exported, image, tmp_path_factory)

    def call():
        with torch.inference_mode():
            return run(image)

    assert_same_detections(call(), reference)
    outputs = benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
    assert_same_detections(outputs, reference)
