"""Standard-ONNX translations of pydet's ops for ``torch.onnx.export(..., dynamo=True)``.

The op wrappers switch to their translation when ``torch.onnx.is_in_onnx_export()``: the translation is
written in torch operators (which the exporter maps to ONNX) around single ONNX operators emitted with
``torch.onnx.ops.symbolic``, so the exported file runs on any ONNX runtime without a custom domain.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# NonMaxSuppression, RoiAlign (with coordinate_transformation_mode) and TopK as of opset 16; 18 for the rest.
ONNX_OPSET = 18


def onnx_op(name: str, inputs: Sequence[Tensor], attributes: dict, *, dtype: torch.dtype, shape) -> Tensor:
    """One ONNX operator of the default domain, with the output dtype and (possibly symbolic) shape given."""
    return torch.onnx.ops.symbolic(name, tuple(inputs), attributes, dtype=dtype, shape=tuple(shape),
                                   version=ONNX_OPSET)
