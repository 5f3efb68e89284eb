"""Faster / Mask R-CNN deployment (API.md, Deployment): ``export_module`` against eager inference, the
``torch.export`` program with a dynamic batch, ONNX run by onnxruntime, and (slow) AOTInductor and the
ResNet-50 presets.

The small presets run at 96x128 (resized to 120x160) with 5 classes and score threshold 0.3, where the
test batch has detection counts that differ between images, one of them zero (checked, not assumed).
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pydet import ops
from pydet.deploy import export_onnx, export_program, load_exported, package_aoti
from pydet.deploy.rcnn import RCNNExport
from pydet.models import build

ROOT = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 96, 128
TINY = dict(num_classes=5, min_size=128, max_size=160, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
            box_score_thresh=0.3)
SMALL = ["faster_rcnn_resnet18_fpn", "mask_rcnn_resnet18_fpn"]
MAX_DETECTIONS = 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny images: OpenMP synchronisation costs more than a second thread saves on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_images(batch: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """Random images, every second one flat grey (no detection with the small presets' weights at seed 0),
    every third one darker."""
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(7))
    images[1::2] = 0.5
    images[2::3] *= 0.5
    return images


def small_model(name: str, **overrides):
    torch.manual_seed(0)
    return build(name, **{**TINY, **overrides}).eval()


@pytest.fixture(scope="module", params=SMALL)
def small(request):
    model = small_model(request.param)
    return model, model.export_module((HEIGHT, WIDTH), max_detections=MAX_DETECTIONS)


@pytest.fixture(scope="module")
def exported(small):
    _, module = small
    return export_program(module, sample_images(2))


@pytest.fixture(scope="module")
def onnx_model(small, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (the export extra)")
    model, module = small
    path = tmp_path_factory.mktemp("onnx") / f"{type(model).__name__}-{int(module.has_masks)}.onnx"
    return load_exported(export_onnx(module, path, sample_images(2)))


def eager_detections(model, images):
    with torch.no_grad():
        return model(list(images))


def assert_matches_eager(outputs, eager, image_size=(HEIGHT, WIDTH), *, box_tol=1e-3, score_tol=1e-5, mask_tol=1e-5):
    """The fixed-size outputs are eager's detections (their first D), padded with zero boxes and scores,
    label -1 and zero masks. The default tolerances allow for float rounding only: the same kernels run on
    other batch sizes (the mask head on D rows per image where eager runs it on its detections)."""
    boxes, scores, labels, num_detections = (torch.as_tensor(o) for o in outputs[:4])
    masks = torch.as_tensor(outputs[4]) if len(outputs) > 4 else None
    rows = boxes.shape[1]
    assert num_detections.dtype == labels.dtype == torch.int64
    assert num_detections.tolist() == [min(len(d["boxes"]), rows) for d in eager]
    for i, det in enumerate(eager):
        n = int(num_detections[i])
        assert torch.equal(labels[i, :n], det["labels"][:n])
        torch.testing.assert_close(boxes[i, :n], det["boxes"][:n], atol=box_tol, rtol=0)
        torch.testing.assert_close(scores[i, :n], det["scores"][:n], atol=score_tol, rtol=0)
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()
        if masks is not None:
            assert masks.shape[:2] == (boxes.shape[0], rows) and (masks[i, n:] == 0).all()
            pasted = ops.paste_masks(masks[i, :n], boxes[i, :n], image_size, threshold=None)
            torch.testing.assert_close(pasted, det["masks"][:n, 0], atol=mask_tol, rtol=0)


def test_sample_images_have_different_counts_and_an_empty_image(small):
    model, _ = small
    counts = [len(d["boxes"]) for d in eager_detections(model, sample_images(3))]
    assert 0 in counts and len(set(counts)) == 3 and max(counts) < MAX_DETECTIONS, counts


def test_module_equals_eager(small):
    model, module = small
    assert isinstance(module, RCNNExport)
    images = sample_images(3)
    with torch.no_grad():
        outputs = module(images)
    assert len(outputs) == (5 if model.roi_heads.has_mask else 4)
    assert outputs[0].shape == (3, MAX_DETECTIONS, 4)
    assert_matches_eager(outputs, eager_detections(model, images))


@pytest.mark.parametrize("max_detections", [7, 120], ids=["truncated", "padded"])
def test_max_detections_truncates_or_pads(max_detections):
    model = small_model("mask_rcnn_resnet18_fpn", box_score_thresh=0.05, box_detections_per_img=60)
    images = sample_images(2)
    with torch.no_grad():
        outputs = model.export_module((HEIGHT, WIDTH), max_detections=max_detections)(images)
    eager = eager_detections(model, images)
    assert max(len(d["boxes"]) for d in eager) == 60
    assert outputs[0].shape == (2, max_detections, 4) and outputs[4].shape == (2, max_detections, 28, 28)
    assert_matches_eager(outputs, eager)


def test_every_image_empty():
    model = small_model("mask_rcnn_resnet18_fpn", box_score_thresh=1.0)
    with torch.no_grad():
        boxes, scores, labels, num_detections, masks = model.export_module((HEIGHT, WIDTH))(sample_images(2))
    assert num_detections.tolist() == [0, 0]
    assert (labels == -1).all() and not boxes.any() and not scores.any() and not masks.any()


def test_other_sizes_and_aspect_ratios():
    """A portrait size that the transform scales down to max_size, and one already at the resized size."""
    model = small_model("faster_rcnn_resnet18_fpn", box_score_thresh=0.05)
    for size in [(300, 100), (128, 160)]:
        images = sample_images(2, *size)
        with torch.no_grad():
            outputs = model.export_module(size)(images)
        assert_matches_eager(outputs, eager_detections(model, images), size)


def test_exported_program_dynamic_batch(small, exported):
    model, _ = small
    for batch in (1, 3):
        images = sample_images(batch)
        assert_matches_eager(exported.module()(images), eager_detections(model, images))


def test_onnxruntime_dynamic_batch(small, onnx_model):
    """Standard ONNX (no custom domain) run by onnxruntime: eager's detections within float rounding."""
    model, _ = small
    for batch in (1, 3):
        images = sample_images(batch)
        outputs = onnx_model(images)
        assert outputs[2].dtype == outputs[3].dtype == torch.int64
        assert_matches_eager(outputs, eager_detections(model, images), box_tol=1e-2, score_tol=1e-4, mask_tol=1e-4)


def test_onnx_decode_equals_kernel(monkeypatch):
    """The ONNX form of decode_boxes is the kernel's arithmetic, including the clamp of large dw/dh."""
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([boxes, boxes + torch.rand(50, 2, generator=generator) * 50], 1)
    codes = torch.randn(50, 12, generator=generator) * 2
    codes[0, 2] = 40.0
    weights = (10.0, 10.0, 5.0, 5.0)
    expected = ops.decode_boxes(codes, boxes, weights)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    torch.testing.assert_close(ops.decode_boxes(codes, boxes, weights), expected, atol=1e-4, rtol=1e-6)


def test_bad_arguments():
    model = small_model("faster_rcnn_resnet18_fpn")
    with pytest.raises(ValueError, match="image_size"):
        model.export_module((96,))
    with pytest.raises(ValueError, match="image_size"):
        model.export_module((0, 96))
    with pytest.raises(ValueError, match="max_detections"):
        model.export_module((96, 128), max_detections=2.5)
    with pytest.raises(ValueError, match="max_detections"):
        model.export_module((96, 128), max_detections=0)
    module = model.export_module((96, 128))
    with pytest.raises(ValueError, match="images must be 96x128"):
        module(torch.rand(1, 3, 64, 128))
    with pytest.raises(ValueError, match=r"images must be a \[B, 3, H, W\]"):
        module(torch.rand(3, 96, 128))
    with pytest.raises(ValueError, match="floating point"):
        module(torch.zeros(1, 3, 96, 128, dtype=torch.uint8))


AOTI_RUNNER = """
import sys, torch
import pydet  # registers the pydet ops the package calls
package, inputs, outputs = sys.argv[1:]
module = torch._inductor.aoti_load_package(package)
torch.save([list(module(x)) for x in torch.load(inputs)], outputs)
"""


@pytest.mark.full_export
def test_aoti_package_in_fresh_process(tmp_path):
    """AOTInductor package of the small Mask R-CNN, loaded and run in another process (a few minutes)."""
    model = small_model("mask_rcnn_resnet18_fpn")
    module = model.export_module((HEIGHT, WIDTH), max_detections=MAX_DETECTIONS)
    package = package_aoti(export_program(module, sample_images(2)), tmp_path / "mask_rcnn.pt2")
    batches = [sample_images(1), sample_images(3)]
    torch.save(batches, tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", AOTI_RUNNER, str(package), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "outputs.pt")], check=True, cwd=ROOT)
    for images, outputs in zip(batches, torch.load(tmp_path / "outputs.pt")):
        # Inductor's fused kernels round differently: the ONNX tolerances.
        assert_matches_eager(outputs, eager_detections(model, images), box_tol=1e-2, score_tol=1e-4, mask_tol=1e-4)


@pytest.mark.full_export
@pytest.mark.parametrize("name", ["faster_rcnn_resnet50_fpn", "mask_rcnn_resnet50_fpn"])
def test_resnet50_export_dynamic_batch(name):
    """The torchvision-sized presets at their default settings (800x1066 after resizing, 1000 proposals,
    100 detections with random weights): the exported program against eager for batches of 1 and 3."""
    torch.manual_seed(0)
    model = build(name).eval()
    module = model.export_module((480, 640))
    program = export_program(module, sample_images(2, 480, 640))
    for batch in (1, 3):
        images = sample_images(batch, 480, 640)
        eager = eager_detections(model, images)
        assert len(eager[0]["boxes"]) == 100
        assert_matches_eager(program.module()(images), eager, (480, 640))
