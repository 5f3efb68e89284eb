"""Weight conversion from other implementations' state dicts into pydet's layouts."""
from .detectron2 import from_detectron2  # noqa: F401
from .torchvision import from_torchvision
from .yolov7 import from_yolov7  # noqa: F401
