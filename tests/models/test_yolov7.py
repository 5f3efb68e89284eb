import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import pydet.models as models
from pydet import ops
from tests.conftest import requires_cuda
from pydet.convert import from_yolov7
from pydet.modeling.yolo_loss import ComputeLoss, ComputeLossOTA, bbox_ciou
from pydet.models.yolov7 import EVAL_PRESET, PAD_VALUE, YOLOv7, letterbox


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _randomise_batch_norm(model, generator):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


def _scene(seed, size=128, device="cpu"):
    """Three images with bright rectangles on dark noise (box coordinates for size 128, scaled), targets on them."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for shape, boxes, labels in [((size, size), [[12, 20, 60, 84], [70, 66, 118, 112]], [0, 2]),
                                 ((size, size * 3 // 4), [[20, 14, 80, 60]], [1]),
                                 ((size * 3 // 4, size), [[40, 30, 100, 80]], [2])]:
        img = torch.rand(3, *shape, generator=g) * 0.2
        boxes = [[v * size // 128 for v in box] for box in boxes]
        for (x1, y1, x2, y2), c in zip(boxes, labels):
            img[c, y1:y2, x1:x2] = 0.9
        images.append(img.to(device))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                        "labels": torch.tensor(labels, device=device)})
    return images, targets


# ----------------------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("variant,params,fused", [("yolov7", 37_622_682, 36_907_898),
                                                  ("yolov7-tiny", 6_228_762, 6_221_370)])
def test_parameter_counts(variant, params, fused):
    model = models.yolov7(variant)
    assert _count(model) == params
    assert _count(model.fuse()) == fused


@pytest.mark.parametrize("variant,size", [("yolov7", 64), ("yolov7-tiny", 96)])
def test_fuse_preserves_outputs(variant, size):
    g = torch.Generator().manual_seed(0)
    model = YOLOv7(variant, num_classes=7)
    with torch.no_grad():
        _randomise_batch_norm(model, g)
    model.eval()
    x = torch.rand(2, 3, size, size + 32, generator=g)
    with torch.no_grad():
        expected = model.model(x)
        fused = copy.deepcopy(model).fuse()
        out = fused.model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not any(k.rsplit(".", 2)[-2] in ("rbr_dense", "rbr_1x1") for k in fused.state_dict())
    for e, o in zip(expected, out):
        assert o.shape == e.shape and e.abs().max() > 1
        torch.testing.assert_close(o, e, rtol=0, atol=1e-4)
    boxes, objectness, class_probs = model.decode(expected)
    fused_boxes, fused_objectness, fused_class_probs = fused.decode(out)
    torch.testing.assert_close(fused_objectness, objectness, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_class_probs, class_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_boxes, boxes, rtol=1e-5, atol=1e-3)


def test_official_state_dict_layout():
    sd = models.yolov7().state_dict()
    keys = list(sd)
    assert keys[:3] == ["model.0.conv.weight", "model.0.bn.weight", "model.0.bn.bias"]
    assert keys[-1] == "model.105.im.2.implicit"
    expected_shapes = {
        "model.0.conv.weight": (32, 3, 3, 3), "model.0.bn.num_batches_tracked": (),
        "model.11.conv.weight": (256, 256, 1, 1), "model.15.conv.weight": (128, 128, 3, 3),
        "model.50.conv.weight": (1024, 1024, 1, 1),
        "model.51.cv1.conv.weight": (512, 1024, 1, 1), "model.51.cv5.conv.weight": (512, 2048, 1, 1),
        "model.51.cv7.conv.weight": (512, 1024, 1, 1), "model.54.conv.weight": (256, 1024, 1, 1),
        "model.63.conv.weight": (256, 1024, 1, 1), "model.81.conv.weight": (256, 512, 1, 1),
        "model.102.rbr_dense.0.weight": (256, 128, 3, 3), "model.102.rbr_1x1.1.running_var": (256,),
        "model.104.rbr_dense.0.weight": (1024, 512, 3, 3), "model.105.anchors": (3, 3, 2),
        "model.105.anchor_grid": (3, 1, 3, 1, 1, 2), "model.105.m.0.weight": (255, 256, 1, 1),
        "model.105.m.2.bias": (255,), "model.105.ia.0.implicit": (1, 256, 1, 1),
        "model.105.ia.2.implicit": (1, 1024, 1, 1), "model.105.im.1.implicit": (1, 255, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(".rbr_identity." in k for k in keys)  # channel counts change in every RepConv
    assert sd["model.105.anchor_grid"].flatten().tolist() == [12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146,
                                                              142, 110, 192, 243, 459, 401]
    torch.testing.assert_close(sd["model.105.anchors"] * torch.tensor([8.0, 16, 32]).view(3, 1, 1),
                               sd["model.105.anchor_grid"].view(3, 3, 2))

    tiny = models.yolov7_tiny().state_dict()
    assert list(tiny)[-1] == "model.77.im.2.implicit"
    for key, shape in {"model.7.conv.weight": (64, 128, 1, 1), "model.35.conv.weight": (256, 1024, 1, 1),
                       "model.37.conv.weight": (256, 512, 1, 1), "model.76.conv.weight": (512, 256, 3, 3),
                       "model.77.m.0.weight": (255, 128, 1, 1), "model.77.m.2.weight": (255, 512, 1, 1)}.items():
        assert tuple(tiny[key].shape) == shape, key
    assert tiny["model.77.anchor_grid"].flatten().tolist()[:6] == [10, 13, 16, 30, 33, 23]


def test_architecture_details():
    model = YOLOv7("yolov7-tiny", num_classes=3)
    assert all(isinstance(m.act, torch.nn.LeakyReLU) for m in model.modules() if hasattr(m, "bn"))
    bns = [m for m in models.yolov7().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    # official bias prior: objectness log(8 / (640 / s)^2), classes log(0.6 / (nc - 0.99))
    for conv, stride in zip(model.head.m, (8, 16, 32)):
        bias = conv.bias.detach().view(3, 8)
        init_bound = 1 / math.sqrt(conv.in_channels)
        assert (bias[:, 4] - math.log(8 / (640 / stride) ** 2)).abs().max() <= init_bound
        assert (bias[:, 5:] - math.log(0.6 / (3 - 0.99))).abs().max() <= init_bound
    shapes = [p.shape for p in model.model(torch.zeros(1, 3, 64, 96))]
    assert shapes == [(1, 3, 8, 12, 8), (1, 3, 4, 6, 8), (1, 3, 2, 3, 8)]


# ----------------------------------------------------------------------------------------- conversion

def test_from_yolov7_round_trip():
    g = torch.Generator().manual_seed(1)
    source = YOLOv7("yolov7-tiny", num_classes=5)
    with torch.no_grad():
        _randomise_batch_norm(source, g)
    source.eval()
    x = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected = source.model(x)
    official = source.state_dict()

    half = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in official.items())
    checkpoints = [
        official,
        OrderedDict(("module." + k, v) for k, v in official.items()),
        {"model": official, "optimizer": None, "epoch": -1},
        {"model": source, "ema": None, "epoch": 3},  # pickled module, as official training checkpoints
        {"model": None, "ema": half, "updates": 10},
    ]
    for ckpt in checkpoints:
        converted = from_yolov7(ckpt)
        assert all(v.dtype != torch.float16 for v in converted.values())
        target = YOLOv7("yolov7-tiny", num_classes=5).eval()
        target.load_state_dict(converted, strict=True)
        with torch.no_grad():
            out = target.model(x)
        tol = 0.05 if ckpt is checkpoints[-1] else 0.0
        for e, o in zip(expected, out):
            torch.testing.assert_close(o, e, rtol=tol, atol=tol)

    with pytest.raises(ValueError, match="unexpected key"):
        from_yolov7({"backbone.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="detection head"):
        from_yolov7({"model.0.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="state dict"):
        from_yolov7([1, 2])


def test_from_yolov7_loads_a_detect_head_without_implicit_layers():
    """The official cfg/deploy configs end in ``Detect``: the same network as ``IDetect`` with identity implicit
    layers, which the converter supplies."""
    g = torch.Generator().manual_seed(2)
    source = YOLOv7("yolov7-tiny", num_classes=5)
    with torch.no_grad():
        _randomise_batch_norm(source, g)
        for add, mul in zip(source.head.ia, source.head.im):
            add.implicit.zero_()
            mul.implicit.fill_(1.0)
    source.eval()
    x = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected = source.model(x)
    detect_head = OrderedDict((k, v) for k, v in source.state_dict().items() if ".ia." not in k and ".im." not in k)
    assert len(detect_head) == len(source.state_dict()) - 6

    target = YOLOv7("yolov7-tiny", num_classes=5).eval()
    target.load_state_dict(from_yolov7(detect_head), strict=True)
    with torch.no_grad():
        for e, o in zip(expected, target.model(x)):
            assert torch.equal(o, e)


# ----------------------------------------------------------------------------------------- letterbox

def test_letterbox_shapes_and_padding():
    images = [torch.rand(3, 480, 640), torch.rand(3, 300, 200)]
    batch, scales, padding = letterbox(images, 640)
    assert batch.shape == (2, 3, 640, 640)  # 640x480 and 427x640 padded to one multiple of 32
    torch.testing.assert_close(scales, torch.tensor([1.0, 640 / 300]))
    assert padding.tolist() == [[0.0, 80.0], [106.0, 0.0]]
    assert (batch[0, :, :80] == PAD_VALUE).all() and (batch[0, :, 560:] == PAD_VALUE).all()
    torch.testing.assert_close(batch[0, :, 80:560], images[0])
    assert (batch[1, :, :, :106] == PAD_VALUE).all() and (batch[1, :, :, 533:] == PAD_VALUE).all()

    batch, _, padding = letterbox([torch.rand(3, 480, 640)], 640)
    assert batch.shape == (1, 3, 480, 640) and padding.tolist() == [[0.0, 0.0]]
    batch, scales, padding = letterbox([torch.rand(3, 100, 150)], 320)
    assert batch.shape == (1, 3, 224, 320) and padding.tolist() == [[0.0, 5.0]]  # 213 rows centred in 224
    batch, _, padding = letterbox([torch.rand(3, 100, 150)], 320, auto=False)
    assert batch.shape == (1, 3, 320, 320) and padding.tolist() == [[0.0, 53.0]]


def test_training_targets_follow_the_letterbox():
    model = YOLOv7("yolov7-tiny", num_classes=3, img_size=320)
    image = torch.zeros(3, 300, 200)
    box = torch.tensor([[40.0, 60.0, 120.0, 250.0]])
    image[:, 60:250, 40:120] = 1.0
    batch, scales, padding, rows = model.preprocess([image], [{"boxes": box, "labels": torch.tensor([2])}])
    height, width = batch.shape[-2:]
    assert rows.shape == (1, 6) and rows[0, :2].tolist() == [0.0, 2.0]
    cx, cy, w, h = (rows[0, 2:] * torch.tensor([width, height, width, height])).tolist()
    x1, y1, x2, y2 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
    drawn = batch[0, 0] > 0.5
    ys, xs = drawn.nonzero(as_tuple=True)
    assert abs(xs.min().item() - x1) <= 1 and abs(xs.max().item() + 1 - x2) <= 1
    assert abs(ys.min().item() - y1) <= 1 and abs(ys.max().item() + 1 - y2) <= 1


def test_boxes_mapped_back_to_input_coordinates():
    model = YOLOv7("yolov7-tiny", num_classes=4, img_size=320).eval()
    sizes = [(300, 200), (90, 250)]
    batch, scales, padding = letterbox([torch.zeros(3, *s) for s in sizes], 320)
    originals = torch.tensor([[[20.0, 30.0, 150.0, 280.0], [0.0, 0.0, 10.0, 10.0]],
                              [[100.0, 10.0, 240.0, 80.0], [5.0, 5.0, 30.0, 40.0]]])
    letterboxed = originals * scales[:, None, None] + padding.repeat(1, 2)[:, None]
    # one box pushed past the image border comes back clipped to the image
    letterboxed[1, 1, 0] -= 50
    scores = torch.zeros(2, 2, 4)
    scores[0, 0, 1], scores[0, 1, 3], scores[1, 0, 0], scores[1, 1, 2] = 0.9, 0.8, 0.7, 0.6
    out = model.postprocess(letterboxed, torch.ones(2, 2), scores, sizes, scales, padding)
    torch.testing.assert_close(out[0]["boxes"], originals[0], atol=1e-3, rtol=0)
    assert out[0]["labels"].tolist() == [1, 3] and out[1]["labels"].tolist() == [0, 2]
    expected = originals[1].clone()
    expected[1, 0] = 0.0
    torch.testing.assert_close(out[1]["boxes"], expected, atol=1e-3, rtol=0)


def test_decode_matches_official_formula():
    model = YOLOv7("yolov7-tiny", num_classes=2)
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(2, 3, h, w, 7, generator=g) for h, w in [(4, 6), (2, 3), (1, 2)]]
    boxes, objectness, class_probs = model.decode(preds)
    scores = class_probs * objectness[..., None]
    expected_boxes, expected_scores = [], []
    for p, stride, anchors in zip(preds, (8, 16, 32), model.head.anchor_grid):
        y = p.double().sigmoid()
        ys, xs = torch.meshgrid(torch.arange(p.shape[2]), torch.arange(p.shape[3]), indexing="ij")
        grid = torch.stack((xs, ys), -1).view(1, 1, p.shape[2], p.shape[3], 2).double()
        xy = (y[..., :2] * 2 - 0.5 + grid) * stride
        wh = (y[..., 2:4] * 2) ** 2 * anchors.double()
        expected_boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), -1).view(2, -1, 4))
        expected_scores.append((y[..., 5:] * y[..., 4:5]).view(2, -1, 2))
    torch.testing.assert_close(boxes.double(), torch.cat(expected_boxes, 1), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(scores.double(), torch.cat(expected_scores, 1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("multi_label", [False, True])
def test_cpu_objectness_prefilter_keeps_the_same_detections(multi_label):
    g = torch.Generator().manual_seed(5)
    model = YOLOv7("yolov7-tiny", num_classes=6, box_score_thresh=0.3, multi_label=multi_label).eval()
    xy = torch.rand(3, 400, 2, generator=g) * 300 + 50
    boxes = torch.cat((xy, xy + torch.rand(3, 400, 2, generator=g) * 60 + 1), -1)
    objectness = torch.rand(3, 400, generator=g) ** 8  # about 14% pass 0.3: the CPU path gathers those
    assert 4 * (objectness > 0.3).sum(1).max() <= 400
    objectness[2] = 0.1  # an image without candidates
    objectness[0, 0] = 1.0  # a confident first box: padding must not copy it into other images
    class_probs = torch.rand(3, 400, 6, generator=g)
    out = model.postprocess(boxes, objectness, class_probs, [(1000, 1000)] * 3, torch.ones(3), torch.zeros(3, 2))
    scores = class_probs * objectness[..., None]
    if not multi_label:
        scores = scores * F.one_hot(scores.argmax(-1), 6)
    det_boxes, det_scores, det_labels, counts = ops.multiclass_nms(boxes, scores, 0.3, 0.45, 300)
    assert counts[0] > 5 and counts[2] == 0
    for i, det in enumerate(out):
        n = int(counts[i])
        torch.testing.assert_close(det["boxes"], det_boxes[i, :n], rtol=0, atol=0)
        torch.testing.assert_close(det["scores"], det_scores[i, :n], rtol=0, atol=0)
        assert det["labels"].tolist() == det_labels[i, :n].tolist()


# ----------------------------------------------------------------------------------------- losses

def _reference_candidates(targets, sizes, anchors):
    """Per-target loop version of the official build_targets: anchor ratio < 4, own cell + 2 neighbours."""
    out = []
    for level, ((h, w), level_anchors) in enumerate(zip(sizes, anchors.tolist())):
        for t, (img, _, x, y, bw, bh) in enumerate(targets.tolist()):
            gx, gy, gw, gh = x * w, y * h, bw * w, bh * h
            for a, (aw, ah) in enumerate(level_anchors):
                if max(gw / aw, aw / gw, gh / ah, ah / gh) >= 4.0:
                    continue
                cells = [(gx, gy)]
                cells += [(gx - 0.5, gy)] if gx % 1 < 0.5 and gx > 1 else []
                cells += [(gx, gy - 0.5)] if gy % 1 < 0.5 and gy > 1 else []
                cells += [(gx + 0.5, gy)] if (w - gx) % 1 < 0.5 and w - gx > 1 else []
                cells += [(gx, gy + 0.5)] if (h - gy) % 1 < 0.5 and h - gy > 1 else []
                for cx, cy in cells:
                    out.append((level, int(img), a, min(int(cy), h - 1), min(int(cx), w - 1), t))
    return sorted(out)


def _reference_ota(preds, targets, candidates, strides, anchors, image_size):
    """The official SimOTA loop (per image, per ground truth), in float64, on the given candidates."""
    height, width = image_size
    rows = []
    for level, cands in enumerate(candidates):
        for b, a, gj, gi, t in zip(*[c.tolist() for c in cands]):
            rows.append((level, b, a, gj, gi))
    out = []
    for image in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == image]
        gts = [i for i, t in enumerate(targets.tolist()) if t[0] == image]
        p = torch.stack([preds[lv][b, a, gj, gi].double() for lv, b, a, gj, gi in mine])
        grid = torch.tensor([[gi, gj] for _, _, _, gj, gi in mine], dtype=torch.float64)
        stride = torch.tensor([strides[r[0]] for r in mine], dtype=torch.float64)[:, None]
        anchor = torch.stack([anchors[r[0]][r[2]].double() for r in mine])
        xy = (p[:, :2].sigmoid() * 2 - 0.5 + grid) * stride
        wh = (p[:, 2:4].sigmoid() * 2) ** 2 * anchor * stride
        pbox = torch.cat((xy - wh / 2, xy + wh / 2), 1)
        t = targets[gts].double()
        txywh = t[:, 2:6] * torch.tensor([width, height, width, height], dtype=torch.float64)
        tbox = torch.cat((txywh[:, :2] - txywh[:, 2:] / 2, txywh[:, :2] + txywh[:, 2:] / 2), 1)
        lt = torch.max(tbox[:, None, :2], pbox[None, :, :2])
        rb = torch.min(tbox[:, None, 2:], pbox[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)
        area = lambda bx: (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])  # noqa: E731
        iou = inter / (area(tbox)[:, None] + area(pbox)[None] - inter)
        dynamic_k = torch.clamp(torch.topk(iou, min(10, iou.shape[1]), dim=1)[0].sum(1).int(), min=1)
        y = (p[:, 5:].sigmoid() * p[:, 4:5].sigmoid()).sqrt()
        onehot = F.one_hot(t[:, 1].long(), p.shape[1] - 5).double()
        cls_cost = F.binary_cross_entropy_with_logits(
            torch.log(y / (1 - y))[None].expand(len(gts), -1, -1), onehot[:, None].expand(-1, len(mine), -1),
            reduction="none").sum(-1)
        cost = cls_cost + 3.0 * -torch.log(iou + 1e-8)
        matching = torch.zeros_like(cost)
        for g in range(len(gts)):
            matching[g, torch.topk(cost[g], k=int(dynamic_k[g]), largest=False).indices] = 1.0
        contested = matching.sum(0) > 1
        if contested.any():
            lowest = cost[:, contested].argmin(0)
            matching[:, contested] = 0.0
            matching[lowest, contested] = 1.0
        foreground = matching.sum(0) > 0
        matched = matching[:, foreground].argmax(0)
        for row, g in zip([r for r, f in zip(mine, foreground.tolist()) if f], matched.tolist()):
            out.append((*row, gts[g]))
    return sorted(out)


def _random_targets(generator, images=3, per_image=4, classes=5):
    rows = []
    for i in range(images):
        for _ in range(per_image):
            w, h = (torch.rand(2, generator=generator) * 0.3 + 0.05).tolist()
            x, y = (torch.rand(2, generator=generator) * 0.8 + 0.1).tolist()
            rows.append([i, int(torch.randint(classes, (1,), generator=generator)), x, y, w, h])
    rows.append([images, 0, 0.5, 0.5, 0.2, 0.2])  # targets of the last image only
    rows += [[0, 1, 0.31, 0.62, 0.15, 0.2], [0, 3, 0.33, 0.63, 0.16, 0.18]]  # overlapping: contested candidates
    return torch.tensor(rows, dtype=torch.float32)


def test_candidates_match_per_target_reference():
    model = YOLOv7("yolov7-tiny", num_classes=5, img_size=256)
    g = torch.Generator().manual_seed(3)
    targets = _random_targets(g)
    preds = [torch.zeros(4, 3, s, s + 2, 10) for s in (32, 16, 8)]
    loss = model.compute_loss
    got = sorted((level, *row) for level, cands in enumerate(loss.candidates(preds, targets))
                 for row in zip(*[c.tolist() for c in cands]))
    sizes = [(32, 34), (16, 18), (8, 10)]
    assert got == _reference_candidates(targets, sizes, model.head.anchors)
    assert len(got) > 3 * len(targets)


def test_ota_assignment_matches_official_loop():
    model = YOLOv7("yolov7-tiny", num_classes=5, img_size=256)
    g = torch.Generator().manual_seed(4)
    targets = _random_targets(g)
    preds = [torch.randn(4, 3, s, s, 10, generator=g) for s in (32, 16, 8)]
    loss = model.compute_loss
    assert isinstance(loss, ComputeLossOTA)
    candidates = loss.candidates(preds, targets)
    assignment = loss.assign(preds, targets, candidates)
    got = []
    for level, ((b, a, gj, gi, _), (keep, t)) in enumerate(zip(candidates, assignment)):
        got += [(level, *row) for row in zip(b[keep].tolist(), a[keep].tolist(), gj[keep].tolist(),
                                             gi[keep].tolist(), t.tolist())]
    expected = _reference_ota(preds, targets, candidates, (8, 16, 32), model.head.anchors, (256, 256))
    assert sorted(got) == expected and len(expected) >= len(targets)


def test_ciou():
    box = torch.tensor([[5.0, 5.0, 4.0, 2.0]])
    torch.testing.assert_close(bbox_ciou(box, box), torch.ones(1))
    # same shape, shifted by half a width: IoU 1/3, centre distance 2^2 over enclosing diagonal 6^2 + 2^2
    shifted = torch.tensor([[7.0, 5.0, 4.0, 2.0]])
    torch.testing.assert_close(bbox_ciou(box, shifted), torch.tensor([1 / 3 - 4 / 40]), atol=1e-5, rtol=0)
    far = torch.tensor([[50.0, 50.0, 1.0, 8.0]])
    assert bbox_ciou(box, far).item() < -0.5


@pytest.mark.parametrize("loss", ["ota", "plain"])
def test_training_step(loss, device):
    torch.manual_seed(0)
    model = YOLOv7("yolov7-tiny", num_classes=3, img_size=128, loss=loss).to(device).train()
    images, targets = _scene(0, device=device)
    targets[1] = {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long, device=device)}
    losses = model(images, targets)
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grad = model.model[0].conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_without_any_targets():
    model = YOLOv7("yolov7-tiny", num_classes=3, img_size=128).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 64, 96)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model(images, [empty, empty])
    assert losses["loss_box"] == 0 and losses["loss_cls"] == 0 and losses["loss_obj"] > 0
    sum(losses.values()).backward()
    assert model.model[0].conv.weight.grad.abs().sum() > 0


def test_plain_loss_value_by_hand():
    """Zero logits and one target: check matching, gains, level balance and batch scaling of ComputeLoss."""
    model = YOLOv7("yolov7-tiny", num_classes=2, img_size=320, loss="plain")
    loss = model.compute_loss
    assert isinstance(loss, ComputeLoss) and not isinstance(loss, ComputeLossOTA)
    # centre at (3.75, 3.75) of the 8x8 P3 grid with the size of P3's first anchor: every P3 anchor is within
    # the ratio 4 (no P4/P5 anchor is), each in the own cell and the right and lower neighbours.
    anchors = model.head.anchors[0]
    targets = torch.tensor([[1, 1, 3.75 / 8, 3.75 / 8, anchors[0, 0] / 8, anchors[0, 1] / 8]])
    preds = [torch.zeros(2, 3, s, s, 7) for s in (8, 4, 2)]
    out = loss(preds, targets)
    # zero logits predict xy = 0.5 in the cell and wh = the anchor
    offsets = torch.tensor([[0.75, 0.75], [-0.25, 0.75], [0.75, -0.25]])
    pred = torch.cat((torch.full((9, 2), 0.5), anchors.repeat_interleave(3, 0)), 1)
    target = torch.cat((offsets.repeat(3, 1), anchors[0].expand(9, 2)), 1)
    iou = bbox_ciou(pred, target)
    batch, log2 = 2, math.log(2)  # BCE(0, t) = log 2 for any t
    torch.testing.assert_close(out["loss_box"], (1 - iou).mean() * 0.05 * batch, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss_cls"].item(), log2 * 0.5 * 2 / 80 * batch, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss_obj"].item(), log2 * (4.0 + 1.0 + 0.4) * (320 / 640) ** 2 * batch,
                               rtol=1e-5, atol=0)


def test_loss_decreases_when_overfitting():
    torch.manual_seed(0)
    model = YOLOv7("yolov7-tiny", num_classes=3, img_size=96).train()
    images, targets = _scene(1, size=96)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    history = []
    for _ in range(20):
        total = sum(model(images, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:3]) / 3


@requires_cuda
@pytest.mark.parametrize("loss", ["ota", "plain"])
def test_cuda_matches_cpu(loss, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cpu = YOLOv7("yolov7-tiny", num_classes=3, img_size=128, loss=loss).train()
    gpu = copy.deepcopy(cpu).cuda()
    images, targets = _scene(2)
    gpu_images, gpu_targets = _scene(2, device="cuda")
    expected, out = cpu(images, targets), gpu(gpu_images, gpu_targets)
    for key in expected:
        torch.testing.assert_close(out[key].cpu(), expected[key], rtol=1e-3, atol=1e-5)
    cpu.eval(), gpu.eval()
    batch = cpu.preprocess(images)[0]
    with torch.no_grad():
        expected, out = cpu.decode(cpu.model(batch)), gpu.decode(gpu.model(batch.cuda()))
    for e, o in zip(expected, out):
        torch.testing.assert_close(o.cpu(), e, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------------------- eval and API

def test_eval_output_format(device):
    torch.manual_seed(0)
    model = YOLOv7("yolov7-tiny", num_classes=4, img_size=128, **EVAL_PRESET).to(device).eval()
    with torch.no_grad():  # a confident objectness prior so that random weights give detections
        for conv in model.head.m:
            conv.bias.view(3, 9)[:, 4] += 8
    sizes = [(120, 90), (64, 200)]
    images = [torch.rand(3, *s, device=device) for s in sizes]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, (h, w) in zip(out, sizes):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 300 and det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and det["labels"].shape == (n,)
        assert det["labels"].min() >= 0 and det["labels"].max() < 4
        assert (det["scores"][:-1] >= det["scores"][1:]).all() and (det["scores"] > 0.001).all()
        boxes = det["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
    model.multi_label = False
    model.box_detections_per_img = 5
    with torch.no_grad():
        out = model(images)
    assert all(d["boxes"].shape[0] <= 5 for d in out)


def test_registry_and_presets():
    assert {"yolov7", "yolov7_tiny", "yolov7_tiny_320"} <= set(models.available())
    tiny = models.build("yolov7_tiny_320", num_classes=2)
    assert tiny.variant == "yolov7-tiny" and tiny.img_size == 320 and tiny.num_classes == 2
    assert tiny.box_score_thresh == 0.25 and tiny.box_nms_thresh == 0.45 and tiny.box_detections_per_img == 300
    with pytest.raises(ValueError, match="variant"):
        YOLOv7("yolov7x")
    with pytest.raises(ValueError, match="img_size"):
        YOLOv7("yolov7-tiny", img_size=100)
    with pytest.raises(ValueError, match="loss"):
        YOLOv7("yolov7-tiny", loss="focal")


def test_bad_inputs_give_clear_errors():
    model = YOLOv7("yolov7-tiny", num_classes=3, img_size=64).train()
    image = torch.rand(3, 64, 64)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    good = {"boxes": boxes, "labels": torch.tensor([1])}
    cases = [
        ([image], None, "targets are required"),
        ([torch.rand(64, 64)], [good], r"images\[0\]"),
        ([image.to(torch.uint8)], [good], "floating point"),
        ([torch.rand(3, 0, 64)], [good], "empty"),
        ([image], [good, good], "one dict per image"),
        ([image], [{"boxes": boxes}], r"\['labels'\]"),
        ([image], [{"boxes": boxes[:, :3], "labels": torch.tensor([1])}], r"\['boxes'\]"),
        ([image], [{"boxes": boxes.long(), "labels": torch.tensor([1])}], r"\['boxes'\]"),
        ([image], [{"boxes": boxes, "labels": torch.tensor([1], dtype=torch.int32)}], r"\['labels'\].*int64"),
        ([image], [{"boxes": boxes, "labels": torch.tensor([3])}], r"\[0, 2\]"),
        ([image], [{"boxes": boxes.to("meta"), "labels": torch.tensor([1])}], "device"),
        ([image], [{"boxes": boxes * float("nan"), "labels": torch.tensor([1])}], "finite"),
    ]
    for images, targets, message in cases:
        with pytest.raises(ValueError, match=message):
            model(images, targets)
