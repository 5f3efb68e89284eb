"""Weight conversion from other implementations' state dicts into pydet's layouts."""
from .torchvision import from_torchvision
from .yolov7 import from_yolov7  # noqa: F401
