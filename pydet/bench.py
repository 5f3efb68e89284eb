"""``pydet bench``: quick timings of pydet's kernels against their float64 references (and torchvision's
ops where torchvision imports), then of whole models. For careful numbers use ``benchmarks/``
(pytest-benchmark); this is the one-minute overview.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
import statistics
import time
from typing import Callable, Sequence

import torch

from . import ops

SMALL_MODELS = ("faster_rcnn_resnet18_fpn", "mask_rcnn_resnet18_fpn", "yolov7_tiny_320", "centermask2_lite_vovnet19_slim")


def _boxes(n: int, g: torch.Generator, size: float = 800.0, max_side: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * (size - max_side)
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * (max_side - 1) + 1], 1)


def _cases(g: torch.Generator) -> dict[str, tuple[str, Callable[[], tuple]]]:
    """op name -> (size description, builder of its positional arguments)."""
    def anchors():
        cells = [ops.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in (32, 64, 128, 256, 512)]
        return [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)], [(s, s) for s in (4, 8, 16, 32, 64)], cells

    def roi_align():
        return torch.rand(1, 64, 100, 152, generator=g), torch.cat([torch.zeros(64, 1), _boxes(64, g, 600)], 1), 7, 0.25, 2

    def multiclass():
        return _boxes(2 * 1000, g).view(2, 1000, 4), torch.rand(2, 1000, 10, generator=g), 0.8, 0.5, 100

    def fcos():
        sizes, strides = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)], [8, 16, 32, 64, 128]
        points = ops.grid_points(sizes, strides)
        counts = [h * w for h, w in sizes]
        stride = torch.cat([torch.full((c,), float(s)) for c, s in zip(counts, strides)])
        bounds = [0, 64, 128, 256, 512, math.inf]
        ranges = torch.cat([torch.tensor([[bounds[i], bounds[i + 1]]]).expand(c, 2) for i, c in enumerate(counts)])
        return torch.cat(points), stride, ranges, _boxes(20, g, 512), torch.randint(0, 80, (20,), generator=g), 80

    return {
        "box_iou": ("2000x500", lambda: (_boxes(2000, g), _boxes(500, g))),
        "encode_boxes": ("100k", lambda: (_boxes(100_000, g), _boxes(100_000, g))),
        "decode_boxes": ("100k", lambda: (torch.randn(100_000, 4, generator=g), _boxes(100_000, g))),
        "grid_anchors": ("FPN 800x1216", anchors),
        "nms": ("5000 boxes", lambda: (_boxes(5000, g), torch.rand(5000, generator=g), 0.5)),
        "batched_nms": ("5000 boxes, 80 classes",
                        lambda: (_boxes(5000, g), torch.rand(5000, generator=g),
                                 torch.randint(0, 80, (5000,), generator=g), 0.5)),
        "multiclass_nms": ("2 x 1000 boxes x 10 classes", multiclass),
        "roi_align": ("64 boxes, 64x100x152", roi_align),
        "paste_masks": ("20 masks into 480x640",
                        lambda: (torch.rand(20, 28, 28, generator=g), _boxes(20, g, 480), (480, 640))),
        "fcos_targets": ("5456 points, 20 boxes", fcos),
    }


def _reference(name: str) -> Callable | None:
    from . import reference

    for module in pkgutil.iter_modules(reference.__path__):
        fn = getattr(importlib.import_module(f"{reference.__name__}.{module.name}"), name, None)
        if callable(fn):
            return fn
    return None


def _torchvision(name: str) -> Callable | None:
    try:
        import torchvision.ops
    except Exception:  # absent, or built for another torch
        return None
    return getattr(torchvision.ops, name, None) if name in ("box_iou", "nms", "batched_nms", "roi_align") else None


def _median_ms(fn: Callable, repeat: int, warmup: bool = True) -> float:
    if warmup:  # first-call allocations, lazy initialisation
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _float64(args: tuple) -> tuple:
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else
                 [t.double() for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a
                 for a in args)


def run_bench(models: str = "small", repeat: int = 5, threads: int | None = None,
              only: Sequence[str] | None = None) -> list[dict]:
    """Print a table of median times (ms) and return its rows; ``only`` limits the kernels timed."""
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"pydet bench: CPU, {torch.get_num_threads()} threads, median of {repeat} runs (ms)")
    print(f"{'op':<16}{'size':<30}{'pydet':>10}{'reference':>12}{'torchvision':>13}")
    for name, (size, build) in _cases(g).items():
        fn = getattr(ops, name, None)
        if fn is None or (only is not None and name not in only):
            continue
        args = build()
        row = {"op": name, "size": size, "pydet": _median_ms(lambda: fn(*args), repeat)}
        ref = _reference(name)
        if ref is not None:
            ref_args = _float64(args)
            # the references are slow by design: a single run, without warm-up, is enough to compare
            row["reference"] = _median_ms(lambda: ref(*ref_args), 1, warmup=False)
        tv = _torchvision(name)
        if tv is not None:
            row["torchvision"] = _median_ms(lambda: tv(*args), repeat)
        rows.append(row)
        cells = [f"{row[k]:.3f}" if k in row else "-" for k in ("pydet", "reference", "torchvision")]
        print(f"{name:<16}{size:<30}{cells[0]:>10}{cells[1]:>12}{cells[2]:>13}")
    if models != "none":
        rows += _bench_models(models, max(1, min(repeat, 3)))
    return rows


@torch.inference_mode()
def _bench_models(which: str, repeat: int) -> list[dict]:
    from . import models

    names = [n for n in models.available() if which == "all" or n in SMALL_MODELS]
    if not names:
        print("no models registered")
        return []
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0))
    print(f"\n{'model (eval, one 320x320 image)':<46}{'ms':>10}{'images/s':>10}")
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = models.build(name).eval()
        ms = _median_ms(lambda: model([image]), repeat)
        rows.append({"model": name, "ms": ms})
        print(f"{name:<46}{ms:>10.1f}{1e3 / ms:>10.2f}")
    return rows
