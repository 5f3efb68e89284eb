"""Datasets (SyntheticShapes, COCO), training transforms and image/video I/O."""
from .coco import AnnotationError, CocoDetection
from .synthetic import SHAPES, SyntheticShapes, write_synthetic_video
from .video import InputError, VideoWriter, image_to_tensor, read_image, read_video

__all__ = ["SHAPES", "AnnotationError", "CocoDetection", "InputError", "SyntheticShapes", "VideoWriter", "image_to_tensor",
           "read_image", "read_video", "write_synthetic_video"]
