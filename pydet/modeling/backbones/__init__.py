"""Feature extractors returning an ordered dict of feature maps."""
from .resnet import ResNet, resnet_fpn_backbone
from .vovnet import VoVNet

__all__ = ["ResNet", "VoVNet", "resnet_fpn_backbone"]
