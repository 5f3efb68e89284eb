"""Multi-object tracking by detection: ByteTrack on top of any pydet detector.

:class:`ByteTracker` follows ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating
Every Detection Box", ECCV 2022): every frame, tracks are moved forward by a constant-velocity Kalman
filter, high-score detections are associated first (to tracked and lost tracks), then the low-score
detections that a plain score threshold would throw away are associated to the tracks still
unmatched, which keeps objects through occlusions where their detector score drops.

Also here: :func:`linear_assignment` (the optimal assignment the association uses, with a cost
threshold) and the identity metrics :func:`idf1` and :func:`id_switches` used to evaluate trackers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ops import box_iou
from .ops._checks import check_float, check_tensor

__all__ = ["ByteTracker", "KalmanBoxFilter", "linear_assignment", "idf1", "id_switches"]


# ----------------------------------------------------------------------------------------------
# Optimal assignment
# ----------------------------------------------------------------------------------------------

def _shortest_augmenting_path(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row of ``cost [n, m]`` (n <= m) to a distinct column.

    Jonker-Volgenant style: after a greedy start, the other rows are added one at a time, each by
    a Dijkstra search for the cheapest augmenting path in reduced costs, with dual variables
    ``u``/``v`` keeping the reduced costs of assigned edges non-negative. The scan over columns
    is vectorised. ``+inf`` marks a forbidden pair; each row's smallest cost must be 0. Returns
    the column of each row.
    """
    n, m = cost.shape
    u, v = np.zeros(n), np.zeros(m)
    col4row, row4col = _assign_free_minima(cost)
    for cur_row in np.flatnonzero(col4row < 0).tolist():
        shortest = np.full(m, np.inf)
        path = np.full(m, -1)
        scanned_cols = np.zeros(m, dtype=bool)
        scanned_rows = [cur_row]
        min_val, i, sink = 0.0, cur_row, -1
        while sink < 0:
            reduced = min_val + cost[i] - u[i] - v
            better = ~scanned_cols & (reduced < shortest)
            path[better] = i
            shortest[better] = reduced[better]
            candidates = np.where(scanned_cols, np.inf, shortest)
            min_val = candidates.min()
            if min_val == np.inf:
                raise ValueError("cost has no assignment of every row that avoids the forbidden (inf) pairs")
            # Among equally short paths prefer a free column: it ends the search at once.
            ties = np.flatnonzero(candidates == min_val)
            free = ties[row4col[ties] < 0]
            j = int(free[0] if free.size else ties[0])
            scanned_cols[j] = True
            if row4col[j] < 0:
                sink = j
            else:
                i = int(row4col[j])
                scanned_rows.append(i)
        _update_duals(u, v, shortest, scanned_rows, scanned_cols, col4row, cur_row, min_val)
        _augment(path, sink, cur_row, col4row, row4col)
    return col4row


def _assign_free_minima(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start from each row on its cheapest column where no earlier row claims it.

    Costs are shifted so that each row's minimum is 0; with zero duals these pairs are tight and
    every reduced cost non-negative, so the augmenting-path search may start from them. Tracking
    costs are near-diagonal, so most rows are settled here.
    """
    n, m = cost.shape
    col4row, row4col = np.full(n, -1), np.full(m, -1)
    best = cost.argmin(axis=1)
    candidates = np.flatnonzero(cost[np.arange(n), best] == 0.0)
    cols, first = np.unique(best[candidates], return_index=True)
    col4row[candidates[first]] = cols
    row4col[cols] = candidates[first]
    return col4row, row4col


def _update_duals(u, v, shortest, scanned_rows, scanned_cols, col4row, cur_row, min_val) -> None:
    u[cur_row] += min_val
    for r in scanned_rows[1:]:
        u[r] += min_val - shortest[col4row[r]]
    v[scanned_cols] -= min_val - shortest[scanned_cols]


def _augment(path, sink, cur_row, col4row, row4col) -> None:
    """Flip the assignments along the augmenting path that ends at the free column ``sink``."""
    j = sink
    while True:
        i = int(path[j])
        row4col[j] = i
        col4row[i], j = j, col4row[i]
        if i == cur_row:
            return


def _minimum_assignment(cost: np.ndarray) -> np.ndarray:
    """Column of each row (rectangular either way; -1 for rows left out when rows outnumber columns)."""
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.full(n, -1)
    if n > m:
        col4row = np.full(n, -1)
        row4col = _minimum_assignment(cost.T)
        col4row[row4col] = np.arange(m)
        return col4row
    # Every row is assigned exactly once, so shifting a row by a constant keeps the optimum; it
    # makes all costs non-negative, as the shortest-path search expects.
    row_min = cost.min(axis=1)
    row_min[np.isinf(row_min)] = 0.0
    return _shortest_augmenting_path(cost - row_min[:, None])


def _connected_components(allowed: np.ndarray) -> np.ndarray:
    """Component label of each row of the bipartite graph whose edges are ``allowed [n, m]``.

    Minimum-label propagation (rows through shared columns) with pointer jumping: a label is a row
    index whose own label may already be smaller, so following labels collapses a long chain of
    overlapping boxes (a crowd) in logarithmically many steps instead of one per box.
    """
    big = np.iinfo(np.int64).max
    label = np.arange(allowed.shape[0])
    while True:
        col_label = np.where(allowed, label[:, None], big).min(axis=0, initial=big)
        new = np.minimum(label, np.where(allowed, col_label[None, :], big).min(axis=1, initial=big))
        while not np.array_equal(new[new], new):
            new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _thresholded_assignment(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs minimising the summed ``cost - max_cost`` over pairs that cost at most ``max_cost``.

    Leaving a row (or column) unmatched is always allowed. Tracking costs are sparse (most boxes
    do not overlap), so the problem splits into connected components of the allowed pairs: a row
    and a column allowed only with each other are matched directly, the other components are
    solved one by one.
    """
    allowed = cost <= max_cost
    if allowed.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    row_degree, col_degree = allowed.sum(axis=1), allowed.sum(axis=0)
    first_col = allowed.argmax(axis=1)
    alone = (row_degree == 1) & (col_degree[first_col] == 1)
    rows_out, cols_out = [np.flatnonzero(alone)], [first_col[alone]]
    rest = np.flatnonzero((row_degree > 0) & ~alone)
    if rest.size:
        rest_cols = np.flatnonzero(allowed[rest].any(axis=0))
        sub_allowed = allowed[np.ix_(rest, rest_cols)]
        labels = _connected_components(sub_allowed)
        order = np.argsort(labels, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
            rows, cols = rest[group], rest_cols[sub_allowed[group].any(axis=0)]
            matched, choice = _component_assignment(cost[np.ix_(rows, cols)], max_cost)
            rows_out.append(rows[matched])
            cols_out.append(cols[choice])
    rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def _component_assignment(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Thresholded assignment as a rectangular one: each row gets a private "unmatched" column of
    cost 0 and pairs cost ``cost - max_cost`` (forbidden above ``max_cost``)."""
    n, m = cost.shape
    pairs = np.where(cost <= max_cost, cost - max_cost, np.inf)
    unmatched = np.full((n, n), np.inf)
    np.fill_diagonal(unmatched, 0.0)
    choice = _minimum_assignment(np.concatenate([pairs, unmatched], axis=1))
    matched = np.flatnonzero(choice < m)
    return matched, choice[matched]


def linear_assignment(cost, max_cost: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment of rows to columns of a ``[n, m]`` cost matrix (numpy array or tensor).

    Without ``max_cost``: ``min(n, m)`` pairs of minimum total cost (``+inf`` forbids a pair; a
    ``ValueError`` if no assignment avoids them), as ``scipy.optimize.linear_sum_assignment``.
    With ``max_cost``: pairs costing more than ``max_cost`` are never made and any row or column
    may stay unmatched; the pairs minimise ``sum(cost - max_cost)`` (ByteTrack's ``lapjv`` with
    ``cost_limit``). Returns ``(rows, cols)`` int64 arrays sorted by row.
    """
    cost = _as_cost_matrix(cost)
    if max_cost is not None:
        max_cost = check_float(max_cost, "max_cost")
        if not np.isfinite(max_cost):
            raise ValueError(f"max_cost must be finite, got {max_cost}")
        return _thresholded_assignment(cost, max_cost)
    col4row = _minimum_assignment(cost)
    rows = np.flatnonzero(col4row >= 0)
    return rows.astype(np.int64), col4row[rows].astype(np.int64)


def _as_cost_matrix(cost) -> np.ndarray:
    if isinstance(cost, Tensor):
        cost = cost.detach().cpu().double().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if np.isnan(cost).any() or np.isneginf(cost).any():
        raise ValueError("cost must not contain NaN or -inf")
    return cost


# ----------------------------------------------------------------------------------------------
# Constant-velocity Kalman filter on (cx, cy, aspect, h), vectorised over tracks
# ----------------------------------------------------------------------------------------------

def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xyxy boxes to (centre x, centre y, width / height, height)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    # A filtered height can shrink past zero on a long extrapolation; a tiny positive floor keeps
    # the box a box (it then overlaps nothing) instead of an inverted one.
    h = np.maximum(xyah[:, 3], 1e-6)
    w = xyah[:, 2] * h
    cx, cy = xyah[:, 0], xyah[:, 1]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


class KalmanBoxFilter:
    """Kalman filter of boxes moving at constant velocity, state ``(cx, cy, a, h, vcx, vcy, va, vh)``.

    The noise model is SORT/DeepSORT's, which ByteTrack uses: position and velocity noise are
    proportional to the box height (``std_weight_position``, ``std_weight_velocity``), the aspect
    ratio gets small fixed noise. All methods work on ``[T, 8]`` means and ``[T, 8, 8]`` covariances.
    """

    def __init__(self, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160):
        self.std_weight_position = std_weight_position
        self.std_weight_velocity = std_weight_velocity
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)

    def _std(self, h: np.ndarray, position: float, aspect: float, velocity: float, aspect_velocity: float):
        wp, wv = self.std_weight_position * position, self.std_weight_velocity * velocity
        ones = np.ones_like(h)
        return np.stack([wp * h, wp * h, aspect * ones, wp * h, wv * h, wv * h, aspect_velocity * ones, wv * h], 1)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at the measured ``[K, 4]`` xyah boxes, at rest, with a wide velocity prior."""
        mean = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
        std = self._std(measurements[:, 3], 2.0, 1e-2, 10.0, 1e-5)
        return mean, _diagonal(std ** 2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead."""
        process = _diagonal(self._std(mean[:, 3], 1.0, 1e-2, 1.0, 1e-5) ** 2)
        mean = mean @ self.motion.T
        cov = self.motion @ cov @ self.motion.T + process
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct the states with measured ``[K, 4]`` xyah boxes."""
        std = self._std(mean[:, 3], 1.0, 1e-1, 0.0, 0.0)[:, :4]
        innovation_cov = cov[:, :4, :4] + _diagonal(std ** 2)
        # The measurement picks the first four state components, so cov @ H^T = cov[:, :, :4];
        # the innovation covariance is symmetric, hence gain^T = solve(S, (cov H^T)^T).
        gain = np.linalg.solve(innovation_cov, cov[:, :, :4].transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = measurements - mean[:, :4]
        mean = mean + (gain @ innovation[:, :, None])[:, :, 0]
        cov = cov - gain @ innovation_cov @ gain.transpose(0, 2, 1)
        return mean, cov


def _diagonal(values: np.ndarray) -> np.ndarray:
    """``[T, D]`` -> ``[T, D, D]`` diagonal matrices."""
    out = np.zeros(values.shape + (values.shape[1],))
    idx = np.arange(values.shape[1])
    out[:, idx, idx] = values
    return out


# ----------------------------------------------------------------------------------------------
# ByteTrack
# ----------------------------------------------------------------------------------------------

class _Tracks:
    """The tracker's tracks as parallel arrays (one row per track), so that every step is vectorised.

    ``activated``: confirmed (matched on two frames, or born on the first frame); unconfirmed
    tracks have no id yet (``track_id == 0``). ``lost``: confirmed but unmatched since ``end_frame``.
    ``det``: index of the detection matched in the current frame, -1 for none.
    """

    FIELDS = ("mean", "cov", "track_id", "label", "activated", "lost", "start_frame", "end_frame", "det")

    def __init__(self, mean, cov, track_id, label, activated, lost, start_frame, end_frame, det):
        self.mean, self.cov = mean, cov
        self.track_id, self.label = track_id, label
        self.activated, self.lost = activated, lost
        self.start_frame, self.end_frame, self.det = start_frame, end_frame, det

    @classmethod
    def empty(cls) -> "_Tracks":
        def i64():
            return np.zeros(0, dtype=np.int64)

        def flag():
            return np.zeros(0, dtype=bool)

        return cls(np.zeros((0, 8)), np.zeros((0, 8, 8)), i64(), i64(), flag(), flag(), i64(), i64(), i64())

    def __len__(self) -> int:
        return len(self.track_id)

    def keep(self, mask: np.ndarray) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[mask])

    def extend(self, other: "_Tracks") -> None:
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


class ByteTracker:
    """ByteTrack multi-object tracker: ``update(boxes, scores, labels)`` once per frame -> track ids.

    Per frame, after a Kalman prediction of every track:

    1. detections scoring ``>= track_thresh`` are matched to the confirmed tracks, tracked or lost,
       by optimal assignment on ``1 - IoU * score`` (pairs costing more than ``match_thresh`` are
       never matched); a matched lost track is found again, under its old id;
    2. detections scoring in ``(low_thresh, track_thresh)`` are matched to the tracked tracks still
       unmatched on ``1 - IoU`` (at most 0.5): objects whose score drops under occlusion keep
       their track, while such detections never start a track;
    3. the high-score detections left are matched to unconfirmed tracks (born on the previous
       frame; cost at most 0.7), which are dropped when unmatched;
    4. unmatched tracked tracks become lost; the high-score detections still left that score at
       least ``new_track_thresh`` (default ``track_thresh + 0.1``, as ByteTrack) start unconfirmed
       tracks (confirmed at once on the first frame); tracks lost for more than ``track_buffer``
       frames are removed, as is the younger of a tracked and a lost track of one object
       (IoU > 0.85).

    Ids start at 1, are given when a track is confirmed (so an id is shown from a track's second
    frame, as in ByteTrack) and never reused. With ``labels``, a detection only matches a track of
    its label and a track keeps its class. Boxes of zero width or height are not tracked (-1).
    """

    SECOND_MATCH_THRESH = 0.5
    UNCONFIRMED_MATCH_THRESH = 0.7
    DUPLICATE_IOU = 0.85

    def __init__(self, track_thresh: float = 0.5, match_thresh: float = 0.8, track_buffer: int = 30, *,
                 low_thresh: float = 0.1, new_track_thresh: float | None = None):
        self.track_thresh = check_float(track_thresh, "track_thresh", low=0.0, high=1.0)
        self.match_thresh = check_float(match_thresh, "match_thresh", low=0.0, high=1.0)
        if isinstance(track_buffer, bool) or not isinstance(track_buffer, (int, np.integer)) or track_buffer < 0:
            raise ValueError(f"track_buffer must be a non-negative int (frames), got {track_buffer!r}")
        self.track_buffer = int(track_buffer)
        self.low_thresh = check_float(low_thresh, "low_thresh", low=0.0, high=self.track_thresh)
        if new_track_thresh is None:
            new_track_thresh = self.track_thresh + 0.1
        self.new_track_thresh = check_float(new_track_thresh, "new_track_thresh", low=self.track_thresh)
        self.kalman = KalmanBoxFilter()
        self.reset()

    def reset(self) -> None:
        """Forget every track; the next ``update`` is a first frame and ids start again at 1."""
        self.frame_id = 0
        self._next_id = 1
        self._tracks = _Tracks.empty()

    def update(self, boxes: Tensor, scores: Tensor, labels: Tensor | None = None) -> Tensor:
        """Track one frame's detections: xyxy ``boxes [N, 4]``, ``scores [N]``, optional integer
        ``labels [N]``. Returns int64 ``[N]`` track ids on CPU, -1 for detections in no track."""
        boxes, scores, labels = _check_frame(boxes, scores, labels)
        self.frame_id += 1
        tracks = self._tracks
        tracks.det[:] = -1
        self._predict()
        track_boxes = xyah_to_xyxy(tracks.mean[:, :4])
        frame = (boxes, scores, labels, track_boxes)

        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        high = np.flatnonzero(has_area & (scores >= self.track_thresh))
        low = np.flatnonzero(has_area & (scores > self.low_thresh) & (scores < self.track_thresh))
        confirmed = np.flatnonzero(tracks.activated)
        high = self._associate(frame, confirmed, high, self.match_thresh, fuse_score=True)
        still_tracked = confirmed[(tracks.det[confirmed] < 0) & ~tracks.lost[confirmed]]
        self._associate(frame, still_tracked, low, self.SECOND_MATCH_THRESH, fuse_score=False)
        unconfirmed = np.flatnonzero(~tracks.activated)
        high = self._associate(frame, unconfirmed, high, self.UNCONFIRMED_MATCH_THRESH, fuse_score=True)

        self._correct_matched(boxes)
        self._drop_unmatched()
        self._start_tracks(boxes, labels, high[scores[high] >= self.new_track_thresh])
        self._remove_duplicates()
        return self._frame_ids(len(boxes))

    def _predict(self) -> None:
        t = self._tracks
        if len(t) == 0:
            return
        # A lost track keeps drifting at its last velocity but stops growing or shrinking. Unconfirmed
        # tracks (one frame old, at rest) are predicted too, which only widens their uncertainty.
        t.mean[t.lost, 7] = 0.0
        t.mean, t.cov = self.kalman.predict(t.mean, t.cov)

    def _associate(self, frame, track_idx: np.ndarray, det_idx: np.ndarray, max_cost: float, *,
                   fuse_score: bool) -> np.ndarray:
        """Match ``det_idx`` to ``track_idx`` (recorded in ``tracks.det``); returns the unmatched detections."""
        if track_idx.size == 0 or det_idx.size == 0:
            return det_idx
        boxes, scores, labels, track_boxes = frame
        t = self._tracks
        similarity = box_iou(torch.from_numpy(track_boxes[track_idx]), torch.from_numpy(boxes[det_idx])).numpy()
        if fuse_score:
            similarity = similarity * scores[det_idx][None, :]
        cost = np.where(t.label[track_idx][:, None] == labels[det_idx][None, :], 1.0 - similarity, np.inf)
        rows, cols = _thresholded_assignment(cost, max_cost)
        t.det[track_idx[rows]] = det_idx[cols]
        unmatched = np.ones(det_idx.size, dtype=bool)
        unmatched[cols] = False
        return det_idx[unmatched]

    def _correct_matched(self, boxes: np.ndarray) -> None:
        """Kalman update of every matched track; a track matched for the second time gets its id."""
        t = self._tracks
        matched = np.flatnonzero(t.det >= 0)
        if matched.size == 0:
            return
        t.mean[matched], t.cov[matched] = self.kalman.update(
            t.mean[matched], t.cov[matched], xyxy_to_xyah(boxes[t.det[matched]]))
        t.activated[matched] = True
        t.lost[matched] = False
        t.end_frame[matched] = self.frame_id
        self._give_ids(matched[t.track_id[matched] == 0])

    def _give_ids(self, idx: np.ndarray) -> None:
        t = self._tracks
        idx = idx[np.argsort(t.det[idx], kind="stable")]  # in detection order, for reproducible ids
        t.track_id[idx] = np.arange(self._next_id, self._next_id + idx.size)
        self._next_id += idx.size

    def _drop_unmatched(self) -> None:
        """Unmatched confirmed tracks become lost; unmatched unconfirmed ones and those lost for
        longer than ``track_buffer`` frames are removed."""
        t = self._tracks
        unmatched = t.det < 0
        t.lost |= unmatched & t.activated
        expired = t.lost & (self.frame_id - t.end_frame > self.track_buffer)
        t.keep(~(unmatched & ~t.activated) & ~expired)

    def _start_tracks(self, boxes: np.ndarray, labels: np.ndarray, det_idx: np.ndarray) -> None:
        if det_idx.size == 0:
            return
        mean, cov = self.kalman.initiate(xyxy_to_xyah(boxes[det_idx]))
        k = det_idx.size
        frame = np.full(k, self.frame_id, dtype=np.int64)
        first_frame = np.full(k, self.frame_id == 1)
        new = _Tracks(mean, cov, np.zeros(k, dtype=np.int64), labels[det_idx], first_frame,
                      np.zeros(k, dtype=bool), frame, frame.copy(), det_idx.astype(np.int64))
        start = len(self._tracks)
        self._tracks.extend(new)
        if self.frame_id == 1:
            self._give_ids(np.arange(start, start + k))

    def _remove_duplicates(self) -> None:
        """Of a tracked and a lost track over one object (same label, IoU > 0.85) keep the older."""
        t = self._tracks
        tracked, lost = np.flatnonzero(~t.lost), np.flatnonzero(t.lost)
        if tracked.size == 0 or lost.size == 0:
            return
        boxes = xyah_to_xyxy(t.mean[:, :4])
        iou = box_iou(torch.from_numpy(boxes[tracked]), torch.from_numpy(boxes[lost])).numpy()
        same = (iou > self.DUPLICATE_IOU) & (t.label[tracked][:, None] == t.label[lost][None, :])
        p, q = np.nonzero(same)
        age = self.frame_id - t.start_frame
        tracked_younger = age[tracked[p]] <= age[lost[q]]
        drop = np.zeros(len(t), dtype=bool)
        drop[tracked[p[tracked_younger]]] = True
        drop[lost[q[~tracked_younger]]] = True
        t.keep(~drop)

    def _frame_ids(self, n: int) -> Tensor:
        t = self._tracks
        ids = np.full(n, -1, dtype=np.int64)
        shown = (t.det >= 0) & t.activated
        ids[t.det[shown]] = t.track_id[shown]
        return torch.from_numpy(ids)


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_frame(boxes, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one frame's detections and bring them to float64 / int64 numpy on the host."""
    check_tensor(boxes, "boxes", dims=2, last=4)
    check_tensor(scores, "scores", dims=1)
    n = boxes.shape[0]
    if scores.shape[0] != n:
        raise ValueError(f"scores must have one entry per box ({n}), got {scores.shape[0]}")
    boxes_np = boxes.detach().to("cpu", torch.float64).numpy()
    scores_np = scores.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(boxes_np).all():
        raise ValueError("boxes must be finite (no NaN or inf)")
    if (boxes_np[:, 2] < boxes_np[:, 0]).any() or (boxes_np[:, 3] < boxes_np[:, 1]).any():
        raise ValueError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
    if not np.isfinite(scores_np).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    if labels is None:
        return boxes_np, scores_np, np.zeros(n, dtype=np.int64)
    check_tensor(labels, "labels", dims=1, dtypes=_INTEGER_DTYPES)
    if labels.shape[0] != n:
        raise ValueError(f"labels must have one entry per box ({n}), got {labels.shape[0]}")
    return boxes_np, scores_np, labels.detach().to("cpu", torch.int64).numpy()


# ----------------------------------------------------------------------------------------------
# Identity metrics
# ----------------------------------------------------------------------------------------------

def _as_id_pairs(gt_ids, pred_ids) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt_ids.cpu() if isinstance(gt_ids, Tensor) else gt_ids, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred_ids.cpu() if isinstance(pred_ids, Tensor) else pred_ids, dtype=np.int64).reshape(-1)
    if gt.shape != pred.shape:
        raise ValueError(f"gt_ids and pred_ids must have the same length, got {gt.size} and {pred.size}")
    return gt, pred


def idf1(gt_ids, pred_ids) -> float:
    """IDF1 (Ristani et al., 2016) of a tracker's output against the ground truth.

    The input is one entry per observation of all frames: a ground-truth object and the prediction
    matched to it in its frame (``gt_ids[k]``, ``pred_ids[k]``), an unmatched ground truth
    (``pred_ids[k] = -1``) or an unmatched prediction (``gt_ids[k] = -1``). Ground-truth
    trajectories are mapped one to one to predicted ones so as to maximise the observations they
    share (IDTP); ``IDF1 = 2 IDTP / (#ground-truth observations + #predicted observations)``.
    """
    gt, pred = _as_id_pairs(gt_ids, pred_ids)
    num_gt, num_pred = int((gt >= 0).sum()), int((pred >= 0).sum())
    if num_gt + num_pred == 0:
        return 1.0
    both = (gt >= 0) & (pred >= 0)
    gt_values, gt_index = np.unique(gt[both], return_inverse=True)
    pred_values, pred_index = np.unique(pred[both], return_inverse=True)
    shared = np.zeros((gt_values.size, pred_values.size))
    np.add.at(shared, (gt_index, pred_index), 1.0)
    rows, cols = linear_assignment(-shared)
    return 2.0 * shared[rows, cols].sum() / (num_gt + num_pred)


def id_switches(gt_ids, pred_ids) -> int:
    """Number of times a ground-truth object is matched to a different track id than the last time
    it was matched (CLEAR MOT's IDSW). Observations as in :func:`idf1`, in frame order."""
    gt, pred = _as_id_pairs(gt_ids, pred_ids)
    last: dict[int, int] = {}
    switches = 0
    for g, p in zip(gt.tolist(), pred.tolist()):
        if g < 0 or p < 0:
            continue
        switches += g in last and last[g] != p
        last[g] = p
    return switches
