import math

import pytest
import torch
from torch import nn

import pydet.models
from pydet import ops
from pydet.modeling.backbones import VoVNet
from pydet.modeling.fcos import FCOS, FCOSHead, giou_loss_ltrb, sigmoid_focal_loss
from pydet.modeling.sag_mask import (MaskIoUHead, SAGMaskHead, SpatialAttention, mask_area_inside_box,
                                     maskiou_loss, maskiou_targets)
from pydet.models.centermask2 import CenterMask2, centermask2

SIZE = 128


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _scene(seed: int, height: int = SIZE, width: int = SIZE):
    """An image with a filled ellipse (class 0) and a rectangle (class 1) on a dark noisy background."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g) * 0.1
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    shift = 6 * seed
    ellipse_box = (10.0 + shift, 20.0, 60.0 + shift, 90.0)
    rect_box = (70.0, 40.0 - shift, 120.0, 110.0 - shift)
    cx, cy = (ellipse_box[0] + ellipse_box[2]) / 2, (ellipse_box[1] + ellipse_box[3]) / 2
    ellipse = ((xs - cx) / 25) ** 2 + ((ys - cy) / 35) ** 2 <= 1
    rect = (xs >= rect_box[0]) & (xs <= rect_box[2]) & (ys >= rect_box[1]) & (ys <= rect_box[3])
    image[0, ellipse] = 0.9
    image[2, rect] = 0.8
    target = {"boxes": torch.tensor([ellipse_box, rect_box]), "labels": torch.tensor([0, 1]),
              "masks": torch.stack([ellipse, rect]).to(torch.uint8)}
    return image, target


def _lite_model(**overrides) -> CenterMask2:
    torch.manual_seed(0)
    settings = dict(min_size=SIZE, max_size=SIZE)
    settings.update(overrides)
    return centermask2("vovnet19", num_classes=3, lite=True, **settings)


# ---- architecture -------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, expected", [
    ("vovnet19", 37_615_820), ("vovnet39", 52_608_972), ("vovnet57", 68_868_556), ("vovnet99", 96_914_636),
    ("resnet50", 51_227_852),
])
def test_every_backbone_builds_with_its_parameter_count(backbone, expected):
    model = centermask2(backbone)
    assert _num_params(model) == expected
    # published sizes of CenterMask2 V-39 (52.6M) and R-50 (51.2M) at 80 classes
    published = {"vovnet39": 52.6e6, "resnet50": 51.2e6}.get(backbone)
    if published is not None:
        assert abs(_num_params(model) - published) / published < 0.005
    features = model.backbone(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features.values()] == [
        (256, 8, 12), (256, 4, 6), (256, 2, 3), (256, 1, 2), (256, 1, 1)]


def test_lite_model_uses_128_channels_and_two_conv_heads():
    model = centermask2("vovnet19", lite=True)
    assert model.backbone.out_channels == 128
    assert sum(isinstance(m, nn.Conv2d) for m in model.fcos.head.cls_tower) == 2
    assert sum(isinstance(m, nn.Conv2d) for m in model.mask_head.convs) == 2
    assert model.maskiou_head.fc1.in_features == 128 * 7 * 7
    assert model.transform.min_size == (580, 600) and model.transform.max_size == 1000
    assert _num_params(model) == 20_115_788


@pytest.mark.parametrize("depth, blocks, layers", [(19, (1, 1, 1, 1), 3), (39, (1, 1, 2, 2), 5),
                                                   (57, (1, 1, 4, 3), 5), (99, (1, 3, 9, 3), 5)])
def test_vovnet_layout(depth, blocks, layers):
    net = VoVNet(depth, returned_stages=(2, 3, 4, 5))
    assert [block[0].stride[0] for block in net.stem] == [2, 1, 2]
    assert not hasattr(net.stage2, "pool")
    for stage, count in zip(range(2, 6), blocks):
        modules = getattr(net, f"stage{stage}")
        if stage > 2:
            assert modules.pool.ceil_mode and modules.pool.stride == 2
        osa = [m for name, m in modules.named_children() if name.startswith("osa")]
        assert len(osa) == count
        assert [m.residual for m in osa] == [False] + [True] * (count - 1)
        assert all(len(m.layers) == layers for m in osa)
        assert all(m.ese.fc.bias is not None for m in osa)
    # FrozenBatchNorm2d statistics are buffers, and nothing else is frozen (FREEZE_AT=0)
    assert all(p.requires_grad for p in net.parameters())
    # stride 4 after the stem, then unpadded 3x3/2 pools in ceil mode: 100 -> 25 -> 12 -> 6 -> 3, 26 -> 13
    out = net(torch.rand(1, 3, 100, 104))
    assert [tuple(f.shape[1:]) for f in out.values()] == [(256, 25, 26), (512, 12, 13), (768, 6, 6), (1024, 3, 3)]
    with pytest.raises(ValueError, match="depth"):
        VoVNet(42)
    with pytest.raises(ValueError, match="V-39-slim-eSE"):
        VoVNet(39, slim=True)


def test_vovnet19_slim_is_the_half_width_v19():
    net = VoVNet(19, slim=True, returned_stages=(2, 3, 4, 5))
    assert [m.layers[0][0].out_channels for m in (net.stage2.osa1, net.stage3.osa1, net.stage4.osa1,
                                                  net.stage5.osa1)] == [64, 80, 96, 112]
    out = net(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in out.values()] == [112, 256, 384, 512]
    assert _num_params(net) < _num_params(VoVNet(19)) / 3
    lite = centermask2("vovnet19_slim", num_classes=3, lite=True)
    assert lite.backbone.body.out_channels_list == [256, 384, 512]
    assert "centermask2_lite_vovnet19_slim" in pydet.models.available()


def test_backbone_norm_choices():
    from pydet.modeling.layers import FrozenBatchNorm2d
    default = centermask2("vovnet19", lite=True)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in default.backbone.modules())
    scratch = centermask2("vovnet19_slim", lite=True, backbone_norm="bn")
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in scratch.modules())
    bns = [m for m in scratch.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 + 4 * 4 and all(m.weight.requires_grad for m in bns)  # stem, 4 OSA modules of 3+1 convs
    with pytest.raises(ValueError, match="backbone_norm"):
        centermask2("vovnet19", backbone_norm="group")


def test_resnet50_freezes_stem_and_res2_only():
    body = centermask2("resnet50").backbone.body
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


def test_heads_shapes_and_initialisation():
    head = FCOSHead(64, 5, num_convs=4)
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in head.bbox_tower) == 4
    torch.testing.assert_close(head.cls_logits.bias, torch.full((5,), -math.log(99.0)))
    features = [torch.rand(2, 64, s, s) for s in (16, 8, 4, 2, 1)]
    logits, boxes, centerness = head(features)
    points = sum(s * s for s in (16, 8, 4, 2, 1))
    assert logits.shape == (2, points, 5) and boxes.shape == (2, points, 4) and centerness.shape == (2, points)
    assert (boxes >= 0).all()

    mask_head = SAGMaskHead(64, 5)
    assert mask_head(torch.rand(3, 64, 14, 14)).shape == (3, 5, 28, 28)
    iou_head = MaskIoUHead(64, 5)
    assert iou_head.fc1.in_features == 256 * 7 * 7
    assert iou_head(torch.rand(3, 64, 14, 14), torch.rand(3, 1, 28, 28)).shape == (3, 5)


def test_spatial_attention_multiplies_by_a_map_of_channel_mean_and_max():
    attention = SpatialAttention()
    x = torch.randn(2, 8, 5, 5)
    pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], dim=1)
    expected = x * torch.sigmoid(nn.functional.conv2d(pooled, attention.conv.weight, padding=1))
    torch.testing.assert_close(attention(x), expected)


# ---- losses and targets -------------------------------------------------------------------------

def test_sigmoid_focal_loss_formula():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = logits.sigmoid()
    p_t = torch.where(targets == 1, p, 1 - p)
    alpha_t = torch.where(targets == 1, 0.25, 0.75)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), -alpha_t * (1 - p_t) ** 2 * p_t.log())


def test_giou_loss_ltrb():
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert giou_loss_ltrb(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # the prediction covers the left half of a 4x4 target: IoU (8+1)/(16+1), same enclosing box
    pred = torch.tensor([[2.0, 2.0, 0.0, 2.0]])
    assert giou_loss_ltrb(pred, target).item() == pytest.approx(1 - 9 / 17, abs=1e-6)
    # disjoint-ish: a tiny box far off the target is penalised by the enclosing area
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert giou_loss_ltrb(far, target).item() > 0.9


def test_mask_area_inside_box_and_maskiou_target():
    masks = torch.zeros(1, 20, 20, dtype=torch.uint8)
    masks[0, 5:15, 4:12] = 1  # 80 pixels, columns 4..11
    matched = torch.tensor([0, 0, 0])
    boxes = torch.tensor([[4.0, 5.0, 12.0, 15.0], [4.0, 5.0, 8.0, 15.0], [0.0, 0.0, 3.0, 3.0]])
    torch.testing.assert_close(mask_area_inside_box(masks, boxes, matched), torch.tensor([1.0, 0.5, 0.0]))
    # a prediction equal to the cropped target: IoU 1 when the box holds the whole mask, 0.5 when half
    targets = torch.ones(2, 28, 28, dtype=torch.bool)
    logits = torch.full((2, 28, 28), 5.0)
    iou = maskiou_targets(logits, targets, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.5]))
    assert maskiou_targets(-logits, targets, torch.tensor([1.0, 1.0])).tolist() == [0.0, 0.0]
    # only positive targets count, with 0.5 x squared error
    loss = maskiou_loss(torch.tensor([0.5, 0.2, 0.9]), torch.tensor([1.0, 0.0, 0.7]))
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.04) / 2)
    assert maskiou_loss(torch.tensor([0.3]), torch.tensor([0.0])).item() == 0.0


def test_fcos_postprocess_decodes_points_scores_and_classes():
    num_classes = 4
    fcos = FCOS(FCOSHead(32, num_classes, num_convs=1), pre_nms_top_n_test=10, post_nms_top_n_test=5).eval()
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points, strides, _, level_sizes = fcos._points(sizes, torch.zeros(1))
    total = points.shape[0]
    logits = torch.full((1, total, num_classes), -10.0)
    boxes = torch.zeros(1, total, 4)
    centerness = torch.zeros(1, total)  # sigmoid 0.5
    # point (x=28, y=20) on P3 (index 2 * 8 + 3), class 2, distances (1, 1, 2, 3) strides
    logits[0, 19, 2] = 2.0
    boxes[0, 19] = torch.tensor([1.0, 1.0, 2.0, 3.0])
    # a second, overlapping detection of the same class with a lower score is suppressed
    logits[0, 20, 2] = 1.0
    boxes[0, 20] = torch.tensor([2.0, 1.0, 1.0, 3.0])
    # a class below the 0.05 threshold is dropped even with a high centerness
    logits[0, 40, 1] = -3.5
    centerness[0, 40] = 10.0
    # a P4 detection of another class reaching past the 64x64 feature extent: not clipped
    logits[0, 64 + 15, 0] = 0.0
    boxes[0, 64 + 15] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    (det,) = fcos.postprocess(logits, boxes, centerness, points, strides, level_sizes, 10, 5)
    assert det["labels"].tolist() == [2, 0]
    torch.testing.assert_close(det["scores"], torch.tensor([math.sqrt(torch.sigmoid(torch.tensor(2.0)).item() * 0.5),
                                                            math.sqrt(0.5 * 0.5)]))
    torch.testing.assert_close(det["boxes"], torch.tensor([[20.0, 12.0, 44.0, 44.0], [40.0, 40.0, 72.0, 72.0]]))
    (empty,) = fcos.postprocess(torch.full_like(logits, -10.0), boxes, centerness, points, strides, level_sizes,
                                10, 5)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64


def test_fcos_losses_vanish_for_perfect_predictions_and_normalise_by_positives():
    num_classes = 3
    fcos = FCOS(FCOSHead(32, num_classes, num_convs=1)).train()
    points, strides, size_ranges, _ = fcos._points([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], torch.zeros(1))
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([2])}
    labels, reg, _ = ops.fcos_targets(points, strides, size_ranges, target["boxes"], target["labels"], num_classes)
    positive = labels != num_classes
    assert positive.sum() > 1
    centerness_target = ops.fcos_centerness(reg[positive])
    logits = torch.full((1, len(points), num_classes), -30.0)
    logits[0, positive, 2] = 30.0
    centerness = torch.zeros(1, len(points))
    centerness[0, positive] = torch.logit(centerness_target)
    losses = fcos.losses(logits, (reg / strides[:, None])[None], centerness, points, strides, size_ranges, [target])
    assert losses["loss_fcos_cls"].item() < 1e-6 and losses["loss_fcos_loc"].item() < 1e-6
    entropy = -(centerness_target * centerness_target.log() + (1 - centerness_target) * (1 - centerness_target).log())
    torch.testing.assert_close(losses["loss_fcos_ctr"], entropy.sum() / positive.sum())

    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    logits = torch.zeros(1, len(points), num_classes)
    losses = fcos.losses(logits, torch.zeros(1, len(points), 4), centerness, points, strides, size_ranges, [empty])
    # no positives: the focal loss is summed over all points and divided by 1
    torch.testing.assert_close(losses["loss_fcos_cls"], sigmoid_focal_loss(logits, torch.zeros_like(logits)).sum())
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_fcos_ctr"].item() == 0


# ---- the model ----------------------------------------------------------------------------------

def test_training_step_gives_finite_losses_and_backbone_gradients():
    model = _lite_model().train()
    images, targets = zip(*[_scene(0), _scene(1)])
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_maskiou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0  # ground-truth boxes always reach the mask branch
    sum(losses.values()).backward()
    stem = model.backbone.body.stem[0][0].weight.grad
    assert stem is not None and stem.abs().sum() > 0
    assert model.maskiou_head.predictor.weight.grad.abs().sum() > 0
    assert model.mask_head.spatial_attention.conv.weight.grad.abs().sum() > 0


def test_loss_decreases_on_a_tiny_synthetic_set():
    model = _lite_model().train()
    # the trunk stays fixed to halve the step time (its gradients are checked above); FPN and heads learn
    model.backbone.body.requires_grad_(False)
    images, targets = zip(*[_scene(0), _scene(1)])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    history = []
    for _ in range(20):
        losses = model(list(images), list(targets))
        total = sum(losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        optimizer.zero_grad()
        total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    first, last = sum(history[0].values()), sum(history[-1].values())
    assert all(math.isfinite(sum(h.values())) for h in history)
    assert last < 0.6 * first
    assert history[-1]["loss_fcos_cls"] < 0.5 * history[0]["loss_fcos_cls"]
    assert history[-1]["loss_mask"] < history[0]["loss_mask"]


def test_eval_output_format_and_masks_pasted_with_pydet(monkeypatch):
    calls = []
    paste = ops.paste_masks

    def spy(masks, boxes, image_shape, threshold=0.5):
        calls.append((tuple(masks.shape), tuple(image_shape), threshold))
        return paste(masks, boxes, image_shape, threshold=threshold)

    monkeypatch.setattr(ops, "paste_masks", spy)
    # a zero score threshold makes the untrained model keep its top detections
    model = _lite_model(box_score_thresh=0.0, box_detections_per_img=7).eval()
    images = [_scene(0, 100, 140)[0], _scene(1, 120, 90)[0]]
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and len(calls) == 2
    for out, image, call in zip(outputs, images, calls):
        height, width = image.shape[-2:]
        num = out["boxes"].shape[0]
        assert 0 < num <= 7
        assert out["boxes"].shape == (num, 4) and out["boxes"].dtype == torch.float32
        assert out["scores"].shape == (num,)
        assert out["labels"].dtype == torch.int64 and ((out["labels"] >= 0) & (out["labels"] < 3)).all()
        assert out["masks"].shape == (num, 1, height, width) and out["masks"].dtype == torch.float32
        assert ((out["masks"] >= 0) & (out["masks"] <= 1)).all()
        # clipped in the resized image, then scaled back (up to rounding)
        assert (out["boxes"][:, 0::2] >= 0).all() and (out["boxes"][:, 0::2] <= width + 1e-3).all()
        assert (out["boxes"][:, 1::2] >= 0).all() and (out["boxes"][:, 1::2] <= height + 1e-3).all()
        assert call == ((num, 28, 28), (height, width), None)


def test_mask_score_is_detection_score_times_predicted_mask_iou():
    model = _lite_model(box_score_thresh=0.0, box_detections_per_img=5).eval()
    image = _scene(0)[0]
    outputs = []
    for predicted_iou in (1.0, 0.25):
        nn.init.zeros_(model.maskiou_head.predictor.weight)
        nn.init.constant_(model.maskiou_head.predictor.bias, predicted_iou)
        with torch.no_grad():
            outputs.append(model([image])[0])
    torch.testing.assert_close(outputs[1]["boxes"], outputs[0]["boxes"])
    # scores stay the FCOS box scores; mask_scores carry the predicted IoU
    torch.testing.assert_close(outputs[1]["scores"], outputs[0]["scores"])
    torch.testing.assert_close(outputs[0]["mask_scores"], outputs[0]["scores"])
    torch.testing.assert_close(outputs[1]["mask_scores"], 0.25 * outputs[0]["scores"])
    assert (outputs[0]["scores"][:-1] >= outputs[0]["scores"][1:]).all()


def test_zero_detections_give_well_formed_empty_outputs():
    model = _lite_model(box_score_thresh=1.0).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 96, 112)])
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
    assert out["masks"].shape == (0, 1, 96, 112) and out["masks"].dtype == torch.float32


def test_images_without_ground_truth_train():
    model = _lite_model().train()
    image, target = _scene(0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8)}
    losses = model([image, torch.rand(3, SIZE, SIZE)], [target, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model([torch.rand(3, SIZE, SIZE)], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_mask"].item() == 0
    assert losses["loss_maskiou"].item() == 0 and losses["loss_fcos_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.fcos.head.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(labels=torch.tensor([0, 3])), "labels"),
    (lambda t: t.update(labels=torch.tensor([-1, 0])), "labels"),
    (lambda t: t.update(labels=torch.tensor([0, 1], dtype=torch.int32)), "labels"),
    (lambda t: t.update(boxes=torch.tensor([[10.0, 10, 5, 20], [0, 0, 4, 4]])), "positive width"),
    (lambda t: t.update(boxes=torch.tensor([[10.0, 10, math.nan, 20], [0, 0, 4, 4]])), "finite"),
    (lambda t: t.pop("masks"), "masks"),
    (lambda t: t.update(masks=torch.zeros(2, 64, 64, dtype=torch.uint8)), "masks"),
])
def test_bad_targets_give_clear_errors(change, message):
    model = _lite_model().train()
    image, target = _scene(0)
    change(target)
    with pytest.raises(ValueError, match=message):
        model([image], [target])


def test_bad_calls_give_clear_errors():
    model = _lite_model()
    with pytest.raises(ValueError, match="targets are required"):
        model.train()([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model.eval()([torch.rand(64, 64)])
    with pytest.raises(ValueError, match="backbone"):
        centermask2("vovnet42")
    with pytest.raises(TypeError):
        centermask2("vovnet19", not_a_setting=1)


def test_registry_and_overrides():
    assert {"centermask2", "centermask2_vovnet39", "centermask2_lite_vovnet19", "centermask2_resnet50"} <= set(
        pydet.models.available())
    model = pydet.models.build("centermask2_lite_vovnet19", num_classes=3, min_size=200, max_size=300,
                               box_nms_thresh=0.5, box_detections_per_img=20, pre_nms_top_n_test=300)
    assert isinstance(model, CenterMask2) and model.num_classes == 3
    assert model.transform.min_size == (200,) and model.transform.max_size == 300
    assert model.fcos.nms_thresh == 0.5 and model.fcos.post_nms_top_n["testing"] == 20
    assert model.fcos.pre_nms_top_n["testing"] == 300
    assert model.fcos.head.cls_logits.out_channels == 3 and model.mask_head.predictor.out_channels == 3


def test_boxes_stay_unclipped_until_the_end():
    """As the official code: NMS and the mask pooler see the decoded boxes whole; only the output is clipped."""
    model = _lite_model(box_score_thresh=0.0, box_detections_per_img=20).eval()
    nn.init.constant_(model.fcos.head.bbox_pred.bias, 3.0)  # every box reaches 3 strides from its point
    pooled, iou = [], []
    model.mask_pooler.register_forward_pre_hook(lambda module, args: pooled.append(torch.cat(args[1])))
    model.maskiou_head.register_forward_hook(lambda module, args, output: iou.append(output))
    with torch.no_grad():
        (out,) = model([_scene(0)[0]])
    (boxes,) = pooled
    assert ((boxes[:, :2] < 0) | (boxes[:, 2:] > SIZE)).any(), "some detections should cross the border"
    torch.testing.assert_close(out["boxes"], ops.clip_boxes_to_image(boxes, (SIZE, SIZE)))
    # mask_scores: the box score times the MaskIoU prediction of the detection's own class
    (predicted,) = iou
    torch.testing.assert_close(out["mask_scores"], out["scores"] * predicted[torch.arange(len(boxes)), out["labels"]])


def test_resnet_backbone_takes_stride_in_1x1():
    with torch.device("meta"):
        msra = centermask2("resnet50", stride_in_1x1=True)
        default = centermask2("resnet50")
    assert msra.backbone.body.layer2[0].conv1.stride == (2, 2) and msra.backbone.body.layer2[0].conv2.stride == (1, 1)
    assert default.backbone.body.layer2[0].conv1.stride == (1, 1)
    with pytest.raises(ValueError, match="stride_in_1x1"):
        centermask2("vovnet39", stride_in_1x1=True)
