"""Deployment paths against eager pydet, per model, in one process: batch 1 at the model's own size.

    eager        ``model([image])`` (the eager model, its CPU objectness pre-filter included)
    compile      ``torch.compile`` of the deployment module (inductor, frozen weights)
    aoti         the AOTInductor package of the exported program, loaded with ``aoti_load_package``
    onnxruntime  the ONNX file on onnxruntime's CPU provider

Every path must give eager's detections, checked on its first and its last call
(``assert_same_detections``: same counts and labels, boxes within 1e-2 px, scores within 1e-4, full YOLOv7
at float32's precision: see TOLERANCES; ``extra_info`` holds the largest differences). Random weights with spread-out outputs
(tests/deploy/helpers.py), so that there are detections to compare. AOTInductor compiles take minutes per model on 2 cores: YOLOv7 and -tiny are
packaged by default, every model with ``PYDET_BENCH_AOTI=all``. Results: benchmarks/results/cpu-deploy.json.

    python -m pytest benchmarks/test_bench_deploy.py --benchmark-only --benchmark-json=...
"""
import importlib.util
import os

import pytest
import torch

from pydet.deploy import export_onnx, export_program, load_exported, package_aoti
from pydet.deploy.verify import assert_same_detections, compare_outputs, outputs_from_detections
from tests.deploy.helpers import build, scenes

MODELS = {"yolov7_tiny": (640, {}), "yolov7": (640, {}), "centermask2_lite_vovnet19_slim": (600, {})}
# Building the artefact (an inductor compile, an AOTInductor package, an ONNX export) takes tens of seconds
# to minutes: `make test` leaves these to `make test-export` (marker `compiles`).
PATHS = ("eager", *(pytest.param(p, marks=pytest.mark.compiles) for p in ("compile", "aoti", "onnxruntime")))
# Full YOLOv7 at 640 px is compared at float32's own precision there: eager float32 is itself 0.032 px and
# 4.5e-5 from a float64 run of the same model and image (106 layers; a box corner of the largest anchor
# moves ~270 px per unit of head logit), so 1e-2 px cannot separate a right graph from a wrong one. Every
# other model keeps the default tolerances (1e-2 px, 1e-4). Measurements: benchmarks/results/cpu-deploy.md.
TOLERANCES = {"yolov7": {"box_tol": 0.1, "score_tol": 2e-4}}
ROWS = 100
AOTI_MODELS = list(MODELS) if os.environ.get("PYDET_BENCH_AOTI") == "all" else ["yolov7_tiny", "yolov7"]


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, tmp_path_factory):
    name = request.param
    size, kwargs = MODELS[name]
    model = build(name, **kwargs)
    module = model.export_module((size, size), max_detections=ROWS)
    image = scenes(1, size, size, seed=1)
    with torch.no_grad():
        expected = outputs_from_detections(model([image[0]]), ROWS)
    return name, model, module, image, expected, tmp_path_factory.mktemp(name)


def _runner(path, name, model, module, image, folder):
    if path == "eager":
        return lambda: model([image[0]])
    if path == "compile":
        compiled = torch.compile(module, options={"freezing": True})  # weights folded in as constants
        return lambda: compiled(image)
    if path == "aoti":
        if name not in AOTI_MODELS:
            pytest.skip("AOTInductor package of this model: set PYDET_BENCH_AOTI=all")
        exported = load_exported(package_aoti(export_program(module), folder / "model.pt2"))
        return lambda: exported(image)
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs onnxruntime (the export extra)")
    exported = load_exported(export_onnx(module, folder / "model.onnx"))
    return lambda: exported(image)


@pytest.mark.parametrize("path", PATHS)
def test_deploy_latency(benchmark, setup, path):
    name, model, module, image, expected, folder = setup
    size = image.shape[-1]
    benchmark.group = f"{name}-deploy-{size}x{size}-batch1"
    run = _runner(path, name, model, module, image, folder)

    def as_tuple(outputs):  # eager's per-image dicts as the deployment tuple
        return outputs_from_detections(outputs, ROWS) if isinstance(outputs, list) else outputs

    with torch.no_grad():
        first = as_tuple(run())
        benchmark.extra_info.update(compare_outputs(expected, first))
        outputs = as_tuple(benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1))
    # Checked after the timed rounds, so that a path off by more than the tolerances still has its timing
    # and its differences (extra_info) on record.
    assert_same_detections(expected, first, **TOLERANCES.get(name, {}))
    assert_same_detections(expected, outputs, **TOLERANCES.get(name, {}))
