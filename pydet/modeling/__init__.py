"""Building blocks shared by pydet's models (detectron2's ``modeling``): backbones, FPN, anchors, poolers."""
from .anchor_generator import AnchorGenerator
from .fpn import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from .layers import FrozenBatchNorm2d
from .poolers import MultiScaleRoIAlign

__all__ = ["AnchorGenerator", "FeaturePyramidNetwork", "FrozenBatchNorm2d", "LastLevelMaxPool", "LastLevelP6P7",
           "MultiScaleRoIAlign"]
