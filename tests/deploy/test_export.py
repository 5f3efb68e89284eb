"""Deployment modules of YOLOv7 and CenterMask2: eager-identical, torch.export with a dynamic batch, ONNX run
by onnxruntime, AOTInductor. The small presets run here; the full models are ``slow``:

    python -m pytest tests/deploy -m slow -q
"""
import importlib.util
import subprocess
import sys

import pytest
import torch

from pydet import models, ops
from pydet.deploy import export_onnx, export_program, load_exported, package_aoti
from pydet.deploy.verify import assert_same_detections, detection_order, outputs_from_detections
from tests.deploy.helpers import build, scenes
from tests.deploy.test_onnx_ops import requires_onnx

SIZE = (96, 128)  # not square, and not the models' own size: the fixed-size resize / letterbox is exercised
ROWS = 40
SMALL = {"yolov7_tiny_320": {"box_score_thresh": 0.1},
         "centermask2_lite_vovnet19_slim": {"min_size": 128, "max_size": 256}}
LARGE = [name for name in models.available()
         if (name.startswith("yolov7") or name.startswith("centermask2")) and name not in SMALL]


def _eager_outputs(model, images, rows):
    """The eager model's detections as the deployment tuple (its first ``rows`` rows, sorted by score) and
    each image's pasted masks in the same order."""
    detections = model(list(images))
    masks = [det["masks"][detection_order(det, rows)] for det in detections if "masks" in det]
    return outputs_from_detections(detections, rows), masks


def _check_against_eager(model, module, images):
    with torch.no_grad():
        (boxes, scores, labels, counts), masks = _eager_outputs(model, images, module.max_detections)
        out = module(images)
    assert counts.sum() > 0, "the test model should detect something"
    assert torch.equal(out[3], counts) and torch.equal(out[2], labels)
    torch.testing.assert_close(out[1], scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0], boxes, rtol=0, atol=1e-4)
    for i, image_masks in enumerate(masks):  # box-relative masks pasted as the eager model pastes them
        n = int(counts[i])
        pasted = ops.paste_masks(out[4][i, :n], out[0][i, :n], tuple(images.shape[-2:]), threshold=None)
        torch.testing.assert_close(pasted, image_masks[:, 0], rtol=0, atol=1e-5)
        assert (out[4][i, n:] == 0).all()


@pytest.fixture(scope="module", params=list(SMALL))
def small(request):
    model = build(request.param, **SMALL[request.param])
    return model, model.export_module(SIZE, max_detections=ROWS)


def test_export_module_is_the_eager_model_padded(small):
    model, module = small
    images = scenes(3, *SIZE, seed=3)
    _check_against_eager(model, module, images)
    out = module(images)
    assert out[0].shape == (3, ROWS, 4) and out[2].dtype == torch.int64 and out[3].dtype == torch.int64
    assert len(out) == (5 if module.has_masks else 4)
    valid = torch.arange(ROWS) < out[3][:, None]
    assert (out[1][:, 1:] <= out[1][:, :-1] + 1e-7)[valid[:, 1:]].all()  # sorted by score


def test_more_rows_than_the_model_keeps_are_padding(small):
    model, _ = small
    limit = model.box_detections_per_img if hasattr(model, "box_detections_per_img") else \
        model.fcos.post_nms_top_n["testing"]
    module = model.export_module(SIZE, max_detections=limit + 7)
    out = module(scenes(2, *SIZE, seed=4))
    assert out[0].shape[1] == limit + 7 and (out[3] <= limit).all() and (out[2][:, limit:] == -1).all()


def test_torch_export_with_a_dynamic_batch(small):
    _, module = small
    program = export_program(module).module()
    for batch in (1, 3):
        images = scenes(batch, *SIZE, seed=10 + batch)
        with torch.no_grad():
            expected = module(images)
        for e, o in zip(expected, program(images)):
            torch.testing.assert_close(o, e, rtol=0, atol=1e-5)


@requires_onnx
def test_onnx_runtime_gives_the_eager_detections(small, tmp_path):
    _, module = small
    exported = load_exported(export_onnx(module, tmp_path / "model.onnx"))
    assert exported.output_names == module.output_names
    images = scenes(3, *SIZE, seed=21)
    for batch in (1, 3):
        with torch.no_grad():
            expected = module(images[:batch])
        assert expected[3].sum() > 0
        assert_same_detections(expected, exported(images[:batch]), mask_tol=1e-3 if module.has_masks else None)


def test_bad_inputs_and_arguments(small):
    model, module = small
    with pytest.raises(ValueError, match="images must be 96x128"):
        module(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        module(torch.rand(3, *SIZE))
    with pytest.raises(ValueError, match="floating point"):
        module(torch.zeros(1, 3, *SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="max_detections"):
        model.export_module(SIZE, max_detections=0)
    with pytest.raises(ValueError, match="image_size"):
        model.export_module((96, -1))
    with pytest.raises(FileNotFoundError):
        load_exported("/nonexistent/model.onnx")


@pytest.mark.full_export
@pytest.mark.parametrize("name", LARGE)
def test_every_registered_model_exports(name, tmp_path):
    """Every other YOLOv7 / CenterMask2 preset: eager-identical, torch.export at batch 1 and 3, onnxruntime."""
    kwargs = {"min_size": 128, "max_size": 256} if name.startswith("centermask2") else {"box_score_thresh": 0.1}
    model = build(name, **kwargs)
    module = model.export_module(SIZE, max_detections=ROWS)
    images = scenes(3, *SIZE, seed=5)
    _check_against_eager(model, module, images)
    program = export_program(module).module()
    with torch.no_grad():
        expected = module(images)
    for e, o in zip(expected, program(images)):
        torch.testing.assert_close(o, e, rtol=0, atol=1e-5)
    if importlib.util.find_spec("onnxruntime") is not None:
        exported = load_exported(export_onnx(module, tmp_path / "model.onnx"))
        assert_same_detections(expected, exported(images),
                               mask_tol=1e-3 if module.has_masks else None)


@pytest.mark.full_export
def test_aot_inductor_package_loads_in_a_fresh_process(tmp_path):
    """AOTInductor compile of YOLOv7-tiny (minutes on 2 cores), loaded and run by another process."""
    model = build("yolov7_tiny_320")
    module = model.export_module((64, 96), max_detections=20)
    package = package_aoti(export_program(module), tmp_path / "tiny.pt2")
    images = scenes(3, 64, 96, seed=7)
    with torch.no_grad():
        expected = module(images)
    torch.save({"images": images, "expected": expected}, tmp_path / "io.pt")
    script = (
        "import sys, torch, pydet\n"
        "from pydet.deploy import load_exported\n"
        "io = torch.load(sys.argv[2])\n"
        "model = load_exported(sys.argv[1])\n"
        "assert model.format == 'aoti', model.format\n"
        "for e, o in zip(io['expected'], model(io['images'])):\n"
        "    torch.testing.assert_close(o, e, rtol=0, atol=1e-4)\n"
        "print('same')\n")
    result = subprocess.run([sys.executable, "-c", script, str(package), str(tmp_path / "io.pt")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]
