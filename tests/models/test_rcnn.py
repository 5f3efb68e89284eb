"""Faster / Mask R-CNN: architecture against torchvision's key names, batched post-processing against
torchvision's per-image order of operations, training and inference behaviour on CPU."""
import pytest
import torch
from torch import nn

from pydet import ops
from pydet.convert import from_torchvision
from pydet.modeling.layers import FrozenBatchNorm2d
from pydet.modeling.matcher import BalancedPositiveNegativeSampler, Matcher
from pydet.modeling.roi_heads import project_masks_on_boxes
from pydet.models import (available, build, faster_rcnn_resnet18_fpn, faster_rcnn_resnet50_fpn,
                          mask_rcnn_resnet18_fpn, mask_rcnn_resnet50_fpn)
from pydet.models.generalized_rcnn import _SMALL_DEFAULTS, build_rcnn
from tests.conftest import random_boxes

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here run on 128-pixel images: per-op work is so small that OpenMP synchronisation
    costs more than a second thread saves (several times more when the two cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Settings that keep the small presets fast in tests.
TINY = dict(min_size=128, max_size=160, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64,
            box_batch_size_per_image=64)


def torchvision_state_dict_shapes(with_masks: bool, num_classes: int = 91) -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` state dict
    (torchvision >= 0.13 names, frozen BatchNorm) and its shape, written from torchvision's architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def frozen_bn(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)

    def conv(prefix, out_c, in_c, k, bias=True):
        shapes[f"{prefix}.weight"] = (out_c, in_c, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (out_c,)

    conv("backbone.body.conv1", 64, 3, 7, bias=False)
    frozen_bn("backbone.body.bn1", 64)
    in_c = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"backbone.body.layer{stage}.{b}"
            conv(f"{p}.conv1", width, in_c, 1, bias=False)
            frozen_bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3, bias=False)
            frozen_bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1, bias=False)
            frozen_bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", width * 4, in_c, 1, bias=False)
                frozen_bn(f"{p}.downsample.1", width * 4)
            in_c = width * 4
    for i, c in enumerate((256, 512, 1024, 2048)):
        conv(f"backbone.fpn.inner_blocks.{i}.0", 256, c, 1)
        conv(f"backbone.fpn.layer_blocks.{i}.0", 256, 256, 3)
    conv("rpn.head.conv.0.0", 256, 256, 3)
    conv("rpn.head.cls_logits", 3, 256, 1)
    conv("rpn.head.bbox_pred", 12, 256, 1)
    shapes.update({
        "roi_heads.box_head.fc6.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc6.bias": (1024,),
        "roi_heads.box_head.fc7.weight": (1024, 1024), "roi_heads.box_head.fc7.bias": (1024,),
        "roi_heads.box_predictor.cls_score.weight": (num_classes, 1024),
        "roi_heads.box_predictor.cls_score.bias": (num_classes,),
        "roi_heads.box_predictor.bbox_pred.weight": (num_classes * 4, 1024),
        "roi_heads.box_predictor.bbox_pred.bias": (num_classes * 4,),
    })
    if with_masks:
        for i in range(4):
            conv(f"roi_heads.mask_head.{i}.0", 256, 256, 3)
        shapes["roi_heads.mask_predictor.conv5_mask.weight"] = (256, 256, 2, 2)  # ConvTranspose2d: in, out
        shapes["roi_heads.mask_predictor.conv5_mask.bias"] = (256,)
        conv("roi_heads.mask_predictor.mask_fcn_logits", num_classes, 256, 1)
    return shapes


def _is_buffer(key):
    return ".bn" in key or "downsample.1" in key  # frozen BatchNorm: buffers, not parameters


@pytest.fixture(scope="module")
def r50_models():
    torch.manual_seed(0)
    return {False: faster_rcnn_resnet50_fpn(), True: mask_rcnn_resnet50_fpn()}


@pytest.mark.parametrize("with_masks, expected", [(False, 41_755_286), (True, 44_401_393)])
def test_parameter_counts_match_torchvision(r50_models, with_masks, expected):
    model = r50_models[with_masks]
    assert sum(p.numel() for p in model.parameters()) == expected
    # The key list above describes the same architecture: its non-BatchNorm entries add up the same.
    spec = torchvision_state_dict_shapes(with_masks)
    assert sum(torch.Size(s).numel() for k, s in spec.items() if not _is_buffer(k)) == expected


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("legacy", [False, True])
def test_from_torchvision_maps_every_key(r50_models, with_masks, legacy):
    model = r50_models[with_masks]
    spec = torchvision_state_dict_shapes(with_masks)
    g = torch.Generator().manual_seed(1)
    tv_state = {k: torch.randn(s, generator=g) if len(s) <= 1 or k.startswith("roi_heads.box_predictor")
                else torch.empty(s) for k, s in spec.items()}
    if legacy:  # pre-0.13 names (the published COCO checkpoints) and BatchNorm2d counters
        tv_state["rpn.head.conv.weight"] = tv_state.pop("rpn.head.conv.0.0.weight")
        tv_state["rpn.head.conv.bias"] = tv_state.pop("rpn.head.conv.0.0.bias")
        if with_masks:
            for i in range(4):
                for kind in ("weight", "bias"):
                    tv_state[f"roi_heads.mask_head.mask_fcn{i + 1}.{kind}"] = tv_state.pop(f"roi_heads.mask_head.{i}.0.{kind}")
        tv_state["backbone.body.bn1.num_batches_tracked"] = torch.tensor(0)
    converted = from_torchvision(tv_state)
    pydet_state = model.state_dict()
    assert set(converted) == set(pydet_state) == set(spec)
    assert all(converted[k].shape == pydet_state[k].shape for k in pydet_state)
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.bias, tv_state["roi_heads.box_predictor.cls_score.bias"])
    assert torch.equal(model.backbone.body.bn1.running_var, tv_state["backbone.body.bn1.running_var"])


def test_from_torchvision_rejects_old_and_new_name_together():
    state = {"rpn.head.conv.weight": torch.zeros(1), "rpn.head.conv.0.0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="rpn.head.conv.0.0.weight"):
        from_torchvision(state)


def test_registry_and_overrides():
    assert {"faster_rcnn_resnet50_fpn", "mask_rcnn_resnet50_fpn", "faster_rcnn_resnet18_fpn",
            "mask_rcnn_resnet18_fpn"} <= set(available())
    model = build("faster_rcnn_resnet18_fpn", num_classes=5, min_size=(256, 288), box_score_thresh=0.3,
                  rpn_post_nms_top_n_test=77, bbox_reg_weights=(1.0, 1.0, 1.0, 1.0))
    assert model.transform.min_size == (256, 288)
    assert model.roi_heads.score_thresh == 0.3 and model.rpn.post_nms_top_n_test == 77
    assert model.roi_heads.bbox_reg_weights == (1.0, 1.0, 1.0, 1.0)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    with pytest.raises(TypeError, match="box_score_threshold"):
        faster_rcnn_resnet18_fpn(box_score_threshold=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        faster_rcnn_resnet18_fpn(num_classes=1)


def test_trainable_backbone_layers():
    model = faster_rcnn_resnet18_fpn(trainable_backbone_layers=2)
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.body")}
    assert trainable == {"layer3", "layer4"}


# ---------------------------------------------------------------------------------------------------
# Matching and sampling


def _reference_match(quality, high, low, allow_low_quality):
    """torchvision's Matcher on one image's [M, N] matrix."""
    best, matches = quality.max(dim=0)
    result = matches.clone()
    result[best < low] = -1
    result[(best >= low) & (best < high)] = -2
    if allow_low_quality:
        best_per_gt = quality.max(dim=1).values
        preds = torch.where(quality == best_per_gt[:, None])[1]
        result[preds] = matches[preds]
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_batched_matcher_equals_per_image(seed, allow_low_quality):
    g = torch.Generator().manual_seed(seed)
    counts = [3, 0, 5]
    anchors = random_boxes(300, image_size=200, max_side=60, generator=g)
    gts = [random_boxes(c, image_size=200, max_side=80, generator=g) for c in counts]
    gts[2][1] = gts[2][0]  # duplicate ground truth: ties in the low-quality rule
    padded = torch.zeros(3, 5, 4)
    for i, gt in enumerate(gts):
        padded[i, : len(gt)] = gt
    valid = torch.arange(5) < torch.tensor(counts)[:, None]
    quality = ops.box_iou(padded.view(-1, 4), anchors).view(3, 5, -1)
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=allow_low_quality)
    matches = matcher(quality, valid)
    for i, gt in enumerate(gts):
        expected = (torch.full((300,), -1) if len(gt) == 0
                    else _reference_match(ops.box_iou(gt, anchors), 0.7, 0.3, allow_low_quality))
        assert torch.equal(matches[i], expected)
    assert torch.equal(matcher(ops.box_iou(gts[0], anchors)), matches[0])  # unbatched input


def test_sampler_counts_and_fraction():
    torch.manual_seed(0)
    labels = torch.full((3, 1000), -1)
    labels[0, :500] = 0
    labels[0, 500:510] = 2  # 10 positives: all taken, negatives fill up to 64
    labels[1, :10] = 0  # only 10 negatives available
    labels[1, 10:200] = 1  # 190 positives: capped at 16
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    pos, neg = sampler(labels)
    assert (pos.sum(1).tolist(), neg.sum(1).tolist()) == ([10, 16, 0], [54, 10, 0])
    assert not (pos & (labels < 1)).any() and not (neg & (labels != 0)).any()
    # uniform: over many draws every positive of image 1 is picked about 16 / 190 of the time
    hits = sum(sampler(labels)[0][1, 10:200].float() for _ in range(200))
    assert hits.min() > 2 and hits.max() < 40


# ---------------------------------------------------------------------------------------------------
# Batched post-processing equals torchvision's per-image order of operations


def test_rpn_filter_proposals_equals_per_image_processing():
    torch.manual_seed(0)
    rpn = faster_rcnn_resnet18_fpn(rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=40).rpn.eval()
    per_level = [64 * 3, 16 * 3, 4 * 3]
    num_anchors = sum(per_level)
    anchors = random_boxes(num_anchors, image_size=120, max_side=50)
    logits = torch.randn(2, num_anchors)
    deltas = torch.randn(2, num_anchors, 4) * 0.3
    image_sizes = [(100, 120), (64, 90)]
    proposals = rpn.filter_proposals(logits, deltas, anchors, image_sizes, per_level)

    levels = torch.repeat_interleave(torch.arange(3), torch.tensor(per_level))
    for i, size in enumerate(image_sizes):  # torchvision: top-k per level, then per-image filtering
        boxes = ops.decode_boxes(deltas[i], anchors)
        idx = torch.cat([lg.topk(min(60, n)).indices + off for lg, n, off in
                         zip(logits[i].split(per_level), per_level, [0, per_level[0], per_level[0] + per_level[1]])])
        b, s, lvl = ops.clip_boxes_to_image(boxes[idx], size), logits[i, idx].sigmoid(), levels[idx]
        keep = ops.remove_small_boxes(b, 1e-3)
        b, s, lvl = b[keep], s[keep], lvl[keep]
        keep = ops.batched_nms(b, s, lvl, 0.7)[:40]
        torch.testing.assert_close(proposals[i], b[keep], rtol=0, atol=0)


def test_postprocess_detections_equals_per_image_processing():
    torch.manual_seed(0)
    heads = faster_rcnn_resnet18_fpn(num_classes=4, box_score_thresh=0.2, box_detections_per_img=7).roi_heads.eval()
    proposals = [random_boxes(30, image_size=100, max_side=40), random_boxes(0), random_boxes(25, image_size=60, max_side=30)]
    proposals[0][3] = torch.tensor([10.0, 10.0, 10.001, 30.0])  # decodes to a box narrower than 1e-2
    image_sizes = [(100, 110), (50, 50), (60, 64)]
    class_logits = torch.randn(55, 4) * 2
    box_regression = torch.randn(55, 16)
    detections = heads.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
    assert len(detections) == 3 and detections[1]["boxes"].shape == (0, 4)
    start = 0
    for det, props, size in zip(detections, proposals, image_sizes):  # torchvision's postprocess_detections
        n = props.shape[0]
        boxes = ops.decode_boxes(box_regression[start:start + n], props, (10.0, 10.0, 5.0, 5.0)).view(n, 4, 4)
        scores = class_logits[start:start + n].softmax(-1)
        start += n
        boxes = ops.clip_boxes_to_image(boxes, size)[:, 1:].reshape(-1, 4)
        labels = torch.arange(4).expand(n, 4)[:, 1:].reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > 0.2)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.batched_nms(boxes, scores, labels, 0.5)[:7]
        torch.testing.assert_close(det["boxes"], boxes[keep], rtol=0, atol=0)
        torch.testing.assert_close(det["scores"], scores[keep], rtol=0, atol=0)
        assert torch.equal(det["labels"], labels[keep])


def test_mask_targets_equal_per_image_roi_align():
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(2, 40, 50, generator=g) > 0.5).to(torch.uint8), torch.zeros(0, 30, 60, dtype=torch.uint8),
             (torch.rand(3, 30, 60, generator=g) > 0.5).to(torch.uint8)]
    boxes = torch.tensor([[0.0, 0.0, 50.0, 40.0], [5.0, 3.0, 20.5, 39.9], [40.0, 0.0, 60.0, 30.0], [1.0, 2.0, 3.0, 4.0]])
    gt_index = torch.tensor([0, 1, 4, 2])  # the third and fourth boxes belong to the third image
    targets = project_masks_on_boxes(masks, boxes, gt_index, 28)
    expected = torch.cat([
        ops.roi_align(masks[0][:, None].float(), torch.cat([torch.tensor([[0.0], [1.0]]), boxes[:2]], 1), (28, 28), 1.0),
        ops.roi_align(masks[2][:, None].float(), torch.cat([torch.tensor([[2.0], [0.0]]), boxes[2:]], 1), (28, 28), 1.0),
    ])[:, 0]
    torch.testing.assert_close(targets, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Training and inference


def _rectangles(num_images=2, size=128):
    """Images with a red and a blue rectangle on grey: labels 1 and 2, with masks."""
    layouts = [[(16, 20, 60, 70), (70, 64, 120, 110)], [(60, 10, 118, 50), (10, 70, 50, 120)]]
    colors = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    images, targets = [], []
    for layout in layouts[:num_images]:
        image = torch.full((3, size, size), 0.5)
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for j, ((x1, y1, x2, y2), color) in enumerate(zip(layout, colors)):
            image[:, y1:y2, x1:x2] = torch.tensor(color)[:, None, None]
            masks[j, y1:y2, x1:x2] = 1
        images.append(image)
        targets.append({"boxes": torch.tensor(layout, dtype=torch.float32), "labels": torch.tensor([1, 2]),
                        "masks": masks})
    return images, targets


def test_training_step_losses_finite_and_gradients_reach_backbone():
    torch.manual_seed(0)
    model = mask_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    images, targets = _rectangles()
    images[1] = images[1][:, :96]  # images of different sizes in one batch
    targets[1]["boxes"][:, 1::2] = targets[1]["boxes"][:, 1::2].clamp(max=96)
    targets[1]["masks"] = targets[1]["masks"][:, :96]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for param in (model.backbone.body.conv1.weight, model.backbone.body.layer1[0].conv1.weight,
                  model.roi_heads.mask_predictor.mask_fcn_logits.weight, model.rpn.head.cls_logits.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_loss_decreases_when_overfitting_two_images():
    torch.manual_seed(0)
    model = mask_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    images, targets = _rectangles()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    history = []
    for _ in range(20):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        history.append(loss.item())
    # the first step's loss is dominated by the untrained mask logits; compare with the steps after it
    assert sum(history[-5:]) / 5 < 0.75 * sum(history[1:6]) / 5, history


def test_images_without_ground_truth():
    torch.manual_seed(0)
    model = mask_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    images = [torch.rand(3, 100, 120), torch.rand(3, 128, 128)]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, img.shape[1], img.shape[2], dtype=torch.uint8)} for img in images]
    losses = model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0 and losses["loss_mask"] == 0
    assert losses["loss_classifier"] > 0 and losses["loss_objectness"] > 0
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    # one image with ground truth and one without
    _, targets = _rectangles(1)
    losses = model([torch.rand(3, 128, 128), images[0]], [targets[0], empty[0]])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0


def test_eval_output_format():
    torch.manual_seed(0)
    model = mask_rcnn_resnet18_fpn(num_classes=3, box_score_thresh=0.0, box_detections_per_img=20, **TINY).eval()
    images = [torch.rand(3, 90, 140), torch.rand(3, 150, 100)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images):
        h, w = image.shape[1:]
        d = det["boxes"].shape[0]
        assert 0 < d <= 20
        assert det["boxes"].dtype == torch.float32 and det["scores"].shape == (d,)
        assert det["labels"].dtype == torch.int64 and ((det["labels"] >= 1) & (det["labels"] < 3)).all()
        assert det["masks"].shape == (d, 1, h, w) and det["masks"].dtype == torch.float32
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1 and det["masks"].max() > 0
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all() and (det["boxes"] >= 0).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("norm", [FrozenBatchNorm2d, nn.BatchNorm2d])
def test_fuse_folds_batchnorm_without_changing_features(norm):
    torch.manual_seed(0)
    model = build_rcnn(depth=18, num_classes=3, with_masks=True, defaults=_SMALL_DEFAULTS, overrides=TINY,
                       fpn_channels=32, representation_size=64, mask_channels=16, norm_layer=norm).eval()
    assert sum(isinstance(m, norm) for m in model.backbone.modules()) == 20  # stem, 16 in blocks, 3 downsample
    with torch.no_grad():
        for m in model.backbone.modules():  # non-trivial statistics, so that folding has work to do
            if isinstance(m, norm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.rand(1, 3, 128, 160)
        expected = model.backbone(x)
        model.fuse()
        assert not any(isinstance(m, norm) for m in model.modules())
        for name, value in model.backbone(x).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-4)
        assert model([torch.rand(3, 100, 120)])[0]["masks"].shape[1:] == (1, 100, 120)


def test_eval_with_zero_detections():
    model = mask_rcnn_resnet18_fpn(num_classes=3, box_score_thresh=1.0, **TINY).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80), torch.rand(3, 70, 50)])
    for det, (h, w) in zip(out, [(64, 80), (70, 50)]):
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)
        assert det["labels"].shape == (0,) and det["labels"].dtype == torch.int64
        assert det["masks"].shape == (0, 1, h, w) and det["masks"].dtype == torch.float32


@pytest.mark.parametrize("box, label, match", [
    ([10.0, 10.0, 10.0, 40.0], 1, r"targets\[1\] has a box without positive width"),
    ([10.0, 40.0, 30.0, 20.0], 1, r"targets\[1\] has a box without positive width"),
    ([10.0, float("nan"), 30.0, 40.0], 1, r"targets\[1\] has a box"),
    ([10.0, 10.0, 30.0, 40.0], 3, r"targets\[1\] has label 3, outside \[0, 3\)"),
])
def test_invalid_ground_truth_raises(box, label, match):
    model = faster_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    images, targets = _rectangles()
    targets[1]["boxes"] = torch.cat([targets[1]["boxes"], torch.tensor([box])])
    targets[1]["labels"] = torch.cat([targets[1]["labels"], torch.tensor([label])])
    with pytest.raises(ValueError, match=match):
        model(images, targets)


def test_bad_targets_give_clear_errors():
    model = mask_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    images, targets = _rectangles()
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    bad = [dict(t) for t in targets]
    bad[0]["labels"] = bad[0]["labels"].int()
    with pytest.raises(ValueError, match="labels"):
        model(images, bad)
    bad = [dict(t) for t in targets]
    bad[1]["boxes"] = bad[1]["boxes"].to("meta")
    with pytest.raises(ValueError, match="device"):
        model(images, bad)
    bad = [dict(t) for t in targets]
    del bad[0]["masks"]
    with pytest.raises(ValueError, match="masks"):
        model(images, bad)
    bad = [dict(t) for t in targets]
    bad[0]["masks"] = bad[0]["masks"][:, :64]
    with pytest.raises(ValueError, match="image's size"):
        model(images, bad)


def test_fuse_needs_eval_mode_for_trainable_batchnorm():
    model = faster_rcnn_resnet18_fpn(num_classes=3, **TINY).train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        model.fuse()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # nothing was folded


def test_small_presets_learn_their_batchnorm_statistics():
    # Trained from scratch, the small presets need BatchNorm that normalises (frozen identity statistics
    # do not); the R-50 models keep torchvision's frozen BatchNorm for pretrained weights.
    small = faster_rcnn_resnet18_fpn(num_classes=3)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in small.modules())
    bns = [m for m in small.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20 and all(m.weight.requires_grad for m in bns)
    assert mask_rcnn_resnet18_fpn(num_classes=3).roi_heads.mask_head[0][0].out_channels == 64
