"""Streaming ``pydet.engine.detect``: frame numbers through decoding threads and damaged frames, JSON
written as it goes, errors from either thread, the model's own score threshold, box-relative masks, tracks."""
import json
import math
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from pydet import models, ops
from pydet.data import VideoWriter, read_video
from pydet.errors import InputError
from pydet.engine import LabelMap, detect
from pydet.engine.detect import expand_inputs, lower_score_threshold, output_names, prefetch
from pydet.tracking import ByteTracker
from tests.conftest import requires_av

mask_utils = pytest.importorskip("pycocotools.mask")
COCO = pytest.importorskip("pycocotools.coco").COCO

H, W, SIDE = 64, 96, 16
LABELS = LabelMap([{"id": 7, "name": "square"}], [0])


def square_x(frame: int) -> int:
    return 2 + 3 * frame  # the square moves 3 pixels right per frame: its position tells the frame number


def write_clip(path, num_frames, codec="libx264"):
    with VideoWriter(path, fps=10, codec=codec) as writer:
        for k in range(num_frames):
            image = np.zeros((H, W, 3), np.uint8)
            image[20:20 + SIDE, square_x(k):square_x(k) + SIDE] = 255
            writer.write(image)


class SquareFinder(nn.Module):
    """Finds the bright square of ``write_clip`` frames: one detection per frame, its box the bright
    pixels' extent; with ``box_relative_masks`` a box-relative mask, else the pasted one."""

    box_relative_masks = False

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fail_after, self.calls = fail_after, 0

    def forward(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("model failed")
        out = []
        for image in images:
            ys, xs = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            probs = torch.ones(1, 8, 8)
            det = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
            if self.box_relative_masks:
                det["mask_probs"] = probs
            else:
                det["masks"] = ops.paste_masks(probs, box, image.shape[-2:], threshold=None)[:, None]
            out.append(det)
        return out


def frame_of(record) -> int:
    return round((record["bbox"][0] - 2) / 3)


@requires_av
def test_video_records_stream_to_a_coco_results_file(tmp_path):
    clip, out_json, out_video = tmp_path / "clip.mp4", tmp_path / "det.json", tmp_path / "det.mp4"
    write_clip(clip, 12)
    stats = detect(SquareFinder(), clip, label_map=LABELS, with_masks=True, batch_size=5, out_json=out_json,
                   out_video=out_video, progress=False)
    assert stats.images == 12 and stats.detections == 12
    records = json.loads(out_json.read_text())
    assert [r["image_id"] for r in records] == list(range(12))
    assert all(frame_of(r) == r["image_id"] and r["category_id"] == 7 for r in records)
    for r in records:
        mask = mask_utils.decode(r["segmentation"])
        assert mask.shape == (H, W) and mask.sum() == pytest.approx(SIDE * SIDE, rel=0.15)
    gt = COCO()
    gt.dataset = {"images": [{"id": k, "height": H, "width": W} for k in range(12)],
                  "categories": [{"id": 7, "name": "square"}], "annotations": []}
    gt.createIndex()
    assert len(gt.loadRes(str(out_json)).getAnnIds()) == 12  # pycocotools reads the file as it is
    assert len(list(read_video(out_video))) == 12


@requires_av
def test_damaged_frame_is_skipped_and_the_others_keep_their_numbers(tmp_path):
    import av

    clip = tmp_path / "clip.mp4"
    write_clip(clip, 20)
    with av.open(str(clip)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    start, size = packets[10]
    data = bytearray(clip.read_bytes())
    data[start:start + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    clip.write_bytes(bytes(data))
    out_json = tmp_path / "det.json"
    with pytest.warns(RuntimeWarning, match="clip.mp4"):  # raised in the decoding thread, seen here
        detect(SquareFinder(), clip, label_map=LABELS, batch_size=3, out_json=out_json, progress=False)
    records = json.loads(out_json.read_text())
    ids = [r["image_id"] for r in records]
    assert 0 in ids and 19 in ids and len(ids) < 20
    assert all(frame_of(r) == r["image_id"] for r in records)  # every remaining frame has its own number


@requires_av
def test_records_are_on_disk_before_the_run_ends(tmp_path):
    clip, out_json = tmp_path / "clip.mp4", tmp_path / "det.json"
    write_clip(clip, 12)
    with pytest.raises(RuntimeError, match="model failed"):
        detect(SquareFinder(fail_after=2), clip, label_map=LABELS, batch_size=2, out_json=out_json, progress=False)
    records = json.loads(out_json.read_text())  # still one valid array: the two batches written so far
    assert [r["image_id"] for r in records] == [0, 1, 2, 3]


@requires_av
def test_tracks_follow_the_square_through_the_video(tmp_path):
    clip, out_json = tmp_path / "clip.mp4", tmp_path / "det.json"
    write_clip(clip, 10)
    detect(SquareFinder(), clip, label_map=LABELS, batch_size=4, out_json=out_json, tracker=ByteTracker(),
           out_video=tmp_path / "det.mp4", progress=False)
    records = json.loads(out_json.read_text())
    assert len(records) == 10 and len({r["track_id"] for r in records}) == 1 and records[0]["track_id"] >= 0


def test_prefetch_stays_a_bounded_distance_ahead():
    produced = []

    def items():
        for k in range(20):
            produced.append(k)
            yield k

    seen = []
    for k in prefetch(items(), depth=3):
        time.sleep(0.01)
        assert len(produced) - len(seen) <= 3 + 2  # the queue, the item in hand and one being put
        seen.append(k)
    assert seen == list(range(20))


def test_prefetch_raises_the_producers_error_in_the_consumer_and_stops_it():
    def failing():
        yield 1
        raise InputError("clip.mp4: no decodable video frame")

    with pytest.raises(InputError, match="clip.mp4"):
        list(prefetch(failing(), depth=2))
    before = threading.active_count()
    stream = prefetch(iter(range(1000)), depth=2)
    next(stream)
    stream.close()  # the consumer stops early: the producer thread ends too
    assert threading.active_count() <= before


@pytest.mark.parametrize("name, attribute", [("yolov7_tiny_320", "box_score_thresh"),
                                             ("faster_rcnn_resnet18_fpn", "roi_heads.score_thresh"),
                                             ("centermask2_lite_vovnet19_slim", "fcos.score_thresh")])
def test_score_threshold_lowers_each_familys_own(name, attribute):
    model = models.build(name, num_classes=3)
    owner = model
    for part in attribute.split(".")[:-1]:
        owner = getattr(owner, part)
    leaf = attribute.split(".")[-1]
    own = getattr(owner, leaf)
    assert lower_score_threshold(model, own + 0.1) is None and getattr(owner, leaf) == own
    assert lower_score_threshold(model, 0.001) == (attribute, own)
    assert getattr(owner, leaf) == 0.001


@requires_av
def test_detect_restores_the_lowered_threshold_and_says_so(tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 2)
    model = models.build("yolov7_tiny_320", num_classes=1, img_size=64)
    with pytest.warns(RuntimeWarning, match="below the model's own 0.25"):
        detect(model, clip, label_map=LABELS, score_threshold=0.01, out_json=tmp_path / "d.json", progress=False)
    assert model.box_score_thresh == 0.25


@pytest.mark.parametrize("name, kwargs", [("mask_rcnn_resnet18_fpn", {"min_size": 64, "max_size": 96,
                                                                       "box_score_thresh": 0.0}),
                                          ("centermask2_lite_vovnet19_slim", {"min_size": 64, "max_size": 96,
                                                                              "box_score_thresh": 0.0})])
def test_box_relative_masks_paste_to_the_models_masks(name, kwargs):
    torch.manual_seed(0)
    model = models.build(name, num_classes=3, **kwargs).eval()
    images = [torch.rand(3, 60, 90), torch.rand(3, 64, 80)]
    with torch.inference_mode():
        pasted = model(images)
        model.box_relative_masks = True
        relative = model(images)
    for full, rel, image in zip(pasted, relative, images):
        assert "masks" not in rel and rel["mask_probs"].dim() == 3 and len(rel["mask_probs"]) > 0
        assert torch.equal(rel["boxes"], full["boxes"])
        again = ops.paste_masks(rel["mask_probs"], rel["boxes"], image.shape[-2:], threshold=None)
        torch.testing.assert_close(again, full["masks"][:, 0])


def test_input_lists_expand_and_output_names_stay_distinct(tmp_path):
    (tmp_path / "a").mkdir()
    listing = tmp_path / "inputs.txt"
    listing.write_text("# clips\na/clip.mp4\n\nb/clip.mp4\n")
    inputs = expand_inputs([str(tmp_path / "x.mp4"), str(listing)])
    assert inputs == [tmp_path / "x.mp4", tmp_path / "a/clip.mp4", tmp_path / "b/clip.mp4"]
    assert output_names(inputs) == ["x", "clip", "clip-2"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="empty.txt"):
        expand_inputs([empty])


def test_drawing_box_relative_masks_equals_drawing_the_pasted_masks():
    """Masks are drawn in their boxes' windows: the picture is the one full-frame masks give, boxes
    partly outside the frame included, and degenerate boxes are skipped rather than refused by PIL."""
    from pydet.engine.detect import draw_detections

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (300, 400, 3), generator=g, dtype=torch.uint8).numpy()
    corners = torch.rand(12, 2, generator=g) * torch.tensor([440.0, 340.0]) - 20
    boxes = torch.cat([corners, corners + torch.rand(12, 2, generator=g) * 120 + 0.5], 1)
    boxes[10] = torch.tensor([50.0, 50.0, 40.0, 60.0])  # x1 < x0
    boxes[11] = torch.tensor([math.nan, 50.0, 40.0, 60.0])
    probs = torch.rand(12, 28, 28, generator=g)
    label_map = LabelMap([{"id": 1, "name": "shape"}], [0])
    common = {"boxes": boxes, "scores": torch.rand(12, generator=g), "labels": torch.zeros(12, dtype=torch.int64)}
    relative = draw_detections(image, {**common, "mask_probs": probs}, label_map)
    pasted = ops.paste_masks(probs, boxes, image.shape[:2], threshold=None)[:, None]
    full_frame = draw_detections(image, {**common, "masks": pasted}, label_map)
    assert (relative != image).any()
    np.testing.assert_array_equal(relative, full_frame)
