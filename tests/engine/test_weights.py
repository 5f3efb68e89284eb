"""``build_model``/``read_weights`` (what ``--weights`` goes through): foreign checkpoints recognised by
their keys and converted, and one-line errors for weights that do not fit."""
import os
import pickle

import numpy as np
import pytest
import torch

import pydet.convert
from pydet.convert import from_detectron2
from pydet.errors import InputError
from pydet.engine.checkpoint import read_weights
from pydet.engine.model_info import build_model
from pydet.models import build

from ..models.test_rcnn_detectron2 import _Exploit, detectron2_state


def test_detectron2_pkl_builds_the_detectron2_style_model(tmp_path):
    state = detectron2_state(with_masks=False)
    path = tmp_path / "model_final_b275ba.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    model, label_map, _ = build_model("faster_rcnn_resnet50_fpn", str(path))
    assert model.num_classes == 81 and model.transform.clip_output and model.roi_heads.box_roi_pool.aligned
    assert label_map.categories[0] == {"id": 1, "name": "person"} and label_map.model_labels[:2] == [1, 2]
    for key, value in from_detectron2(state).items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(InputError, match="a detectron2 R-CNN checkpoint; use --model"):
        build_model("yolov7_tiny", str(path))


def test_weights_of_another_shape_name_the_first_key_and_both_shapes(tmp_path):
    path = tmp_path / "five_classes.pth"
    torch.save(build("faster_rcnn_resnet18_fpn", num_classes=5).state_dict(), path)
    with pytest.raises(InputError) as info:
        build_model("faster_rcnn_resnet18_fpn", str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert ("roi_heads.box_predictor.cls_score.weight has shape (5, 512) in the weights, (91, 512) in the model"
            in message)


def test_centermask2_keys_go_to_from_centermask2(tmp_path, monkeypatch):
    path = tmp_path / "centermask2.pth"
    torch.save({"model": {"proposal_generator.fcos_head.cls_logits.weight": torch.zeros(80, 256, 3, 3)}}, path)
    seen = []

    def fake(checkpoint):
        seen.append(checkpoint)
        raise ValueError("fake converter")

    monkeypatch.setattr(pydet.convert, "from_centermask2", fake, raising=False)
    with pytest.raises(InputError, match=r"cannot convert this CenterMask2 checkpoint \(fake converter\)"):
        build_model("centermask2", str(path))
    assert list(seen[0]) == ["proposal_generator.fcos_head.cls_logits.weight"]
    with pytest.raises(InputError, match="use --model centermask2"):
        build_model("faster_rcnn_resnet18_fpn", str(path))
    monkeypatch.delattr(pydet.convert, "from_centermask2")
    with pytest.raises(InputError, match="no pydet.convert.from_centermask2"):
        build_model("centermask2", str(path))


def test_pkl_weights_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2, dtype=np.float32), "x": _Exploit(marker)}}, f)
    with pytest.raises(InputError, match="cannot load weights safely .*refusing to load"):
        read_weights(path)
    assert not marker.exists() and not os.path.exists(marker)
