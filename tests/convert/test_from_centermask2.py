import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pydet.convert import from_centermask2
from pydet.convert._normalization import fold_input_normalisation
from pydet.modeling.backbones import VoVNet
from pydet.modeling.backbones.resnet import ResNet
from pydet.modeling.transform import GeneralizedRCNNTransform
from pydet.models.centermask2 import centermask2

# pydet name -> official (detectron2 / centermask2) name, written independently of the converter's rules
_OFFICIAL_NAMES = [
    (r"^backbone\.body\.stem\.(\d)\.([01])\.(.+)$",
     lambda m: f"backbone.bottom_up.stem.stem_{int(m[1]) + 1}/{'conv' if m[2] == '0' else 'norm'}.{m[3]}"),
    (r"^backbone\.body\.stage(\d)\.osa(\d+)\.layers\.(\d+)\.([01])\.(.+)$",
     lambda m: f"backbone.bottom_up.stage{m[1]}.OSA{m[1]}_{m[2]}.layers.{m[3]}.OSA{m[1]}_{m[2]}_{m[3]}/"
               f"{'conv' if m[4] == '0' else 'norm'}.{m[5]}"),
    (r"^backbone\.body\.stage(\d)\.osa(\d+)\.concat\.([01])\.(.+)$",
     lambda m: f"backbone.bottom_up.stage{m[1]}.OSA{m[1]}_{m[2]}.concat.OSA{m[1]}_{m[2]}_concat/"
               f"{'conv' if m[3] == '0' else 'norm'}.{m[4]}"),
    (r"^backbone\.body\.stage(\d)\.osa(\d+)\.ese\.(.+)$",
     lambda m: f"backbone.bottom_up.stage{m[1]}.OSA{m[1]}_{m[2]}.ese.{m[3]}"),
    (r"^backbone\.body\.conv1\.weight$", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    (r"^backbone\.body\.bn1\.(.+)$", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)$",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)$",
     lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.(.+)$", lambda m: f"backbone.fpn_lateral{int(m[1]) + 3}.{m[2]}"),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.(.+)$", lambda m: f"backbone.fpn_output{int(m[1]) + 3}.{m[2]}"),
    (r"^backbone\.fpn\.extra_blocks\.(.+)$", lambda m: f"backbone.top_block.{m[1]}"),
    (r"^fcos\.head\.centerness\.(.+)$", lambda m: f"proposal_generator.fcos_head.ctrness.{m[1]}"),
    (r"^fcos\.head\.(.+)$", lambda m: f"proposal_generator.fcos_head.{m[1]}"),
    (r"^mask_head\.convs\.(\d+)\.(.+)$", lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) // 2 + 1}.{m[2]}"),
    (r"^mask_head\.spatial_attention\.(.+)$", lambda m: f"roi_heads.mask_head.spatialAtt.{m[1]}"),
    (r"^mask_head\.(.+)$", lambda m: f"roi_heads.mask_head.{m[1]}"),
    (r"^maskiou_head\.convs\.(\d+)\.(.+)$",
     lambda m: f"roi_heads.maskiou_head.maskiou_fcn{int(m[1]) // 2 + 1}.{m[2]}"),
    (r"^maskiou_head\.(fc\d)\.(.+)$", lambda m: f"roi_heads.maskiou_head.maskiou_{m[1]}.{m[2]}"),
    (r"^maskiou_head\.predictor\.(.+)$", lambda m: f"roi_heads.maskiou_head.maskiou.{m[1]}"),
]
CONFIGS = [(backbone, lite) for backbone in ("vovnet19_slim", "vovnet19", "vovnet39", "vovnet57", "vovnet99",
                                             "resnet50") for lite in (False, True)]


def _official_name(key: str) -> str:
    for pattern, replace in _OFFICIAL_NAMES:
        m = re.match(pattern, key)
        if m:
            return replace(m)
    raise AssertionError(f"no official name for {key}")


def _meta_model(backbone: str, lite: bool):
    with torch.device("meta"):
        return centermask2(backbone, lite=lite, stride_in_1x1=backbone == "resnet50")


def _official_state(backbone: str, lite: bool) -> dict:
    """An official-layout state dict for this config; values are zero-stride views (no memory)."""
    state = _meta_model(backbone, lite).state_dict()
    return {_official_name(k): torch.zeros(()).expand(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("backbone, lite", CONFIGS)
def test_every_official_config_loads_strictly(backbone, lite):
    converted = from_centermask2({"model": _official_state(backbone, lite), "iteration": 0})
    model = _meta_model(backbone, lite)
    model.load_state_dict(converted, strict=True, assign=True)


def test_official_tensor_values_reach_their_pydet_parameters():
    official = {k: torch.randn(v.shape) for k, v in _official_state("vovnet19_slim", True).items()}
    official["backbone.bottom_up.stem.stem_1/norm.num_batches_tracked"] = torch.tensor(7)
    converted = from_centermask2(official)
    torch.testing.assert_close(converted["fcos.head.centerness.bias"],
                               official["proposal_generator.fcos_head.ctrness.bias"], rtol=0, atol=0)
    torch.testing.assert_close(converted["maskiou_head.convs.2.weight"],
                               official["roi_heads.maskiou_head.maskiou_fcn2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(converted["backbone.body.stage4.osa1.concat.1.running_var"],
                               official["backbone.bottom_up.stage4.OSA4_1.concat.OSA4_1_concat/norm.running_var"],
                               rtol=0, atol=0)
    # numpy arrays (detectron2 .pkl files) and DataParallel prefixes convert the same way
    as_numpy = {f"module.{k}": v.numpy() for k, v in official.items()}
    for key, value in from_centermask2({"model": as_numpy}).items():
        torch.testing.assert_close(value, converted[key], rtol=0, atol=0)


def _detectron2_input(rgb: torch.Tensor, mean, std, input_format: str) -> torch.Tensor:
    pixels = 255 * (rgb.flip(0) if input_format == "BGR" else rgb)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("trunk, first, mean, std, input_format", [
    ("vovnet", "stem.0.0.weight", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), "BGR"),
    ("resnet", "conv1.weight", (103.53, 116.28, 123.675), (57.375, 57.12, 58.395), "BGR"),
    ("vovnet", "stem.0.0.weight", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB"),
])
def test_folded_normalisation_is_exact_at_the_borders(trunk, first, mean, std, input_format):
    """detectron2 normalises then zero-pads (conv and batch padding); pydet with the folded first conv, fed
    RGB in [0, 1] through its own transform, computes the same features over the whole padded batch."""
    torch.manual_seed(0)
    body = (VoVNet(19, slim=True) if trunk == "vovnet" else ResNet(50, returned_layers=(1,))).eval()
    for name, buffer in body.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith(("running_mean", "bias")):
            buffer.normal_(0, 0.5)
    rgb = torch.randint(0, 256, (3, 37, 45)).float() / 255
    transform = GeneralizedRCNNTransform(min_size=37, max_size=1000)  # resize is the identity
    pydet_input = transform([rgb])[0].tensors
    assert pydet_input.shape[-2:] == (64, 64)  # padded to a multiple of 32
    reference_input = F.pad(_detectron2_input(rgb, mean, std, input_format), (0, 64 - 45, 0, 64 - 37))[None]
    with torch.no_grad():
        reference = list(body(reference_input).values())
        weight = body.stem[0][0].weight if trunk == "vovnet" else body.conv1.weight
        weight.copy_(fold_input_normalisation(weight.clone(), mean, std, input_format))
        folded = list(body(pydet_input).values())
    for ours, theirs in zip(folded, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_first_conv_is_folded_in_the_converted_state():
    official = {k: torch.randn(v.shape) for k, v in _official_state("vovnet19_slim", True).items()}
    converted = from_centermask2(official, pixel_std=(2.0, 4.0, 8.0))
    weight = official["backbone.bottom_up.stem.stem_1/conv.weight"]
    imagenet_std = (0.229, 0.224, 0.225)
    for rgb, bgr, std in ((0, 2, 8.0), (1, 1, 4.0), (2, 0, 2.0)):
        torch.testing.assert_close(converted["backbone.body.stem.0.0.weight"][:, rgb],
                                   weight[:, bgr] * 255 * imagenet_std[rgb] / std)


def test_errors_name_the_key_or_argument():
    official = _official_state("vovnet19_slim", True)
    with pytest.raises(ValueError, match=r"unexpected key 'roi_heads\.box_head\.fc1\.weight'"):
        from_centermask2({**official, "roi_heads.box_head.fc1.weight": torch.zeros(2)})
    missing = dict(official)
    del missing["roi_heads.maskiou_head.maskiou_fc2.bias"]
    with pytest.raises(ValueError, match=r"missing key 'maskiou_head\.fc2\.bias'"):
        from_centermask2(missing)
    wrong_shape = {**official, "roi_heads.mask_head.deconv.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"'mask_head\.deconv\.bias' has shape \(3,\).*expects \(128,\)"):
        from_centermask2(wrong_shape)
    with pytest.raises(ValueError, match="pixel_mean=.*cannot be folded exactly"):
        from_centermask2(official, pixel_mean=(102.9801, 115.9465, 122.7717))
    with pytest.raises(ValueError, match="pixel_mean=.*cannot be folded exactly"):
        from_centermask2(official, input_format="RGB")  # the BGR mean read in RGB order
    with pytest.raises(ValueError, match="input_format"):
        from_centermask2(official, input_format="YUV")
    with pytest.raises(ValueError, match="pixel_std must be positive"):
        from_centermask2(official, pixel_std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="pixel_std must be three finite numbers"):
        from_centermask2(official, pixel_std=(1.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match=r"value of 'backbone\.fpn_lateral3\.bias' is a list"):
        from_centermask2({**official, "backbone.fpn_lateral3.bias": [0.0] * 128})
    with pytest.raises(ValueError, match="checkpoint stores pixel_std"):
        from_centermask2({**official, "pixel_mean": torch.tensor([103.53, 116.28, 123.675]),
                          "pixel_std": torch.tensor([57.375, 57.12, 58.395])})
    with pytest.raises(ValueError, match="expected a detectron2 checkpoint dict"):
        from_centermask2([1, 2, 3])


def test_stored_normalisation_that_agrees_is_accepted():
    official = _official_state("vovnet19_slim", True)
    stored = {"pixel_mean": np.array([103.53, 116.28, 123.675]), "pixel_std": np.array([1.0, 1.0, 1.0])}
    converted = from_centermask2({"model": {**official, **stored}})
    assert "pixel_mean" not in converted and "pixel_std" not in converted
