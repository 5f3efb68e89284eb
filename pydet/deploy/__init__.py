"""Deployment: fixed-size, export-ready forms of pydet's models and the tools that export and run them.

``model.export_module(image_size=(H, W), max_detections=D)`` returns a :class:`DetectionExport`: an
``nn.Module`` whose ``forward(images)`` takes float ``[B, 3, H, W]`` images in [0, 1] and returns the tuple

* ``boxes [B, D, 4]`` xyxy in pixels of the ``H x W`` input, ``scores [B, D]``, ``labels [B, D]`` int64,
  ``num_detections [B]`` int64; rows sorted by decreasing score, rows past ``num_detections[b]`` hold zero
  boxes, score 0 and label -1 (the order and padding of :func:`pydet.ops.multiclass_nms`);
* for mask models also ``masks [B, D, M, M]``: box-relative mask probabilities (zeros in padded rows),
  pasted into an image by :func:`pydet.ops.paste_masks`.

It is the eager model, padded: the same preprocessing for that fixed size and the same detections as
``model(list(images))`` (the first ``D`` of them). Its forward has no host synchronisation and no
data-dependent Python control flow, so it exports with a dynamic batch dimension to a ``torch.export``
program, to standard ONNX (pydet's ops translate themselves, see :mod:`pydet.ops._onnx`) and through
AOTInductor.

Interface for a model family (``pydet/deploy/<family>.py``; kept stable):

* subclass :class:`DetectionExport` (``pydet.deploy.common``): call ``super().__init__(model, image_size,
  max_detections, has_masks=...)``, which validates the arguments, stores ``self.model``,
  ``self.image_size (H, W)``, ``self.max_detections`` and puts the model in eval mode; implement
  ``detect(images) -> tuple`` (the output tuple above, images already checked by ``forward``);
* shared steps in ``pydet.deploy.common``: :class:`ResizeNormalize` (``GeneralizedRCNNTransform``'s resize,
  normalise and pad for a fixed input size, with ``restore_boxes`` back to input pixels),
  :func:`padded_rois` (``[B, D, 4]`` boxes to ``[B * D, 5]`` RoIAlign rows), :func:`mask_padding`
  (zero the rows past ``num_detections``), :func:`sort_detections` (re-sort rows by a new score) and
  :func:`pad_rows` (pad the output tuple to ``max_detections`` rows when the model keeps fewer);
* the model class gets a thin ``export_module(self, image_size=None, max_detections=100)`` that imports the
  family's module and returns it.

Tools (``pydet.deploy.export``): :func:`export_program` (``torch.export`` with a dynamic batch),
:func:`export_onnx`, :func:`package_aoti`, :func:`save_exported` (by format: ``pt2``, ``onnx``, ``aoti``) and
:func:`load_exported` (any of the three files -> a callable ``images [B, 3, H, W] -> output tuple``), and
:func:`detections_from_outputs` (the output tuple -> the eager per-image list of dicts), and
:class:`ExportedDetector` (an exported file behind the eager ``model(list_of_images)`` convention, which
``pydet detect --engine FILE`` runs).
"""
from .common import (OUTPUT_NAMES, DetectionExport, ResizeNormalize, mask_padding, pad_rows, padded_rois,
                     sort_detections)
from .export import (FORMATS, ExportedDetector, ExportedModel, detections_from_outputs, export_onnx, export_program, load_exported,
                     package_aoti, save_exported)

__all__ = [
    "OUTPUT_NAMES", "DetectionExport", "ResizeNormalize", "mask_padding", "pad_rows", "padded_rois", "sort_detections",
    "FORMATS", "ExportedDetector", "ExportedModel", "detections_from_outputs", "export_onnx", "export_program", "load_exported",
    "package_aoti", "save_exported",
]
