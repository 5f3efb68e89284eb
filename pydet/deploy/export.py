"""Export a deployment module to a file (``torch.export`` program, ONNX, AOTInductor package) and run the file."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from ..ops import paste_masks
from ..ops._onnx import ONNX_OPSET
from .common import MASK_OUTPUT_NAMES, OUTPUT_NAMES

FORMATS = ("pt2", "onnx", "aoti")
# Example batches have two images: torch.export specialises a dimension that is 1 in the example.
EXAMPLE_BATCH = 2
MAX_BATCH = 1024


def _dynamic_batch() -> tuple[dict, ...]:
    return ({0: Dim("batch", min=1, max=MAX_BATCH)},)


def export_program(module: nn.Module, example: Tensor | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a deployment module with a dynamic batch dimension."""
    example = module.example_inputs(EXAMPLE_BATCH) if example is None else example
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch())


def export_onnx(module: nn.Module, path: str | os.PathLike, example: Tensor | None = None) -> Path:
    """Standard ONNX (opset 18) with a dynamic batch; input ``images``, outputs named as the output tuple."""
    example = module.example_inputs(EXAMPLE_BATCH) if example is None else example
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, dynamic_shapes=_dynamic_batch(),
                          input_names=["images"], output_names=list(module.output_names),
                          opset_version=ONNX_OPSET, external_data=False, verbose=False)
    return Path(path)


def package_aoti(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """AOTInductor: compile an exported program into a ``.pt2`` package (minutes for the larger models).

    The weights are frozen into the package (folded into constants, convolution weights prepacked): on the
    CPU that made Mask R-CNN's package 1.27x eager where the unfrozen one was 1.02x
    (benchmarks/results/cpu-deploy-rcnn.md).
    """
    from torch._inductor import aoti_compile_and_package
    height, width = program_image_size(program)
    configs = {"freezing": True, "aot_inductor.metadata": {"pydet_image_size": f"{height}x{width}"}}
    return Path(aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs))


def program_image_size(program: torch.export.ExportedProgram) -> tuple[int, int]:
    """The fixed ``(H, W)`` of an exported deployment program's ``images`` input."""
    inputs = set(program.graph_signature.user_inputs)
    (images,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
    return tuple(int(s) for s in images.meta["val"].shape[-2:])


def save_exported(module: nn.Module, format: str, path: str | os.PathLike, example: Tensor | None = None) -> Path:
    """Write ``module`` as ``format`` (``pt2``: ``torch.export.save`` of the program, ``onnx``, ``aoti``)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "onnx":
        return export_onnx(module, path, example)
    program = export_program(module, example)
    if format == "aoti":
        return package_aoti(program, path)
    torch.export.save(program, str(path))
    return Path(path)


def _file_format(path: Path) -> str:
    if path.suffix == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not an exported pydet model (neither ONNX nor a .pt2 archive)") from None
    return "aoti" if any("aotinductor" in name for name in names) else "pt2"


class ExportedModel:
    """An exported file loaded for inference: ``model(images [B, 3, H, W])`` returns the output tuple.

    ``format`` is ``pt2`` (a ``torch.export`` program), ``aoti`` (an AOTInductor package) or ``onnx`` (run
    by onnxruntime on the CPU; tensors in and out, converted through numpy).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.format = _file_format(self.path)
        if self.format == "onnx":
            import onnxruntime
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.output_names = tuple(o.name for o in self._session.get_outputs())
            self.image_size = tuple(self._session.get_inputs()[0].shape[-2:])
        elif self.format == "aoti":
            from torch._inductor import aoti_load_package
            self._runner = aoti_load_package(str(self.path))
            size = self._runner.get_metadata().get("pydet_image_size")
            self.output_names, self.image_size = None, tuple(int(s) for s in size.split("x")) if size else None
        else:
            program = torch.export.load(str(self.path))
            self._runner = program.module()
            self.output_names, self.image_size = None, program_image_size(program)

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.format == "onnx":
            outputs = self._session.run(None, {"images": images.detach().cpu().float().numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)
        with torch.no_grad():
            outputs = tuple(self._runner(images))
        if self.output_names is None:
            self.output_names = MASK_OUTPUT_NAMES if len(outputs) == 5 else OUTPUT_NAMES
            self.image_size = tuple(images.shape[-2:])
        return outputs


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Load an exported ``.pt2`` program, AOTInductor ``.pt2`` package or ``.onnx`` file for inference."""
    return ExportedModel(path)


def detections_from_outputs(outputs: tuple[Tensor, ...], input_size: tuple[int, int],
                            image_sizes: list[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
    """The output tuple as the eager models return detections: per image ``boxes``, ``scores``, ``labels``
    and, for mask models, ``masks [n, 1, h, w]`` (probabilities pasted into the image).

    ``input_size`` is the exported module's ``(H, W)``; with ``image_sizes`` (one ``(h, w)`` per image, the
    images having been resized to ``H x W``) boxes and masks are scaled back to each image.
    """
    boxes, scores, labels, counts = outputs[:4]
    height, width = input_size
    detections = []
    for i, n in enumerate(counts.tolist()):
        h, w = image_sizes[i] if image_sizes is not None else input_size
        det = {"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
        if (h, w) != (height, width):
            det["boxes"] = det["boxes"] * det["boxes"].new_tensor([w / width, h / height, w / width, h / height])
        if len(outputs) == 5:
            det["masks"] = paste_masks(outputs[4][i, :n], det["boxes"], (h, w), threshold=None)[:, None]
        detections.append(det)
    return detections


class ExportedDetector(nn.Module):
    """An exported file behind the eager calling convention, for ``pydet detect --engine``: ``model(images)``
    with a list of ``[3, h, w]`` images returns one detections dict per image.

    Each image is resized (bilinear) to the file's input size; boxes and masks are mapped back to the image.
    """

    def __init__(self, exported: ExportedModel, image_size: tuple[int, int] | None = None):
        super().__init__()
        self.exported = exported
        self.image_size = tuple(image_size or exported.image_size or ())
        if len(self.image_size) != 2 or not all(isinstance(s, int) for s in self.image_size):
            raise ValueError(f"{exported.path}: cannot tell the input size; give image_size")

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        import torch.nn.functional as F

        height, width = self.image_size
        batch = torch.stack([F.interpolate(img[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                             if tuple(img.shape[-2:]) != (height, width) else img for img in images])
        outputs = tuple(o.to(images[0].device) for o in self.exported(batch))
        return detections_from_outputs(outputs, (height, width), [tuple(img.shape[-2:]) for img in images])
