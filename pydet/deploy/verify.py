"""Check an exported file against its eager deployment module."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .export import load_exported


def compare_outputs(expected: tuple[Tensor, ...], actual: tuple[Tensor, ...]) -> dict[str, float | bool]:
    """Largest absolute differences of boxes, scores (and masks) over the rows both fill, and whether the
    detection counts and labels agree."""
    expected = [e.detach().cpu() for e in expected]
    actual = [a.detach().cpu() for a in actual]
    same_counts = torch.equal(expected[3], actual[3])
    report: dict[str, float | bool] = {"counts_equal": same_counts, "labels_equal": False}
    if not same_counts:
        return report
    report["labels_equal"] = torch.equal(expected[2], actual[2])
    names = ("boxes", "scores") + (("masks",) if len(expected) == 5 else ())
    for name, e, a in zip(names, [expected[0], expected[1]] + expected[4:], [actual[0], actual[1]] + actual[4:]):
        report[name] = float((e - a).abs().max()) if e.numel() else 0.0
    return report


def largest_differences(module: nn.Module, path: str | os.PathLike, images: Tensor) -> str:
    """Run the exported file once on ``images`` and describe its largest differences from ``module``."""
    with torch.no_grad():
        expected = module(images)
    report = compare_outputs(expected, load_exported(path)(images))
    if not report["counts_equal"]:
        return "DIFFERENT detection counts"
    numbers = ", ".join(f"{k} {v:.3g}" for k, v in report.items() if isinstance(v, float))
    return f"same counts, {'same' if report['labels_equal'] else 'DIFFERENT'} labels; largest differences: {numbers}"
