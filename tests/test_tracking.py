"""ByteTracker on synthetic trajectories (identity metrics against the ground truth), its optimal
assignment against brute force, the identity metrics on hand-made cases, and input validation."""
import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from pydet.tracking import ByteTracker, KalmanBoxFilter, id_switches, idf1, linear_assignment, xyxy_to_xyah


# ----------------------------------------------------------------------------------------------
# Synthetic scenes
# ----------------------------------------------------------------------------------------------

@dataclass
class Mover:
    """A box moving at constant velocity, detected on ``frames`` (all frames when None)."""
    box: tuple
    velocity: tuple = (0.0, 0.0)
    frames: range | set | None = None
    label: int = 0
    low_score_frames: set = field(default_factory=set)  # frames where its score drops (occlusion)

    def visible(self, f):
        return self.frames is None or f in self.frames

    def box_at(self, f):
        vx, vy = self.velocity
        return np.asarray(self.box, dtype=np.float64) + f * np.array([vx, vy, vx, vy])


@dataclass
class Run:
    gt: list            # one entry per observation, in frame order (see pydet.tracking.idf1)
    pred: list
    ids: list           # per frame: {object index: track id} of the detected objects
    false_ids: list     # track ids given to false positives

    @property
    def idf1(self):
        return idf1(self.gt, self.pred)

    @property
    def switches(self):
        return id_switches(self.gt, self.pred)

    def ids_of(self, k):
        return [frame[k] for frame in self.ids if k in frame]


@dataclass
class Frame:
    boxes: np.ndarray   # [N, 4] detections: the objects' boxes, then clutter
    scores: np.ndarray  # [N]
    labels: np.ndarray  # [N]
    owners: list        # object index of each detection, -1 for clutter
    missed: list        # objects visible but not detected


def scene_frames(movers, num_frames, *, seed=0, jitter=0.0, miss_prob=0.0, false_positives=0,
                 score_range=(0.7, 0.95)):
    """What a detector would report on each frame: jittered boxes, misses and low-score clutter."""
    rng = np.random.default_rng(seed)
    for f in range(num_frames):
        boxes, scores, labels, owners, missed = [], [], [], [], []
        for k, m in enumerate(movers):
            if not m.visible(f):
                continue
            if rng.random() < miss_prob:
                missed.append(k)
                continue
            boxes.append(m.box_at(f) + rng.normal(0.0, jitter, 4) if jitter else m.box_at(f))
            scores.append(rng.uniform(0.2, 0.4) if f in m.low_score_frames else rng.uniform(*score_range))
            labels.append(m.label)
            owners.append(k)
        for _ in range(false_positives):  # anywhere in a 640x480 frame
            xy, wh = rng.uniform(0, 560, 2), rng.uniform(15, 60, 2)
            boxes.append(np.concatenate([xy, xy + wh]))
            scores.append(rng.uniform(0.11, 0.45))
            labels.append(0)
            owners.append(-1)
        yield Frame(np.array(boxes).reshape(-1, 4), np.array(scores), np.array(labels, dtype=np.int64), owners,
                    missed)


def simulate(movers, num_frames, tracker=None, *, use_labels=False, dtype=torch.float32, **scene):
    tracker = tracker if tracker is not None else ByteTracker()
    run = Run([], [], [], [])
    for frame in scene_frames(movers, num_frames, **scene):
        run.gt += frame.missed
        run.pred += [-1] * len(frame.missed)
        labels = torch.from_numpy(frame.labels) if use_labels else None
        ids = tracker.update(torch.tensor(frame.boxes, dtype=dtype), torch.tensor(frame.scores, dtype=dtype), labels)
        assert ids.dtype == torch.int64 and ids.shape == (len(frame.boxes),)
        run.ids.append({k: int(i) for k, i in zip(frame.owners, ids) if k >= 0})
        run.false_ids += [int(i) for k, i in zip(frame.owners, ids) if k < 0 and i >= 0]
        for k, i in zip(frame.owners, ids.tolist()):
            if k >= 0 or i >= 0:
                run.gt.append(k)
                run.pred.append(i)
    return run


def crossing_movers():
    """Four objects whose paths cross pairwise (head-on and diagonally) around frame 30."""
    return [
        Mover((0, 100, 40, 180), (6, 0)),
        Mover((360, 110, 400, 190), (-6, 0)),
        Mover((0, 250, 50, 300), (5, 5)),
        Mover((300, 270, 350, 320), (-5, 5)),
    ]


def busy_movers():
    """The crossings plus objects entering and leaving, one whose score drops for 10 frames and
    one hidden for 12 frames."""
    return crossing_movers() + [
        Mover((500, 20, 540, 100), (-4, 3)),
        Mover((100, 400, 180, 440), (4, -2)),
        Mover((250, 0, 290, 60), (0, 6), frames=range(5, 70)),
        Mover((560, 380, 600, 460), (-6, -1), frames=range(0, 50)),
        Mover((50, 50, 90, 130), (3, 0), low_score_frames=set(range(15, 25))),
        Mover((300, 300, 340, 380), (2, -1), frames=set(range(20)) | set(range(32, 70))),
    ]


# ----------------------------------------------------------------------------------------------
# Tracking behaviour
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clean_crossings_keep_ids(dtype):
    run = simulate(crossing_movers(), 60, dtype=dtype)
    assert run.switches == 0
    assert run.idf1 == 1.0
    for k in range(4):  # every object one id from the first frame on, ids 1..4 in detection order
        assert run.ids_of(k) == [k + 1] * 60


def test_object_entering_later_gets_id_on_its_second_frame():
    movers = [Mover((0, 0, 30, 30), (2, 1)), Mover((200, 200, 260, 280), (-3, 0), frames=range(10, 30))]
    run = simulate(movers, 30)
    second = [frame.get(1) for frame in run.ids[10:]]
    # Born unconfirmed on frame 10 (-1, as ByteTrack shows a track from its second frame), then id 2.
    assert second == [-1] + [2] * 19
    assert run.ids_of(0) == [1] * 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_scene_identity_metrics(seed):
    """Jittered boxes, missed detections, low-score clutter, crossings and occlusions: IDF1 >= 0.9."""
    run = simulate(busy_movers(), 70, seed=seed, jitter=1.5, miss_prob=0.1, false_positives=4)
    assert run.idf1 >= 0.9, run.idf1
    assert run.switches == 0, run.switches
    # Clutter below track_thresh never starts a track (it may be taken, in the second stage, by the
    # track of an object the detector missed on that frame, as in ByteTrack).
    object_ids = {i for frame in run.ids for i in frame.values()}
    assert set(run.false_ids) <= object_ids


def test_occlusion_within_buffer_keeps_id():
    # Tracked for 20 frames, hidden for 12, comes back where it would be at constant velocity.
    mover = Mover((50, 50, 90, 130), (4, 2), frames=set(range(20)) | set(range(32, 50)))
    run = simulate([mover], 50, ByteTracker(track_buffer=30))
    assert run.ids_of(0) == [1] * 38


@pytest.mark.parametrize("gap, same_id", [(5, True), (6, False)])
def test_track_buffer_boundary(gap, same_id):
    """A track survives exactly ``track_buffer`` frames without a detection."""
    still = Mover((100, 100, 150, 200), frames=set(range(10)) | set(range(10 + gap, 20 + gap)))
    run = simulate([still], 20 + gap, ByteTracker(track_buffer=5))
    after = [frame[0] for frame in run.ids[10 + gap:]]
    if same_id:
        assert after == [1] * 10
    else:  # a new track: unconfirmed on its first frame, then a fresh id (1 is never reused)
        assert after == [-1] + [2] * 9


def test_low_score_detections_keep_track_through_occlusion():
    occluded = set(range(15, 25))
    movers = [Mover((50, 50, 90, 130), (3, 0), low_score_frames=occluded)]
    run = simulate(movers, 40)
    assert run.ids_of(0) == [1] * 40  # the 0.2-0.4 detections were matched in the second stage
    # Without the second stage (low_thresh = track_thresh) they stay unmatched.
    run = simulate(movers, 40, ByteTracker(low_thresh=0.5))
    ids = run.ids_of(0)
    assert all(ids[f] == -1 for f in occluded) and ids[:15] == [1] * 15 and ids[25:] == [1] * 15


def test_missed_detections_keep_id():
    mover = Mover((10, 10, 50, 90), (5, 3), frames={f for f in range(40) if f % 3 != 2})
    run = simulate([mover], 40)
    assert set(run.ids_of(0)) == {1}
    assert run.switches == 0


def test_one_frame_false_positive_starts_no_track_and_uses_no_id():
    tracker = ByteTracker()
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    assert tracker.update(box, torch.tensor([0.9])).tolist() == [1]
    ghost = torch.tensor([[10.0, 10.0, 50.0, 50.0], [300.0, 300.0, 340.0, 360.0]])
    assert tracker.update(ghost, torch.tensor([0.9, 0.95])).tolist() == [1, -1]
    new = torch.tensor([[10.0, 10.0, 50.0, 50.0], [100.0, 300.0, 140.0, 360.0]])
    assert tracker.update(new, torch.tensor([0.9, 0.95])).tolist() == [1, -1]
    assert tracker.update(new, torch.tensor([0.9, 0.95])).tolist() == [1, 2]  # the ghost consumed no id


def test_new_tracks_need_new_track_thresh():
    tracker = ByteTracker(track_thresh=0.5)  # new tracks need 0.6
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 130.0, 140.0]])
    for _ in range(3):
        ids = tracker.update(boxes, torch.tensor([0.55, 0.65]))
    assert ids.tolist() == [-1, 1]


def test_empty_frames():
    tracker = ByteTracker()
    empty = tracker.update(torch.zeros(0, 4), torch.zeros(0))
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    box = torch.tensor([[10.0, 10.0, 50.0, 90.0]])
    ids = [tracker.update(box, torch.tensor([0.9])).tolist() for _ in range(3)]
    assert ids == [[-1], [1], [1]]  # the first non-empty frame is not the first frame
    for _ in range(4):
        assert tracker.update(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)).numel() == 0
    assert tracker.update(box, torch.tensor([0.9])).tolist() == [1]


def test_labels_keep_classes_apart():
    # A person and a bicycle moving together, boxes almost identical.
    movers = [Mover((100, 100, 160, 220), (3, 1), label=0), Mover((101, 102, 161, 221), (3, 1), label=1)]
    run = simulate(movers, 30, use_labels=True)
    assert run.ids_of(0) == [1] * 30 and run.ids_of(1) == [2] * 30
    # Without labels the two boxes are one object to the tracker.
    tracker = ByteTracker()
    box = torch.tensor([[100.0, 100.0, 160.0, 220.0]])
    tracker.update(box, torch.tensor([0.9]), torch.tensor([3]))
    # The same box with another class never takes the class-3 track's id.
    assert tracker.update(box, torch.tensor([0.9]), torch.tensor([5])).tolist() == [-1]
    assert tracker.update(box, torch.tensor([0.9]), torch.tensor([5])).tolist() == [2]
    assert tracker.update(box, torch.tensor([0.9]), torch.tensor([3])).tolist() == [1]


def test_degenerate_boxes_are_not_tracked():
    tracker = ByteTracker()
    boxes = torch.tensor([[10.0, 10.0, 10.0, 50.0], [0.0, 0.0, 30.0, 0.0], [20.0, 20.0, 60.0, 80.0]])
    for _ in range(3):
        ids = tracker.update(boxes, torch.tensor([0.9, 0.9, 0.9]))
    assert ids.tolist() == [-1, -1, 1]


def test_reset_and_independent_trackers():
    movers = crossing_movers()
    tracker = ByteTracker()
    first = simulate(movers, 20, tracker).ids
    tracker.reset()
    assert tracker.frame_id == 0
    assert simulate(movers, 20, tracker).ids == first == simulate(movers, 20).ids


def test_many_detections_per_frame():
    """300 objects on a grid drifting together, with jitter: every object keeps its id."""
    grid = [Mover((x, y, x + 30, y + 50), (2, 1)) for x in range(0, 1500, 75) for y in range(0, 1125, 75)]
    run = simulate(grid, 8, jitter=1.0)
    assert len(grid) == 300
    assert run.switches == 0 and run.idf1 == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_random_streams_keep_id_invariants(seed):
    """Chaotic input (random counts, sizes, degenerate boxes, scores, labels): an id is never given to
    two detections of a frame, new ids come in order from 1, and the filter state stays finite."""
    g = torch.Generator().manual_seed(seed)
    tracker, seen = ByteTracker(track_buffer=3), 0
    base = torch.rand(40, 4, generator=g) * 300
    for _ in range(120):
        n = int(torch.randint(0, 40, (1,), generator=g))
        jitter = torch.randn(n, 4, generator=g) * 10
        boxes = base[:n] + jitter
        boxes = torch.cat([boxes[:, :2], boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]).abs()], dim=1)
        boxes[::7, 2] = boxes[::7, 0]  # some zero-width boxes
        ids = tracker.update(boxes, torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g))
        given = ids[ids >= 0]
        assert given.unique().numel() == given.numel()
        new = sorted(i for i in given.tolist() if i > seen)
        assert new == list(range(seen + 1, seen + 1 + len(new)))
        seen += len(new)
        assert (ids[::7] == -1).all()
    assert seen > 10
    assert np.isfinite(tracker._tracks.mean).all() and np.isfinite(tracker._tracks.cov).all()


def test_non_contiguous_and_device_inputs(device):
    base = torch.tensor([[10.0, 20.0, 50.0, 80.0], [200.0, 20.0, 260.0, 90.0]], dtype=torch.float64)
    reference, tracker = ByteTracker(), ByteTracker()
    for f in range(4):
        boxes = base + 2 * f
        strided = torch.zeros(2, 8, dtype=torch.float64, device=device)[:, ::2]
        strided.copy_(boxes)
        assert not strided.is_contiguous()
        scores = torch.tensor([0.9, 0.8], device=device)
        labels = torch.tensor([1, 2], dtype=torch.int32, device=device)
        out = tracker.update(strided, scores, labels)
        assert out.device.type == "cpu"
        assert torch.equal(out, reference.update(boxes, scores.cpu(), labels.cpu().long()))


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------

BOX = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
SCORE = torch.tensor([0.9])


@pytest.mark.parametrize("boxes, scores, labels, match", [
    (torch.zeros(4), SCORE, None, "boxes"),
    (torch.zeros(1, 5), SCORE, None, "boxes"),
    (torch.zeros(1, 4, dtype=torch.int64), SCORE, None, "boxes"),
    (torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), SCORE, None, "boxes"),
    (torch.tensor([[0.0, 0.0, float("inf"), 10.0]]), SCORE, None, "boxes"),
    (torch.tensor([[10.0, 0.0, 0.0, 10.0]]), SCORE, None, "boxes"),
    (BOX, torch.tensor([0.9, 0.8]), None, "scores"),
    (BOX, torch.tensor([[0.9]]), None, "scores"),
    (BOX, torch.tensor([float("nan")]), None, "scores"),
    (BOX, torch.tensor([float("-inf")]), None, "scores"),
    (BOX, torch.tensor([1]), None, "scores"),
    (BOX, SCORE, torch.tensor([1.0]), "labels"),
    (BOX, SCORE, torch.tensor([True]), "labels"),
    (BOX, SCORE, torch.tensor([1, 2]), "labels"),
    (BOX, SCORE, torch.tensor([[1]]), "labels"),
])
def test_update_rejects_bad_input(boxes, scores, labels, match):
    tracker = ByteTracker()
    with pytest.raises(ValueError, match=match):
        tracker.update(boxes, scores, labels)
    assert tracker.frame_id == 0  # a rejected frame does not count


def test_update_rejects_non_tensors():
    with pytest.raises(TypeError, match="boxes"):
        ByteTracker().update([[0.0, 0.0, 1.0, 1.0]], SCORE)


@pytest.mark.parametrize("kwargs, match", [
    (dict(track_thresh=1.5), "track_thresh"),
    (dict(track_thresh=float("nan")), "track_thresh"),
    (dict(match_thresh=-0.1), "match_thresh"),
    (dict(track_buffer=-1), "track_buffer"),
    (dict(track_buffer=2.5), "track_buffer"),
    (dict(track_buffer=True), "track_buffer"),
    (dict(low_thresh=0.6), "low_thresh"),
    (dict(new_track_thresh=0.3), "new_track_thresh"),
])
def test_constructor_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ByteTracker(**kwargs)


# ----------------------------------------------------------------------------------------------
# Optimal assignment, Kalman filter, identity metrics
# ----------------------------------------------------------------------------------------------

def brute_force_assignment(cost):
    """Minimum total cost over all assignments of min(n, m) pairs."""
    n, m = cost.shape
    if n > m:
        return brute_force_assignment(cost.T)
    return min((sum(cost[i, j] for i, j in enumerate(cols)) for cols in itertools.permutations(range(m), n)),
               default=0.0)


def brute_force_thresholded(cost, max_cost):
    """Minimum of sum(cost - max_cost) over partial matchings using pairs that cost <= max_cost."""
    n, m = cost.shape
    best = 0.0
    for choice in itertools.product(range(-1, m), repeat=n):  # -1: row left unmatched
        used = [j for j in choice if j >= 0]
        if len(set(used)) == len(used) and all(cost[i, j] <= max_cost for i, j in enumerate(choice) if j >= 0):
            best = min(best, sum(cost[i, j] - max_cost for i, j in enumerate(choice) if j >= 0))
    return best


def _check_pairs(rows, cols, n, m):
    assert rows.dtype == cols.dtype == np.int64
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert (np.diff(rows) > 0).all() and (rows < n).all() and (cols < m).all()


@pytest.mark.parametrize("seed", range(6))
def test_linear_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n, m = rng.integers(0, 6, 2)
        cost = rng.random((n, m)) * 10 - 3  # negative costs too
        if rng.random() < 0.4:
            cost = np.round(cost)  # many ties
        rows, cols = linear_assignment(cost)
        _check_pairs(rows, cols, n, m)
        assert len(rows) == min(n, m)
        assert cost[rows, cols].sum() == pytest.approx(brute_force_assignment(cost), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_thresholded_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n, m = rng.integers(0, 6, 2)
        cost = rng.random((n, m))
        if rng.random() < 0.4:
            cost = np.round(cost, 1)
        max_cost = float(rng.uniform(0.2, 0.9))
        rows, cols = linear_assignment(cost, max_cost)
        _check_pairs(rows, cols, n, m)
        assert (cost[rows, cols] <= max_cost).all()
        assert (cost[rows, cols] - max_cost).sum() == pytest.approx(brute_force_thresholded(cost, max_cost), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_thresholded_assignment_splits_sparse_problems_exactly(seed):
    """On a large sparse problem (many small components) the per-component solution has the total
    cost of the whole problem solved at once as one rectangular assignment with "unmatched" columns."""
    rng = np.random.default_rng(seed)
    n, m, max_cost = 60, 50, 0.8
    scattered = np.where(rng.random((n, m)) < 0.05, rng.random((n, m)), 1.0)
    # A crowd: each box overlaps its neighbours, one long chain in a shuffled order.
    band = np.abs(np.arange(n)[:, None] - np.arange(m)[None, :]) <= 1
    chain = np.where(band, rng.random((n, m)), 1.0)[rng.permutation(n)]
    for cost in (scattered, chain):
        rows, cols = linear_assignment(cost, max_cost)
        _check_pairs(rows, cols, n, m)
        whole = np.concatenate([np.where(cost <= max_cost, cost - max_cost, np.inf),
                                np.where(np.eye(n, dtype=bool), 0.0, np.inf)], axis=1)
        r, c = linear_assignment(whole)
        assert (cost[rows, cols] - max_cost).sum() == pytest.approx(whole[r, c].sum(), abs=1e-9)
        assert rows.size > 10


def test_linear_assignment_cases():
    # The greedy choice (0, 0) is not optimal.
    cost = np.array([[1.0, 2.0], [2.0, 10.0]])
    assert [c.tolist() for c in linear_assignment(cost)] == [[0, 1], [1, 0]]
    # Rectangular both ways, forbidden pairs, tensors accepted.
    tall = torch.tensor([[5.0, 1.0], [1.0, float("inf")], [0.0, 0.5]])
    rows, cols = linear_assignment(tall)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]
    rows, cols = linear_assignment(tall.T)
    assert rows.tolist() == [0, 1] and cols.tolist() == [2, 0]
    # With a threshold nothing too expensive is matched, even if that leaves everything unmatched.
    rows, cols = linear_assignment(np.array([[0.9, 0.95], [0.99, 0.85]]), 0.8)
    assert rows.size == cols.size == 0
    rows, cols = linear_assignment(np.array([[0.1, 0.3], [0.2, 0.9]]), 0.5)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]  # 0.5 total beats 0.1 alone
    for shape in [(0, 0), (0, 3), (3, 0)]:
        for max_cost in (None, 0.5):
            rows, cols = linear_assignment(np.zeros(shape), max_cost)
            assert rows.size == cols.size == 0


def test_linear_assignment_rejects_bad_costs():
    with pytest.raises(ValueError, match="no assignment"):
        linear_assignment(np.array([[1.0, np.inf], [2.0, np.inf]]))
    with pytest.raises(ValueError, match="NaN"):
        linear_assignment(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="-inf"):
        linear_assignment(np.array([[-np.inf, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        linear_assignment(np.zeros(3))
    with pytest.raises(ValueError, match="max_cost"):
        linear_assignment(np.zeros((2, 2)), float("inf"))


def test_kalman_filter_learns_constant_velocity_and_is_vectorised():
    kf = KalmanBoxFilter()
    boxes = np.array([[0.0, 0.0, 40.0, 80.0], [100.0, 50.0, 130.0, 110.0]])
    velocity = np.array([[3.0, -1.0, 3.0, -1.0], [-2.0, 4.0, -2.0, 4.0]])
    mean, cov = kf.initiate(xyxy_to_xyah(boxes))
    singles = [kf.initiate(xyxy_to_xyah(boxes[i:i + 1])) for i in range(2)]
    for f in range(1, 30):
        measured = xyxy_to_xyah(boxes + f * velocity)
        mean, cov = kf.update(*kf.predict(mean, cov), measured)
        singles = [kf.update(*kf.predict(*s), measured[i:i + 1]) for i, s in enumerate(singles)]
    np.testing.assert_allclose(mean[:, 4:6], velocity[:, :2], atol=0.05)  # centre velocity
    np.testing.assert_allclose(mean[:, 6:], 0.0, atol=1e-3)  # size and aspect do not change
    np.testing.assert_allclose(np.concatenate([s[0] for s in singles]), mean, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([s[1] for s in singles]), cov, rtol=1e-12, atol=1e-9)
    assert (np.linalg.eigvalsh(cov) > 0).all()


def test_idf1_and_id_switches_on_hand_made_cases():
    # gt 1 seen 3 times (tracks 5, 5, 6), gt 2 twice (track 6, then missed), one false positive (7).
    gt = [1, 1, 1, 2, 2, -1]
    pred = [5, 5, 6, 6, -1, 7]
    # Best mapping 1->5 (2 shared), 2->6 (1 shared): IDTP 3 of 5 gt and 5 predicted observations.
    assert idf1(gt, pred) == pytest.approx(2 * 3 / 10)
    assert id_switches(gt, pred) == 1  # gt 1: 5 -> 6
    assert idf1([1, 1, 2, 2], [3, 3, 4, 4]) == 1.0 and id_switches([1, 1, 2, 2], [3, 3, 4, 4]) == 0
    # Swapped half-way: IDF1 0.5, and the switch back counts too.
    assert idf1([1, 2, 1, 2], [3, 4, 4, 3]) == 0.5
    assert id_switches([1, 2, 1, 2, 1, 2], [3, 4, 4, 3, 3, 4]) == 4
    # A gap (missed frame) is no switch.
    assert id_switches([1, 1, 1], [3, -1, 3]) == 0
    assert idf1([], []) == 1.0 and idf1([1], [-1]) == 0.0 and idf1(torch.tensor([-1]), torch.tensor([2])) == 0.0
    with pytest.raises(ValueError, match="same length"):
        idf1([1, 2], [1])
