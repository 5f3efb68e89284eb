"""Faster / Mask R-CNN ResNet-50-FPN inference, end to end: 480x640 images (resized to 800x1066).

CPU: one image. CUDA: batch 1 and 8, float32 and autocast (float16), against torchvision.

Random weights already give realistic post-processing work: the RPN keeps 1000 proposals and several
thousand (RoI, class) pairs score above 0.05, so NMS and (for Mask R-CNN) 100 masks are exercised.
torchvision runs with the same weights where it imports.
"""
import pytest
import torch

from pydet.models import faster_rcnn_resnet50_fpn, mask_rcnn_resnet50_fpn

from benchmarks.conftest import cuda_timer, requires_cuda, requires_torchvision

# "pydet-fused": frozen BatchNorm folded into the convolutions (GeneralizedRCNN.fuse).
IMPLS = ["pydet", "pydet-fused", pytest.param("torchvision", marks=requires_torchvision)]


def torchvision_model(with_masks: bool, state_dict):
    """torchvision's model with frozen BatchNorm (what ``weights=...`` builds), holding ``state_dict``."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    model = (MaskRCNN if with_masks else FasterRCNN)(backbone, num_classes=91)
    model.load_state_dict(state_dict, strict=True)  # pydet keeps torchvision's parameter names
    return model.eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_masks", [False, True], ids=["faster_rcnn", "mask_rcnn"])
def test_rcnn_resnet50_fpn_inference(benchmark, image, with_masks, impl):
    benchmark.group = f"{'mask' if with_masks else 'faster'}_rcnn_resnet50_fpn-480x640"
    torch.manual_seed(0)
    model = (mask_rcnn_resnet50_fpn if with_masks else faster_rcnn_resnet50_fpn)().eval()
    if impl == "torchvision":
        model = torchvision_model(with_masks, model.state_dict())
    elif impl == "pydet-fused":
        model.fuse()

    def run():
        with torch.inference_mode():
            return model([image])

    detections = benchmark(run)[0]
    assert detections["boxes"].shape[0] > 0


@requires_cuda
@pytest.mark.parametrize("impl", ["pydet", pytest.param("torchvision", marks=requires_torchvision)])
@pytest.mark.parametrize("precision", ["fp32", "autocast"])
@pytest.mark.parametrize("batch", [1, 8], ids=["b1", "b8"])
@pytest.mark.parametrize("with_masks", [False, True], ids=["faster_rcnn", "mask_rcnn"])
def test_rcnn_resnet50_fpn_inference_cuda(benchmark, image, with_masks, batch, precision, impl):
    benchmark.group = f"{'mask' if with_masks else 'faster'}_rcnn_resnet50_fpn-480x640-cuda-b{batch}-{precision}"
    torch.manual_seed(0)
    model = (mask_rcnn_resnet50_fpn if with_masks else faster_rcnn_resnet50_fpn)().eval()
    if impl == "torchvision":
        model = torchvision_model(with_masks, model.state_dict())
    model = model.cuda()
    images = [image.cuda()] * batch

    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=precision == "autocast"):
            return model(images)

    detections = benchmark.pedantic(cuda_timer(run), rounds=10, iterations=1, warmup_rounds=2)
    assert len(detections) == batch and detections[0]["boxes"].shape[0] > 0
