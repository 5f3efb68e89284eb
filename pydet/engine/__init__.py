"""Training, evaluation and detection for every pydet model (``pydet train | eval | detect``)."""
from .checkpoint import load_checkpoint, read_weights, save_checkpoint
from .detect import detect
from .evaluate import coco_evaluate, evaluate
from .model_info import LabelMap, build_model
from .train import init_distributed, train

__all__ = ["LabelMap", "build_model", "coco_evaluate", "detect", "evaluate", "init_distributed", "load_checkpoint",
           "read_weights", "save_checkpoint", "train"]
