"""Feature extractors returning an ordered dict of feature maps."""
from .resnet import ResNet, resnet_fpn_backbone

__all__ = ["ResNet", "resnet_fpn_backbone"]
