"""Check a deployment path's detections against eager's (``pydet export``'s verification, tests, benchmarks)."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .export import load_exported

# The "same detections": boxes within 1e-2 px, scores within 1e-4 (float rounding, never a change).
BOX_TOL = 1e-2
SCORE_TOL = 1e-4


def detection_order(detection: dict[str, Tensor], rows: int) -> Tensor:
    """Indices of an eager detection dict's first ``rows`` detections, sorted by score (the rows of the
    deployment tuple, in order)."""
    n = min(rows, len(detection["scores"]))
    return detection["scores"][:n].sort(descending=True, stable=True).indices


def outputs_from_detections(detections: list[dict[str, Tensor]], rows: int) -> tuple[Tensor, ...]:
    """The eager models' per-image detections as the output tuple ``(boxes, scores, labels,
    num_detections)``: each image's first ``rows`` detections sorted by score, padded (masks left out: eager
    ones are pasted into the image, the tuple's are box-relative)."""
    boxes, scores, labels, counts = [], [], [], []
    for det in detections:
        order = detection_order(det, rows)
        n = len(order)
        pad = rows - n
        boxes.append(torch.cat([det["boxes"][order], det["boxes"].new_zeros(pad, 4)]))
        scores.append(torch.cat([det["scores"][order], det["scores"].new_zeros(pad)]))
        labels.append(torch.cat([det["labels"][order], det["labels"].new_full((pad,), -1)]))
        counts.append(n)
    return torch.stack(boxes), torch.stack(scores), torch.stack(labels), torch.tensor(counts)


def compare_outputs(expected: tuple[Tensor, ...], actual: tuple[Tensor, ...], *, box_tol: float = BOX_TOL,
                    score_tol: float = SCORE_TOL) -> dict[str, float | bool | int]:
    """Pair each image's rows one to one and report the largest differences over the pairs.

    A row of ``actual`` pairs with the nearest unpaired row of ``expected`` with the same label (distance:
    box and score differences in units of ``box_tol`` and ``score_tol``), so rows whose scores differ by float
    rounding may trade places without counting as different. Returns ``counts_equal``, ``labels_equal``
    (every row found a partner of its label), ``unpaired`` (rows that did not), the largest ``boxes``,
    ``scores`` (and ``masks``, where both tuples have them) differences over the pairs, ``padding`` (rows past
    the count are label -1, score 0) and ``same_detections``: all of these hold and the differences are
    within the tolerances.
    """
    expected = [e.detach().cpu() for e in expected]
    actual = [a.detach().cpu() for a in actual]
    counts_equal = torch.equal(expected[3], actual[3])
    report: dict[str, float | bool | int] = {"counts_equal": counts_equal, "labels_equal": False}
    if not counts_equal:
        report["same_detections"] = False
        return report
    worst = {"boxes": 0.0, "scores": 0.0}
    if len(expected) == len(actual) == 5:
        worst["masks"] = 0.0
    unpaired = 0
    padding = True
    for i, n in enumerate(expected[3].tolist()):
        box_diff = (expected[0][i, :n, None].double() - actual[0][i, None, :n].double()).abs().amax(-1)
        score_diff = (expected[1][i, :n, None].double() - actual[1][i, None, :n].double()).abs()
        distance = torch.maximum(box_diff / box_tol, score_diff / score_tol)
        distance[expected[2][i, :n, None] != actual[2][i, None, :n]] = float("inf")
        for row in range(n):
            j = int(distance[:, row].argmin())
            if not torch.isfinite(distance[j, row]):
                unpaired += 1
                continue
            distance[j] = float("inf")  # expected row j is taken
            worst["boxes"] = max(worst["boxes"], float(box_diff[j, row]))
            worst["scores"] = max(worst["scores"], float(score_diff[j, row]))
            if "masks" in worst:
                worst["masks"] = max(worst["masks"], float((expected[4][i, j] - actual[4][i, row]).abs().max()))
        padding &= bool((actual[2][i, n:] == -1).all() and (actual[1][i, n:] == 0).all())
    report.update(labels_equal=unpaired == 0, unpaired=unpaired, **worst, padding=padding)
    report["same_detections"] = (unpaired == 0 and padding and worst["boxes"] <= box_tol
                                 and worst["scores"] <= score_tol)
    return report


def assert_same_detections(expected: tuple[Tensor, ...], actual: tuple[Tensor, ...], *, box_tol: float = BOX_TOL,
                           score_tol: float = SCORE_TOL, mask_tol: float | None = None) -> dict:
    """Raise ``AssertionError`` unless ``actual`` holds ``expected``'s detections (:func:`compare_outputs`;
    masks within ``mask_tol`` when given). Returns the comparison."""
    report = compare_outputs(expected, actual, box_tol=box_tol, score_tol=score_tol)
    if mask_tol is not None and report["same_detections"]:
        report["same_detections"] = report["masks"] <= mask_tol
    assert report["same_detections"], f"not the same detections: {report}" + (
        "" if report["counts_equal"] else f" (counts {expected[3].tolist()} vs {actual[3].tolist()})")
    return report


def largest_differences(module: nn.Module, path: str | os.PathLike, images: Tensor) -> str:
    """Run the exported file once on ``images`` and describe its largest differences from ``module``."""
    with torch.no_grad():
        expected = module(images)
    report = compare_outputs(expected, load_exported(path)(images))
    if not report["counts_equal"]:
        return "DIFFERENT detection counts"
    numbers = ", ".join(f"{k} {report[k]:.3g}" for k in ("boxes", "scores", "masks") if k in report)
    return f"same counts, {'same' if report['labels_equal'] else 'DIFFERENT'} labels; largest differences: {numbers}"
