"""Check the issues' speed targets against pytest-benchmark results.

    python -m benchmarks.targets benchmarks/results/gpu-h200.json [more.json ...] [--markdown out.md]

Each target names benchmarks by their pytest name (``test_nms[5000-pydet]``) and compares medians.
Targets whose benchmarks are missing from the given files (another device, torchvision absent) are
listed as "not measured", never as met. Exit status 1 when a measured target is missed.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``subject``'s median is at most ``limit_ms``, or ``baseline``'s median over ``subject``'s is at least
    ``min_speedup`` (a ``min_speedup`` below 1 bounds a slowdown: 1/1.5 means "within 1.5x of")."""
    issue: int
    what: str
    subject: str
    baseline: str | None = None
    min_speedup: float | None = None
    limit_ms: float | None = None
    device: str = "cpu"

    def check(self, medians: dict[str, float]) -> tuple[str, str]:
        if self.subject not in medians or (self.baseline and self.baseline not in medians):
            return "not measured", "-"
        subject_ms = medians[self.subject] * 1e3
        if self.limit_ms is not None:
            return ("met" if subject_ms <= self.limit_ms else "MISSED"), f"{subject_ms:.3f} ms (<= {self.limit_ms} ms)"
        baseline_ms = medians[self.baseline] * 1e3
        speedup = baseline_ms / subject_ms
        goal = f">= {self.min_speedup}x" if self.min_speedup >= 1 else f"within {1 / self.min_speedup:.2g}x"
        return (("met" if speedup >= self.min_speedup else "MISSED"),
                f"{subject_ms:.3f} vs {baseline_ms:.3f} ms = {speedup:.2f}x ({goal})")


TARGETS = [
    # Issue 2: NMS. CPU at 2 threads on the 2-core CI machine; GPU against torchvision in the same process.
    Target(2, "nms 5k boxes, IoU 0.5", "test_nms[5000-pydet]", limit_ms=18.0),
    Target(2, "batched_nms 20k boxes x 80 classes", "test_batched_nms[20000-pydet]", limit_ms=7.5),
    Target(2, "batched_nms 20k x 80 vs torchvision", "test_batched_nms[20000-pydet-cuda]",
           "test_batched_nms[20000-torchvision-cuda]", min_speedup=3.0, device="cuda"),
    Target(2, "multiclass_nms YOLOv7 batch 16 x 25,200 x 80", "test_multiclass_nms[25200-pydet-cuda]",
           limit_ms=1.0, device="cuda"),
    # Issue 3: RoIAlign, mask pasting, FCOS targets.
    Target(3, "roi_align forward 1000 RoIs", "test_roi_align_forward[pydet]", limit_ms=200.0),
    Target(3, "roi_align backward 1000 RoIs", "test_roi_align_backward[pydet]", limit_ms=550.0),
    Target(3, "paste_masks 100 x 28x28 into 800x1216", "test_paste_masks[pydet]", limit_ms=40.0),
    Target(3, "fcos_targets 22k points x 100 GT", "test_fcos_targets[pydet]", limit_ms=15.0),
    Target(3, "roi_align forward vs torchvision", "test_roi_align_forward_cuda[pydet]",
           "test_roi_align_forward_cuda[torchvision]", min_speedup=1.2, device="cuda"),
    Target(3, "roi_align atomic backward vs torchvision", "test_roi_align_backward_cuda[pydet]",
           "test_roi_align_backward_cuda[torchvision]", min_speedup=1.2, device="cuda"),
    Target(3, "roi_align deterministic backward vs atomic", "test_roi_align_backward_cuda[pydet-deterministic]",
           "test_roi_align_backward_cuda[pydet]", min_speedup=1 / 1.5, device="cuda"),
    Target(3, "paste_masks vs the grid_sample method", "test_paste_masks[pydet-cuda]",
           "test_paste_masks[grid_sample-cuda]", min_speedup=5.0, device="cuda"),
    # Issue 4: Mask R-CNN eval on CPU, same weights as torchvision, same process.
    Target(4, "Mask R-CNN R50-FPN eval vs torchvision", "test_rcnn_resnet50_fpn_inference[mask_rcnn-pydet]",
           "test_rcnn_resnet50_fpn_inference[mask_rcnn-torchvision]", min_speedup=1.15),
    # Issue 15: masks straight to COCO RLE against full-frame masks encoded by pycocotools.
    Target(15, "paste_masks_rle 100 x 28x28 into 1024x1024 vs paste + pycocotools", "test_paste_masks_rle[pydet]",
           "test_paste_masks_rle[paste_masks+pycocotools]", min_speedup=10.0),
]


def load_medians(paths: list[str]) -> tuple[dict[str, float], list[dict]]:
    medians, machines = {}, []
    for path in paths:
        try:
            with open(path) as f:
                report = json.load(f)
            benchmarks = report["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a pytest-benchmark JSON report ({exc})") from None
        machines.append(report.get("machine_info", {}))
        for bench in benchmarks:
            medians[bench["name"]] = bench["stats"]["median"]
    return medians, machines


def report(medians: dict[str, float], machines: list[dict]) -> tuple[str, bool]:
    lines = ["| issue | target | device | result | measured |", "| ---: | --- | --- | --- | --- |"]
    missed = False
    for target in TARGETS:
        verdict, measured = target.check(medians)
        missed |= verdict == "MISSED"
        lines.append(f"| #{target.issue} | {target.what} | {target.device} | {verdict} | {measured} |")
    header = [f"- {m.get('gpu') or m.get('cpu', {}).get('brand_raw', '?')}, torch {m.get('torch', '?')}, "
              f"torchvision {m.get('torchvision', 'absent')}, {m.get('torch_threads', '?')} threads" for m in machines]
    return "\n".join(header + [""] + lines) + "\n", missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    text, missed = report(*load_medians(args.results))
    print(text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
