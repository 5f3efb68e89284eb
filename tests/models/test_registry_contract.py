"""Every registered model keeps the contract its ModelSpec states: it builds, takes a training step on
synthetic data, evaluates with the documented output keys and types, and round-trips its state dict."""
from __future__ import annotations

import pytest
import torch

from pydet import models
from pydet.data import SyntheticShapes

NUM_DATASET_CLASSES = 3
IMAGE_SIZE = 64


def _batch(spec: models.ModelSpec):
    data = SyntheticShapes(num_images=2, image_size=IMAGE_SIZE, num_classes=NUM_DATASET_CLASSES, seed=0)
    images, targets = [], []
    for image, target in (data[0], data[1]):
        images.append(image)
        model_target = {"boxes": target["boxes"], "labels": target["labels"] + spec.label_offset}
        if spec.has_masks:
            model_target["masks"] = target["masks"]
        targets.append(model_target)
    return images, targets


def _build(name: str, spec: models.ModelSpec):
    torch.manual_seed(0)
    return models.build(name, num_classes=NUM_DATASET_CLASSES + spec.label_offset, **spec.input_size(IMAGE_SIZE))


@pytest.mark.parametrize("name", models.available())
def test_registered_model_contract(name):
    spec = models.spec(name)
    model = _build(name, spec)
    images, targets = _batch(spec)

    losses = model.train()(images, targets)
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    expected_keys = {"boxes", "scores", "labels"} | ({"masks"} if spec.has_masks else set())
    for image, out in zip(images, outputs):
        assert expected_keys <= set(out), (name, sorted(out))
        assert ("masks" in out) == spec.has_masks
        d = len(out["scores"])
        assert out["boxes"].shape == (d, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (d,) and out["labels"].dtype == torch.int64
        assert bool(((out["labels"] >= spec.label_offset) & (out["labels"] < NUM_DATASET_CLASSES + spec.label_offset)).all())
        if spec.has_masks:
            assert out["masks"].shape == (d, 1, *image.shape[-2:])

    state = model.state_dict()
    clone = _build(name, spec)
    clone.load_state_dict(state)  # strict: a fresh build has exactly these keys and shapes
    for key, value in clone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_names_read_dashes_as_underscores():
    assert models.canonical_name("yolov7-tiny") == "yolov7_tiny"
    assert models.spec("yolov7-tiny") is models.spec("yolov7_tiny")
    with pytest.raises(ValueError, match="unknown model 'yolov8'"):
        models.spec("yolov8")


def test_register_refuses_duplicates_and_missing_specs():
    with pytest.raises(ValueError, match="registered twice"):
        models.register("yolov7", models.yolov7, models.spec("yolov7"))
    with pytest.raises(TypeError, match="must be a ModelSpec"):
        models.register("a_new_model", models.yolov7, {"has_masks": False})
    assert "a_new_model" not in models.available()


@pytest.mark.parametrize("name", ["faster_rcnn_resnet18_fpn", "mask_rcnn_resnet18_fpn", "yolov7_tiny_320",
                                  "centermask2_lite_vovnet19_slim"])
def test_bad_inputs_are_one_clear_error_in_every_family(name):
    spec = models.spec(name)
    model = _build(name, spec)
    with pytest.raises(ValueError, match=r"images\[0\] is empty"):
        model.eval()([torch.rand(3, 0, 5)])
    images, targets = _batch(spec)
    targets[1]["boxes"] = targets[1]["boxes"].clone()
    targets[1]["boxes"][0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"targets\[1\] has a box that is not finite"):
        model.train()(images, targets)
    targets[1]["boxes"][0, 2] = 1e4
    targets[1]["labels"] = targets[1]["labels"].clone()
    targets[1]["labels"][0] = NUM_DATASET_CLASSES + spec.label_offset
    with pytest.raises(ValueError, match=rf"targets\[1\] has label {NUM_DATASET_CLASSES + spec.label_offset}"):
        model.train()(images, targets)
