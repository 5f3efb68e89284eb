"""Same weights, same answers: pydet's Faster / Mask R-CNN against torchvision's, stage by stage.

Runs only where torchvision imports (the GPU machine); skipped here. Masks are compared before
pasting exactly, and after pasting loosely: ``pydet.ops.paste_masks`` resamples at pixel centres inside
the exact box (detectron2's paste, see API.md) where torchvision pastes into an integer-rounded box.
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
    with random weights and non-trivial BatchNorm statistics."""
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
    return model.eval()


@pytest.mark.parametrize("with_masks", [False, True])
def test_torchvision_factory_state_dict_loads_strictly(with_masks):
    # weights=None, weights_backbone=None builds BatchNorm2d (with num_batches_tracked counters)
    tv = (maskrcnn_resnet50_fpn if with_masks else fasterrcnn_resnet50_fpn)(weights=None, weights_backbone=None)
    ours = (mask_rcnn_resnet50_fpn if with_masks else faster_rcnn_resnet50_fpn)()
    ours.load_state_dict(from_torchvision(tv.state_dict()), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for n, p in tv.named_parameters() if ".bn" not in n and "downsample.1" not in n)


def _assert_same_detections(ours, theirs, *, masks: str | None = None):
    for a, b in zip(ours, theirs):
        assert a["boxes"].shape == b["boxes"].shape, (a["boxes"].shape, b["boxes"].shape)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])
        if masks == "exact":
            torch.testing.assert_close(a["masks"], b["masks"], rtol=1e-4, atol=1e-4)
        elif masks == "pasted":
            assert a["masks"].shape == b["masks"].shape
            diff = (a["masks"] - b["masks"]).abs().flatten(1).sum(1)
            area = ((a["boxes"][:, 2] - a["boxes"][:, 0] + 1) * (a["boxes"][:, 3] - a["boxes"][:, 1] + 1))
            assert (diff / area).max() < 0.1  # mean difference over each box: sub-pixel placement only


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_masks", [False, True])
def test_same_outputs_as_torchvision(with_masks, device):
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
        proposals, _ = ours.rpn(batch, features)
        for a, b in zip(proposals, tv_proposals):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        tv_detections, _ = tv.roi_heads(features, tv_proposals, tv_batch.image_sizes)
        detections, _ = ours.roi_heads(features, tv_proposals, batch.image_sizes)
        assert sum(d["boxes"].shape[0] for d in detections) > 0
        _assert_same_detections(detections, tv_detections, masks="exact" if with_masks else None)
        _assert_same_detections(ours(images), tv(images), masks="pasted" if with_masks else None)
