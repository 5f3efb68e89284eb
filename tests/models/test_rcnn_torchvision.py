"""Same weights, same answers: pydet's Faster / Mask R-CNN against torchvision's, stage by stage.

Runs where torchvision imports (skipped otherwise; benchmarks/torchvision_cpu.sh runs it on CPU). Masks
are compared exactly before pasting; after pasting, ``pydet.ops.paste_masks`` resamples at pixel centres
inside the exact box (detectron2's paste, see API.md) where torchvision pastes into an integer-rounded
box, so each side is checked against that formula with its own box. Orders of exactly or nearly tied
scores may differ (see ``_assert_same_proposals`` and ``SCORE_ATOL``).
"""
import pytest
import torch

from pydet.convert import from_torchvision
from pydet.models import faster_rcnn_resnet50_fpn, mask_rcnn_resnet50_fpn

try:
    from torchvision.models.detection import FasterRCNN, MaskRCNN, fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
except Exception as exc:  # ImportError, or a torchvision built for another torch
    pytest.skip(f"torchvision does not import here: {exc}", allow_module_level=True)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def torchvision_model(with_masks: bool):
    """torchvision's R-50-FPN model as ``weights=...`` builds it (frozen BatchNorm, 3 trainable stages),
    with random weights, non-trivial BatchNorm statistics and a classifier that detects something."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    model = (MaskRCNN if with_masks else FasterRCNN)(backbone, num_classes=91)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        # With nn.Linear's default init every foreground class scores about 1/91, below box_score_thresh
        # (0.05): no detections at all, and nothing after the RPN would be compared. Logits with a spread
        # of about 2 give a few hundred detections per image, so NMS and the mask head are exercised.
        model.roi_heads.box_predictor.cls_score.weight.mul_(15.0)
    return model.eval()


@pytest.mark.parametrize("with_masks", [False, True])
def test_torchvision_factory_state_dict_loads_strictly(with_masks):
    # weights=None, weights_backbone=None builds BatchNorm2d (with num_batches_tracked counters)
    tv = (maskrcnn_resnet50_fpn if with_masks else fasterrcnn_resnet50_fpn)(weights=None, weights_backbone=None)
    ours = (mask_rcnn_resnet50_fpn if with_masks else faster_rcnn_resnet50_fpn)()
    ours.load_state_dict(from_torchvision(tv.state_dict()), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for n, p in tv.named_parameters() if ".bn" not in n and "downsample.1" not in n)


def torchvision_proposal_scores(rpn, images, features, proposals):
    """The objectness of each of torchvision's proposals: its RPN's eval forward written out, keeping the
    scores that ``filter_proposals`` returns and ``RegionProposalNetwork.forward`` drops."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    feature_list = list(features.values())
    objectness, deltas = rpn.head(feature_list)
    anchors = rpn.anchor_generator(images, feature_list)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    boxes = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    boxes, scores = rpn.filter_proposals(boxes, objectness, images.image_sizes, per_level)
    for a, b in zip(boxes, proposals):  # the written-out forward is torchvision's
        assert torch.equal(a, b)
    return scores


def _tie_permutation(ours, theirs, scores, tie_tolerance):
    """Index putting the rows of ``ours`` in the order of ``theirs`` inside each run of (near-)tied scores.

    ``scores`` are torchvision's, in its (decreasing) order; a run is a stretch where neighbouring scores
    differ by at most ``tie_tolerance``. In a run, each of torchvision's rows takes the nearest of
    pydet's rows in the same positions; elsewhere, and where that is not one-to-one, rows stay in place
    (the assertions that follow then report the difference).
    """
    assert (scores[1:] <= scores[:-1]).all()
    perm = torch.arange(ours.shape[0], device=ours.device)
    breaks = ((scores[:-1] - scores[1:]) > tie_tolerance).nonzero().flatten().tolist()
    for begin, end in zip([0] + [b + 1 for b in breaks], [b + 1 for b in breaks] + [scores.shape[0]]):
        if end - begin > 1:
            nearest = (theirs[begin:end, None] - ours[None, begin:end]).abs().amax(-1).argmin(1) + begin
            if torch.equal(nearest.sort().values, perm[begin:end]):
                perm[begin:end] = nearest
    return perm


def _assert_same_proposals(ours, theirs, scores):
    """Proposals equal row by row, except that proposals of bit-identical objectness may come in either order.

    Both sort by decreasing score but break exact ties differently: pydet by candidate index (a stable
    sort, as pydet.ops.nms documents), torchvision's CPU ``batched_nms`` with the unstable
    ``torch.sort(descending=True)`` (its per-class path, taken above 1000 boxes, sorts the kept boxes of
    all levels that way; the same order under torch 2.13 and 2.14). RPN scores do tie exactly, e.g.
    anchors over the zero padding of a batch, so neighbouring proposals swap.
    """
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    torch.testing.assert_close(ours[_tie_permutation(ours, theirs, scores, 0.0)], theirs, rtol=1e-5, atol=1e-4)


# Detection scores differ from torchvision's by float32 rounding (RoIAlign sums its samples in another
# order): a few 1e-7. Two detections whose scores are that close (one float32 ulp apart happens) may come
# out in either order, so runs of scores within the score tolerance are matched before comparing.
SCORE_ATOL = 1e-5


def torchvision_box_of_paste(boxes, mask_size):
    """The box into which torchvision's ``paste_masks_in_image`` effectively pastes: it pads the mask by one
    zero cell, scales the box by (M + 2) / M, truncates it to integers ``b`` and resizes the padded mask
    onto ``b[2] - b[0] + 1`` pixels, which is a pixel-centre paste of the unpadded mask into this box."""
    from torchvision.models.detection.roi_heads import expand_boxes

    b = expand_boxes(boxes, (mask_size + 2) / mask_size).to(torch.int64).double()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    pad_x, pad_y = w / (mask_size + 2), h / (mask_size + 2)
    return torch.stack([b[:, 0] + pad_x, b[:, 1] + pad_y, b[:, 0] + w - pad_x, b[:, 1] + h - pad_y], dim=1)


def _assert_same_detections(ours, theirs, *, masks: str | None = None, unpasted=None):
    """``masks="exact"``: the [D, 1, 28, 28] mask probabilities equal torchvision's. ``masks="pasted"``:
    the pasted masks differ from torchvision's only by where the paste puts a mask (API.md: at pixel
    centres of the exact box; torchvision: a truncated, enlarged integer box). Random-weight masks are
    noise at the scale of a mask cell (neighbouring cells differ by 0.3 on average), so a sub-pixel shift
    changes many pixels by that much, and no bound on the difference would say much. Instead both
    pastes must equal that one formula (pydet.reference.paste_masks, float64) applied to torchvision's
    ``unpasted`` masks, each with its own box."""
    from pydet.reference.paste_masks import paste_masks as reference_paste

    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a["boxes"].shape == b["boxes"].shape, (a["boxes"].shape, b["boxes"].shape)
        rows = lambda d: torch.cat([d["boxes"], d["labels"][:, None].to(d["boxes"].dtype)], dim=1)  # noqa: E731
        perm = _tie_permutation(rows(a), rows(b), b["scores"], SCORE_ATOL)
        a = {key: value[perm] for key, value in a.items()}
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=SCORE_ATOL)
        assert torch.equal(a["labels"], b["labels"])
        if masks == "exact":
            torch.testing.assert_close(a["masks"], b["masks"], rtol=1e-4, atol=1e-4)
        elif masks == "pasted":
            assert a["masks"].shape == b["masks"].shape
            cells, image_shape = unpasted[i]["masks"][:, 0].cpu(), b["masks"].shape[-2:]
            ours_expected = reference_paste(cells, b["boxes"].cpu(), image_shape, threshold=None)
            theirs_expected = reference_paste(cells, torchvision_box_of_paste(b["boxes"].cpu(), cells.shape[-1]),
                                              image_shape, threshold=None)
            torch.testing.assert_close(a["masks"][:, 0].cpu().double(), ours_expected, rtol=0, atol=1e-4)
            torch.testing.assert_close(b["masks"][:, 0].cpu().double(), theirs_expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_masks", [False, True])
def test_same_outputs_as_torchvision(with_masks, device, monkeypatch):
    # pydet's eval forward folds BatchNorm into the convolutions and runs them channels-last: the same
    # float32 arithmetic up to rounding, but TF32 convolutions (cuDNN's default) would round the two
    # sides' different weights and layouts to 10-bit mantissas differently, far beyond the tolerances.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    tv = torchvision_model(with_masks).to(device)
    ours = (mask_rcnn_resnet50_fpn if with_masks else faster_rcnn_resnet50_fpn)()
    ours.load_state_dict(from_torchvision(tv.state_dict()), strict=True)
    ours = ours.to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 300, 400, generator=g).to(device), torch.rand(3, 360, 280, generator=g).to(device)]
    with torch.no_grad():
        tv_batch, _ = tv.transform(images)
        batch, _ = ours.transform(images)
        assert batch.image_sizes == [tuple(s) for s in tv_batch.image_sizes]
        torch.testing.assert_close(batch.tensors, tv_batch.tensors, rtol=0, atol=0)
        features = tv.backbone(tv_batch.tensors)
        for name, value in ours.backbone(batch.tensors).items():
            torch.testing.assert_close(value, features[name], rtol=1e-5, atol=1e-5)
        # Each stage gets torchvision's inputs, so a difference points at that stage.
        tv_proposals, _ = tv.rpn(tv_batch, features)
        tv_scores = torchvision_proposal_scores(tv.rpn, tv_batch, features, tv_proposals)
        proposals, _ = ours.rpn(batch, features)
        for a, b, s in zip(proposals, tv_proposals, tv_scores):
            assert a.shape == b.shape
            _assert_same_proposals(a, b, s)
        tv_detections, _ = tv.roi_heads(features, tv_proposals, tv_batch.image_sizes)
        detections, _ = ours.roi_heads(features, tv_proposals, batch.image_sizes)
        assert sum(d["boxes"].shape[0] for d in detections) > 0
        _assert_same_detections(detections, tv_detections, masks="exact" if with_masks else None)
        # torchvision's end to end run is the stages above, then the resize back and the paste
        _assert_same_detections(ours(images), tv(images), masks="pasted" if with_masks else None,
                                unpasted=tv_detections)
