"""Weight conversion from other implementations' state dicts into pydet's layouts."""
from .torchvision import from_torchvision
