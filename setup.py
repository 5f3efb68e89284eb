"""Build script for pydet's C++/CUDA extension (pydet._C).

Always build with ``pip install --no-build-isolation .``: an isolated build would download a second,
different torch to compile against, and the extension must match the torch it runs with.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised by users without torch
    sys.stderr.write(
        "\npydet: PyTorch is not installed. pydet compiles against the torch it will run with, so\n"
        "install torch first (e.g. `pip install torch==2.13.0`), then build with\n"
        "`pip install --no-build-isolation .` (build isolation would fetch a different torch).\n\n"
    )
    sys.exit(1)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    # Relative paths: setuptools rejects absolute source paths in some versions.
    sources = [src for folder in ("csrc", "csrc/autocast", "csrc/cpu") for src in sorted(glob.glob(f"{folder}/*.cpp"))]
    define_macros = [("Py_LIMITED_API", "0x03090000")]
    # C++20 spelled out: torch < 2.13 would otherwise compile extensions as C++17 (std::bit_cast, ranges).
    # No FMA contraction: NMS compares IoU with the threshold exactly, the same on CPU and CUDA.
    cxx_flags = ["-std=c++20", "-O3", "-fopenmp", "-fvisibility=hidden", "-ffp-contract=off"]
    extra_link_args = ["-fopenmp"]  # resolves to the libgomp.so.1 torch already loaded
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # Never -use_fast_math: approximate division and flushed denormals change NMS decisions at the threshold.
        # --fmad=false: no FMA contraction, as -ffp-contract=off on the CPU, so that the host/device math
        # in csrc/<op>.h rounds the same on both backends.
        nvcc_flags = ["-std=c++20", "-O3", "--expt-relaxed-constexpr", "--fmad=false", "-lineinfo"]
        return CUDAExtension(
            "pydet._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=extra_link_args,
            py_limited_api=True,
        )
    return CppExtension(
        "pydet._C",
        sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link_args,
        py_limited_api=True,
    )


os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

setup(
    packages=find_packages(include=["pydet", "pydet.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
