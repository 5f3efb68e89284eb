"""pydet: C++/CUDA-accelerated object detection and instance segmentation for PyTorch.

Kernels are registered as ``torch.ops.pydet.*`` and wrapped with argument checking in
:mod:`pydet.ops`; detection models built from them live in :mod:`pydet.models`.
"""
import torch  # noqa: F401  (loads libtorch, which pydet._C links against)

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.pydet.*)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "pydet's compiled extension (pydet._C) is missing or does not match this torch. Build it with "
        "`pip install --no-build-isolation .` (or `make build`) against the torch you run."
    ) from exc

from . import ops  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
