"""ByteTracker benchmarks: 10 frames of N objects on a grid drifting at constant velocity with 1-pixel
jitter and scores in [0.3, 0.95] (so both association stages work), from a fresh tracker; and the optimal
assignment on a dense random cost matrix, against scipy's ``linear_sum_assignment`` where it imports.
"""
import functools
import importlib.util

import numpy as np
import pytest
import torch

from pydet.tracking import ByteTracker, linear_assignment

FRAMES = 10
requires_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy is not installed")


@functools.lru_cache(maxsize=None)
def _frames(n):
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.stack(np.meshgrid(np.arange(side) * 60.0, np.arange(side) * 60.0), -1).reshape(-1, 2)[:n]
    start = np.concatenate([xy, xy + [30.0, 45.0]], axis=1)
    step = np.array([2.0, 1.0, 2.0, 1.0])
    scores = torch.tensor(rng.uniform(0.3, 0.95, n), dtype=torch.float32)
    return [(torch.tensor(start + f * step + rng.normal(0, 1.0, (n, 4)), dtype=torch.float32), scores)
            for f in range(FRAMES)]


def _track(frames):
    tracker = ByteTracker()
    for boxes, scores in frames:
        tracker.update(boxes, scores)


@pytest.mark.benchmark(group="bytetrack-10-frames")
@pytest.mark.parametrize("n", [20, 100, 500])
def test_bytetrack_update(benchmark, n):
    benchmark(_track, _frames(n))


@pytest.mark.benchmark(group="linear_assignment-dense")
@pytest.mark.parametrize("impl", ["pydet", pytest.param("scipy", marks=requires_scipy)])
@pytest.mark.parametrize("n", [50, 200])
def test_linear_assignment(benchmark, n, impl):
    cost = np.random.default_rng(0).random((n, n))
    if impl == "scipy":
        from scipy.optimize import linear_sum_assignment
        benchmark(linear_sum_assignment, cost)
        return
    benchmark(linear_assignment, cost)
