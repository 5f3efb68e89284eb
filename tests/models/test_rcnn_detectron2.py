"""R-CNN ``style="detectron2"`` and ``pydet.convert.from_detectron2``.

The end-to-end comparison with detectron2's own code needs its source tree and is in
``tools/compare_detectron2.py`` (results in ``benchmarks/results/cpu-detectron2.json``); these tests check
each setting against detectron2's formulas and the conversion's layouts.
"""
import math
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pydet.convert import from_detectron2
from pydet.convert._normalization import fold_input_normalisation, load_numpy_pickle
from pydet.models import build
from pydet.modeling.anchor_generator import AnchorGenerator
from pydet.modeling.poolers import detectron2_levels
from pydet.modeling.rpn import RegionProposalNetwork, RPNHead
from pydet.modeling.transform import IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform
from pydet.structures import ImageList

_PLAIN_RENAMES = {
    "backbone.body.conv1.": "backbone.bottom_up.stem.conv1.",
    "backbone.body.bn1.": "backbone.bottom_up.stem.conv1.norm.",
    ".downsample.0.": ".shortcut.", ".downsample.1.": ".shortcut.norm.",
    "rpn.head.conv.0.0.": "proposal_generator.rpn_head.conv.",
    "rpn.head.cls_logits.": "proposal_generator.rpn_head.objectness_logits.",
    "rpn.head.bbox_pred.": "proposal_generator.rpn_head.anchor_deltas.",
    "box_head.fc6.": "box_head.fc1.", "box_head.fc7.": "box_head.fc2.",
    "mask_predictor.conv5_mask.": "mask_head.deconv.", "mask_predictor.mask_fcn_logits.": "mask_head.predictor.",
}


def detectron2_name(key):
    """pydet name -> detectron2 name: the converter's renaming backwards, written independently."""
    key = re.sub(r"body\.layer(\d)", lambda m: f"body.res{int(m[1]) + 1}", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    key = re.sub(r"fpn\.inner_blocks\.(\d)\.0\.", lambda m: f"fpn_lateral{int(m[1]) + 2}.", key)
    key = re.sub(r"fpn\.layer_blocks\.(\d)\.0\.", lambda m: f"fpn_output{int(m[1]) + 2}.", key)
    key = re.sub(r"mask_head\.(\d)\.0\.", lambda m: f"mask_head.mask_fcn{int(m[1]) + 1}.", key)
    for old, new in _PLAIN_RENAMES.items():
        key = key.replace(old, new)
    return key.replace("backbone.body.res", "backbone.bottom_up.res")


def detectron2_state(num_classes=80, with_masks=True, seed=0):
    """A random state dict with detectron2's names and layouts for its R50-FPN R-CNN."""
    model = build("mask_rcnn_resnet50_fpn" if with_masks else "faster_rcnn_resnet50_fpn",
                  num_classes=num_classes + 1, style="detectron2")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        offset = 1.0 if "running_var" in key else 0.0
        state[detectron2_name(key)] = torch.randn(value.shape, generator=gen) * 0.1 + offset
    # detectron2's predictor layouts: background logit last, no background box row or mask map.
    for kind in ("weight", "bias"):
        state[f"roi_heads.box_predictor.cls_score.{kind}"] = state[f"roi_heads.box_predictor.cls_score.{kind}"]
        state[f"roi_heads.box_predictor.bbox_pred.{kind}"] = state[f"roi_heads.box_predictor.bbox_pred.{kind}"][4:]
        if with_masks:
            state[f"roi_heads.mask_head.predictor.{kind}"] = state[f"roi_heads.mask_head.predictor.{kind}"][1:]
    return state


@pytest.fixture(scope="module")
def d2_mask_state():
    return detectron2_state()


def test_style_sets_detectron2_settings_and_overrides_win():
    model = build("faster_rcnn_resnet18_fpn", num_classes=3, style="detectron2", roi_sampling_ratio=2)
    pool = model.roi_heads.box_roi_pool
    assert pool.aligned and pool.assign_rule == "detectron2" and pool.sampling_ratio == 2
    assert model.rpn.strict_min_size and model.rpn.nms_on_logits and model.rpn.min_size == 0
    assert model.roi_heads.min_box_size == 0 and model.transform.clip_output
    assert model.transform.resize_rule == "detectron2" and model.rpn.smooth_l1_beta == 0
    assert model.rpn.anchor_generator.strides == [(s, s) for s in (4, 8, 16, 32, 64)]
    default = build("faster_rcnn_resnet18_fpn", num_classes=3)
    assert not default.roi_heads.box_roi_pool.aligned and default.rpn.anchor_generator.strides is None
    assert not default.transform.clip_output and default.roi_heads.min_box_size == 1e-2
    with pytest.raises(ValueError, match="style"):
        build("faster_rcnn_resnet18_fpn", num_classes=3, style="mmdet")


def test_anchors_equal_detectron2_formula():
    sizes, ratios, strides = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64)
    generator = AnchorGenerator(tuple((s,) for s in sizes), (ratios,), rounded=False, strides=strides)
    # A 96x160 batch: P6 has 2x3 cells, from which torchvision would infer a stride of 48 (96 // 2).
    feature_sizes = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    maps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    anchors = generator(ImageList(torch.zeros(1, 3, 96, 160), [(96, 160)]), maps)[0]
    expected = []
    for size, stride, (h, w) in zip(sizes, strides, feature_sizes):
        cells = []
        for ratio in ratios:  # detectron2: w = sqrt(size^2 / ratio), h = ratio * w, centred on the cell origin
            aw = math.sqrt(size * size / ratio)
            ah = ratio * aw
            cells.append([-aw / 2, -ah / 2, aw / 2, ah / 2])
        cells = torch.tensor(cells, dtype=torch.float64)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) * stride,
                                torch.arange(w, dtype=torch.float64) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        expected.append((shifts + cells[None]).reshape(-1, 4))
    expected = torch.cat(expected)
    assert anchors.dtype == torch.float32 and anchors.shape == expected.shape
    torch.testing.assert_close(anchors.double(), expected, rtol=0, atol=1e-4)
    assert not torch.equal(anchors, anchors.round())  # torchvision would round them


def test_detectron2_levels_follow_its_formula():
    gen = torch.Generator().manual_seed(0)
    sides = torch.cat([torch.rand(200, generator=gen) * 900 + 1,
                       torch.tensor([56.0, 112.0, 224.0, 448.0, 111.99999, 224.00002])])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    expected = torch.floor(4 + torch.log2(sides.double() / 224 + 1e-8)).clamp(2, 5).long() - 2
    assert torch.equal(detectron2_levels(boxes.double(), 2, 5), expected)
    nan_box = torch.tensor([[0.0, 0.0, float("nan"), 1.0]])
    assert detectron2_levels(nan_box, 2, 5).tolist() == [-1]


def test_rpn_detectron2_ranks_by_logits_and_drops_empty_boxes():
    def proposals(**kw):
        anchors = AnchorGenerator(((16,),), ((1.0,),))
        rpn = RegionProposalNetwork(anchors, RPNHead(1, 1), pre_nms_top_n_test=10, post_nms_top_n_test=10, **kw).eval()
        # Two overlapping boxes whose sigmoids tie at 1.0 in float32, and one box outside the image.
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [30.0, 0.0, 40.0, 10.0]])
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        anchors_ = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + widths, boxes[:, 1] + heights], 1)
        logits = torch.tensor([[30.0, 31.0, 40.0]])
        return rpn.filter_proposals(logits, torch.zeros(1, 3, 4), anchors_, [(20, 20)], [3])[0]

    # The third box clips to zero width: kept at min_size 0 with >=, dropped by detectron2's strict rule.
    assert proposals(min_size=0.0).shape[0] == 2
    detectron2 = proposals(min_size=0.0, strict_min_size=True, nms_on_logits=True)
    assert detectron2.tolist() == [[0.0, 0.0, 10.0, 9.0]]  # the higher logit wins the NMS


def test_clip_output_drops_boxes_left_empty():
    transform = GeneralizedRCNNTransform(clip_output=True)
    det = {"boxes": torch.tensor([[-5.0, 2.0, 30.0, 50.0], [45.0, 0.0, 60.0, 10.0]]),
           "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2]), "masks": torch.zeros(2, 1, 28, 28)}
    out = transform.postprocess([det], [(40, 40)], [(40, 40)])[0]
    assert out["boxes"].tolist() == [[0.0, 2.0, 30.0, 40.0]] and out["labels"].tolist() == [1]
    assert out["masks"].shape == (1, 1, 28, 28)


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_folded_normalisation_is_exact_including_borders(input_format):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 7, 7, generator=gen, dtype=torch.float64)
    pixel_mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255
    pixel_std = torch.tensor([57.4, 57.1, 58.4], dtype=torch.float64)
    order = [2, 1, 0] if input_format == "BGR" else [0, 1, 2]
    image = torch.rand(1, 3, 20, 24, generator=gen, dtype=torch.float64)  # RGB in [0, 1]
    theirs = (255 * image[:, order] - pixel_mean[order].view(1, 3, 1, 1)) / pixel_std[order].view(1, 3, 1, 1)
    ours = (image - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    folded = fold_input_normalisation(weight, pixel_mean[order].tolist(), pixel_std[order].tolist(), input_format)
    torch.testing.assert_close(F.conv2d(ours, folded, stride=2, padding=3),
                               F.conv2d(theirs, weight, stride=2, padding=3), rtol=1e-12, atol=1e-10)
    with pytest.raises(ValueError, match="cannot be folded"):
        fold_input_normalisation(weight, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="input_format"):
        fold_input_normalisation(weight, pixel_mean.tolist(), [1.0] * 3, "YUV")


@pytest.mark.parametrize("agnostic", [False, True])
def test_box_predictor_layout_gives_the_same_probabilities_and_deltas(d2_mask_state, agnostic):
    state = dict(d2_mask_state)
    if agnostic:  # CLS_AGNOSTIC_BBOX_REG: one set of deltas for every class
        for kind in ("weight", "bias"):
            state[f"roi_heads.box_predictor.bbox_pred.{kind}"] = state[f"roi_heads.box_predictor.bbox_pred.{kind}"][:4]
    ours = from_detectron2(state)
    x = torch.randn(5, 1024, generator=torch.Generator().manual_seed(1))
    def linear(weights, name):
        return F.linear(x, weights[f"roi_heads.box_predictor.{name}.weight"], weights[f"roi_heads.box_predictor.{name}.bias"])

    theirs_logits, theirs_deltas = linear(state, "cls_score"), linear(state, "bbox_pred")
    logits, deltas = linear(ours, "cls_score"), linear(ours, "bbox_pred")
    probs, theirs_probs = logits.softmax(-1), theirs_logits.softmax(-1)
    torch.testing.assert_close(probs[:, 1:], theirs_probs[:, :-1])  # detectron2 class k is pydet label k + 1
    torch.testing.assert_close(probs[:, 0], theirs_probs[:, -1])
    expected = theirs_deltas.repeat(1, 80) if agnostic else theirs_deltas
    torch.testing.assert_close(deltas[:, 4:], expected)
    masks = ours["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert masks.shape[0] == 81 and torch.equal(masks[1:], state["roi_heads.mask_head.predictor.weight"])


def test_converted_state_loads_strictly_and_round_trips(d2_mask_state):
    model = build("mask_rcnn_resnet50_fpn", num_classes=81, style="detectron2")
    converted = from_detectron2({"model": d2_mask_state, "__author__": "test"})
    model.load_state_dict(converted, strict=True)
    own = model.state_dict()
    renamed = {k: v for k, v in d2_mask_state.items() if "predictor" not in k and "stem.conv1.weight" not in k}
    assert len(renamed) == len(own) - 7  # conv1 and the six predictor tensors are converted, not renamed
    for key, value in own.items():  # every other tensor is the detectron2 tensor unchanged
        if detectron2_name(key) in renamed:
            assert torch.equal(value, renamed[detectron2_name(key)]), key
    faster = build("faster_rcnn_resnet50_fpn", num_classes=81, style="detectron2")
    faster.load_state_dict(from_detectron2(detectron2_state(with_masks=False)), strict=True)


def test_pkl_of_numpy_arrays_with_old_entries(d2_mask_state, tmp_path):
    arrays = {k: v.numpy() for k, v in d2_mask_state.items()}
    arrays["pixel_mean"] = np.array([103.53, 116.28, 123.675], dtype=np.float32).reshape(3, 1, 1)
    arrays["pixel_std"] = np.array([2.0, 2.0, 2.0], dtype=np.float32).reshape(3, 1, 1)
    for level, size in enumerate((32, 64, 128, 256, 512)):
        cells = [[-w / 2, -r * w / 2, w / 2, r * w / 2] for r in (0.5, 1.0, 2.0) for w in [math.sqrt(size ** 2 / r)]]
        arrays[f"proposal_generator.anchor_generator.cell_anchors.{level}"] = np.array(cells, dtype=np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    converted = from_detectron2(path)
    expected = from_detectron2(d2_mask_state, pixel_std=(2.0, 2.0, 2.0))
    assert converted.keys() == expected.keys()
    for key in expected:
        assert torch.equal(converted[key], expected[key]), key
    arrays["proposal_generator.anchor_generator.cell_anchors.0"] = np.round(arrays[
        "proposal_generator.anchor_generator.cell_anchors.0"])  # torchvision's rounded anchors: another model
    with pytest.raises(ValueError, match="cell_anchors.0"):
        from_detectron2({"model": arrays})


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pkl_that_calls_anything_else_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2, dtype=np.float32), "x": _Exploit(marker)}}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|os|nt).system"):
        load_numpy_pickle(str(path))
    with pytest.raises(pickle.UnpicklingError):
        from_detectron2(path)
    assert not marker.exists()


def test_conversion_errors(d2_mask_state, tmp_path):
    with pytest.raises(ValueError, match="backbone.bottom_up.res9.0.weird"):
        from_detectron2({**d2_mask_state, "backbone.bottom_up.res9.0.weird": torch.zeros(1)})
    with pytest.raises(ValueError, match="cannot be folded"):
        from_detectron2(d2_mask_state, pixel_mean=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not a detectron2 R-CNN"):
        from_detectron2({"backbone.fpn_lateral2.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="expected a detectron2 checkpoint"):
        from_detectron2([1, 2])
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        from_detectron2(tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match="not numbers"):
        from_detectron2({"model": {**{k: v.numpy() for k, v in d2_mask_state.items()},
                                   "roi_heads.box_head.fc1.bias": np.array(["a"])}})


def test_detectron2_style_trains_with_l1_box_losses():
    from pydet.modeling.roi_heads import fastrcnn_loss

    gen = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(6, 3, generator=gen), torch.randn(6, 12, generator=gen)
    labels, targets = torch.tensor([0, 1, 2, 1, 0, 2]), torch.randn(6, 4, generator=gen)
    sampled = torch.tensor([True, True, True, True, True, False])
    _, box_loss = fastrcnn_loss(logits, deltas, labels, targets, sampled, beta=0.0)
    positive = sampled & (labels > 0)
    chosen = deltas.view(6, 3, 4)[torch.arange(6), labels]
    torch.testing.assert_close(box_loss, (chosen - targets).abs()[positive].sum() / sampled.sum())

    torch.manual_seed(0)
    model = build("mask_rcnn_resnet18_fpn", num_classes=3, style="detectron2", min_size=64, max_size=96).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[:, 10:40, 12:50] = 1
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 72, 64, dtype=torch.uint8)}]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    arrays = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)}, "__author__": "x"}
    data = pickle.dumps(arrays, protocol=protocol)
    if protocol <= 3:  # files written by numpy < 2 name numpy.core (unframed protocols: a plain rename)
        data = data.replace(b"numpy._core.", b"numpy.core.")
    (tmp_path / "a.pkl").write_bytes(data)
    loaded = load_numpy_pickle(str(tmp_path / "a.pkl"))
    assert loaded["__author__"] == "x" and loaded["model"]["n"] == 3
    assert np.array_equal(loaded["model"]["w"], arrays["model"]["w"])


def test_detectron2_resize_rounds_the_size_and_resamples_like_pil():
    Image = pytest.importorskip("PIL.Image")
    transform = GeneralizedRCNNTransform(800, 1333, resize_rule="detectron2").eval()
    rng = np.random.default_rng(0)
    pixels = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).resize((320, 240), Image.BILINEAR).resize((640, 480)))  # smooth
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    resized, _ = transform.resize(image, None)
    assert resized.shape == (3, 800, 1067)  # 640 * 800 / 480 = 1066.7: torchvision floors to 1066
    pil = np.asarray(Image.fromarray(pixels).resize((1067, 800), Image.BILINEAR)).astype(np.float32) / 255
    assert np.abs(resized.permute(1, 2, 0).numpy() - pil).max() < 3 / 255
    torchvision_rule = GeneralizedRCNNTransform(800, 1333).eval()
    assert torchvision_rule.resize(image, None)[0].shape == (3, 800, 1066)
    identity = torch.rand(3, 800, 1066)
    assert torch.equal(transform.resize(identity, None)[0], identity)


@pytest.mark.parametrize("size, expected", [((480, 640), (800, 1067)), ((640, 480), (1067, 800)),
                                            ((500, 1500), (444, 1333)), ((600, 600), (800, 800)),
                                            ((800, 1066), (800, 1066))])
def test_detectron2_resized_size(size, expected):
    from pydet.modeling.transform import detectron2_resized_size

    assert detectron2_resized_size(*size, 800, 1333) == expected
