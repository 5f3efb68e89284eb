"""Run pydet's ByteTracker and the official ByteTrack side by side on the synthetic scenes of
tests/test_tracking.py and count the detections whose track assignment differs.

    python tools/bytetrack_parity.py /path/to/ByteTrack [--pixel-inclusive-iou]

Needs a checkout of https://github.com/ifzhang/ByteTrack and scipy (the official tracker's ``lap``
solver is replaced by ``scipy.optimize.linear_sum_assignment`` on the same extended matrix, and
``cython_bbox`` by numpy). The official IoU counts box sides as ``x2 - x1 + 1`` pixels; pydet uses
torchvision's ``box_iou``; the comparison uses pydet's convention unless ``--pixel-inclusive-iou``.
Ids are compared as partitions: a detection must be tracked by both or neither, and the ids of the
two trackers must correspond one to one over the whole sequence (the official one also spends ids
on tracks that are never confirmed).
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pydet.tracking import ByteTracker  # noqa: E402
from tests.test_tracking import busy_movers, scene_frames  # noqa: E402


def _lapjv(cost, extend_cost=True, cost_limit=np.inf):
    """``lap.lapjv`` with ``extend_cost`` and ``cost_limit``: every row and column may also go to a
    dummy partner at ``cost_limit / 2``."""
    from scipy.optimize import linear_sum_assignment
    n, m = cost.shape
    extended = np.full((n + m, n + m), cost_limit / 2.0)
    extended[:n, :m] = cost
    extended[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(extended)
    x, y = np.full(n, -1), np.full(m, -1)
    real = (rows < n) & (cols < m)
    x[rows[real]], y[cols[real]] = cols[real], rows[real]
    return float(extended[rows, cols].sum()), x, y


def _bbox_overlaps(pixel_inclusive: bool):
    one = 1.0 if pixel_inclusive else 0.0

    def overlaps(a, b):
        iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
        ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
        inter = iw.clip(min=0) * ih.clip(min=0)
        area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
        area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
        return inter / (area_a[:, None] + area_b[None, :] - inter)
    return overlaps


def load_official(checkout: str, pixel_inclusive: bool):
    """Import yolox.tracker.byte_tracker from ``checkout`` without yolox/__init__ and its dependencies."""
    np.float = float  # removed from numpy; the official matching code still spells it
    sys.modules["lap"] = types.SimpleNamespace(lapjv=_lapjv)
    sys.modules["cython_bbox"] = types.SimpleNamespace(bbox_overlaps=_bbox_overlaps(pixel_inclusive))
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    for name, path in [("yolox", "yolox"), ("yolox.tracker", "yolox/tracker")]:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(checkout, path)]
        sys.modules[name] = package
    from yolox.tracker import byte_tracker
    strack = byte_tracker.STrack
    # Remember which detection each output track took this frame.
    for method in ("update", "re_activate"):
        def wrapped(self, new_track, *args, _orig=getattr(strack, method), **kwargs):
            self.detection = new_track
            return _orig(self, new_track, *args, **kwargs)
        setattr(strack, method, wrapped)

    def activate(self, *args, _orig=strack.activate):
        self.detection = self
        return _orig(self, *args)
    strack.activate = activate
    return byte_tracker


def official_ids(tracker, boxes, scores):
    out = tracker.update(np.concatenate([boxes, scores[:, None]], axis=1), (1, 1), (1, 1))
    ids = np.full(len(boxes), -1)
    for track in out:  # scores are random floats, so a score names its detection
        ids[np.flatnonzero(scores == track.detection.score)[0]] = track.track_id
    return ids


def compare(byte_tracker, frames) -> tuple[int, int]:
    """(detections assigned differently, detections) over one sequence."""
    byte_tracker.BaseTrack._count = 0
    args = types.SimpleNamespace(track_thresh=0.5, track_buffer=30, match_thresh=0.8, mot20=False)
    official, ours = byte_tracker.BYTETracker(args), ByteTracker()
    correspondence, differ, total = {}, 0, 0
    for frame in frames:
        boxes, scores = frame.boxes, frame.scores
        mine = ours.update(torch.from_numpy(boxes), torch.from_numpy(scores)).numpy()
        theirs = official_ids(official, boxes, scores)
        for a, b in zip(mine.tolist(), theirs.tolist()):
            total += 1
            one_to_one = a < 0 or (correspondence.setdefault(a, b) == b and
                                   list(correspondence.values()).count(b) == 1)
            differ += (a < 0) != (b < 0) or not one_to_one
    return differ, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="a checkout of github.com/ifzhang/ByteTrack")
    parser.add_argument("--pixel-inclusive-iou", action="store_true", help="the official +1 pixel IoU")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    byte_tracker = load_official(args.checkout, args.pixel_inclusive_iou)
    all_differ = all_total = 0
    for seed in range(args.seeds):
        for jitter, miss, clutter in [(0.0, 0.0, 0), (1.5, 0.1, 4), (3.0, 0.2, 6)]:
            frames = scene_frames(busy_movers(), 70, seed=seed, jitter=jitter, miss_prob=miss,
                                  false_positives=clutter, score_range=(0.55, 0.95))
            differ, total = compare(byte_tracker, frames)
            print(f"seed {seed} jitter {jitter} missed {miss:.0%} clutter {clutter}: {differ} of {total} "
                  f"detections assigned differently")
            all_differ, all_total = all_differ + differ, all_total + total
    print(f"total: {all_differ} of {all_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
