import pytest
import torch
from torch import nn

from pydet import ops
from pydet.modeling import AnchorGenerator, FeaturePyramidNetwork, FrozenBatchNorm2d, LastLevelP6P7
from pydet.modeling.backbones import ResNet, resnet_fpn_backbone
from pydet.modeling.layers import conv_norm
from pydet.reference import anchors as ref_anchors
from pydet.structures import batch_images


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet50_fpn_matches_torchvision_layout():
    backbone = resnet_fpn_backbone(50)
    # torchvision's resnet50 without fc (23,508,032) less its 53,120 BatchNorm parameters, which are
    # buffers once frozen; plus the FPN on C2-C5 at 256 channels (3,344,384)
    assert _num_params(backbone.body) == 23_454_912
    assert _num_params(backbone) == 26_799_296
    keys = list(backbone.state_dict())
    assert keys[:2] == ["body.conv1.weight", "body.bn1.weight"]
    assert "body.layer4.2.conv3.weight" in keys and "fpn.inner_blocks.0.0.weight" in keys
    assert "fpn.layer_blocks.3.0.bias" in keys
    # trainable_layers=3: stem and layer1 frozen, as torchvision
    assert not backbone.body.conv1.weight.requires_grad and not backbone.body.layer1[0].conv1.weight.requires_grad
    assert backbone.body.layer2[0].conv1.weight.requires_grad


def test_resnet_fpn_shapes_and_gradients():
    backbone = resnet_fpn_backbone(18, trainable_layers=5)
    feats = backbone(torch.rand(2, 3, 96, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    sum(f.sum() for f in feats.values()).backward()
    assert backbone.body.conv1.weight.grad is not None and backbone.body.conv1.weight.grad.abs().sum() > 0


def test_fpn_with_p6p7_and_returned_layers():
    body = ResNet(18, returned_layers=(2, 3, 4))
    fpn = FeaturePyramidNetwork(body.out_channels_list, 64, LastLevelP6P7(64, 64))
    out = fpn(body(torch.rand(1, 3, 128, 128)))
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    assert [f.shape[-1] for f in out.values()] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="returned_layers"):
        ResNet(50, returned_layers=(0, 5))
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)


def test_frozen_batchnorm_equals_eval_batchnorm_and_loads_bn_checkpoints():
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))
    # bit-identical to torchvision's FrozenBatchNorm2d formula, so converted models give equal outputs
    scale = frozen.weight * (frozen.running_var + frozen.eps).rsqrt()
    shift = frozen.bias - frozen.running_mean * scale
    assert torch.equal(frozen(x), x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1))
    assert _num_params(frozen) == 0


@pytest.mark.parametrize("norm_cls", [FrozenBatchNorm2d, nn.BatchNorm2d])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_conv_norm_folds_out_of_training_only(norm_cls, conv_bias):
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(4, 8, 3, padding=1, bias=conv_bias), norm_cls(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2), norm.bias.normal_(), norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    # training: the two steps, bit for bit (a BatchNorm2d uses batch statistics and updates its running ones)
    conv.train(), norm.train()
    assert torch.equal(conv_norm(conv, norm, x), norm(conv(x)))
    conv.eval(), norm.eval()
    expected = norm(conv(x))
    folded = conv_norm(conv, norm, x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
    # gradients go through the fold: to the input, the conv weight and a BatchNorm2d's affine parameters
    params = [x, conv.weight] + ([norm.weight] if norm_cls is nn.BatchNorm2d else [])
    for a, b in zip(torch.autograd.grad(folded.square().sum(), params), torch.autograd.grad(expected.square().sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # folded at each call, so changed statistics are seen at once
    with torch.no_grad():
        norm.running_var.mul_(4)
        torch.testing.assert_close(conv_norm(conv, norm, x), norm(conv(x)), rtol=1e-5, atol=1e-5)
    assert torch.equal(conv_norm(conv, nn.Identity(), x), conv(x))


def test_anchor_generator_matches_torchvision_reference():
    sizes = ((32,), (64,), (128,), (256,), (512,))
    gen = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    assert gen.num_anchors_per_location() == [3] * 5
    images = batch_images([torch.rand(3, 200, 300), torch.rand(3, 180, 320)])
    feature_sizes = [(images.tensors.shape[-2] // s, images.tensors.shape[-1] // s) for s in (4, 8, 16, 32, 64)]
    feats = [torch.zeros(2, 1, h, w) for h, w in feature_sizes]
    anchors = gen(images, feats)
    assert len(anchors) == 2
    strides = [(images.tensors.shape[-2] // h, images.tensors.shape[-1] // w) for h, w in feature_sizes]
    cells = [ops.cell_anchors(s, (0.5, 1.0, 2.0)) for s in sizes]
    expected = torch.cat(ref_anchors.grid_anchors(feature_sizes, strides, cells))
    assert torch.equal(anchors[0], expected) and torch.equal(anchors[1], expected)
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(sizes, ((1.0,), (1.0,)))


def test_batch_images_pads_to_multiple():
    images = batch_images([torch.ones(3, 50, 70), torch.ones(3, 65, 33)], size_divisible=32)
    assert images.tensors.shape == (2, 3, 96, 96)
    assert images.image_sizes == [(50, 70), (65, 33)]
    assert images.tensors[1, :, 65:].abs().sum() == 0 and images.tensors[1, :, :65, :33].eq(1).all()
    with pytest.raises(ValueError, match="images"):
        batch_images([])
