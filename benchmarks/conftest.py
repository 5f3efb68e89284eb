"""pytest-benchmark suites: pydet against its float64 reference and, where it imports, torchvision.

Results are saved under benchmarks/results/ with the machine, torch version and thread count:
    python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu-<name>.json
Set PYDET_BENCH_THREADS to pin torch's intra-op threads (default 2, the CI machine's core count).
"""
import os
import platform

import pytest
import torch

import pydet  # noqa: F401

THREADS = int(os.environ.get("PYDET_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)

try:  # torchvision is optional: only the GPU machine has a build of it
    import torchvision  # noqa: F401
    import torchvision.ops  # noqa: F401
    HAS_TORCHVISION = True
except Exception:  # ImportError, or a torchvision built for another torch
    HAS_TORCHVISION = False

requires_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision does not import here")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["platform"] = platform.platform()
    if HAS_TORCHVISION:
        import torchvision
        machine_info["torchvision"] = torchvision.__version__
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
        machine_info["cuda"] = torch.version.cuda


def cuda_timer(fn):
    """Wrap ``fn`` so each benchmark round waits for the GPU to finish."""
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run
