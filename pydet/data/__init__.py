"""Datasets, transforms and image/video I/O."""
from .synthetic import SHAPES, SyntheticShapes, write_synthetic_video
from .video import InputError, VideoWriter, read_image, read_video

__all__ = ["SHAPES", "InputError", "SyntheticShapes", "VideoWriter", "read_image", "read_video",
           "write_synthetic_video"]
