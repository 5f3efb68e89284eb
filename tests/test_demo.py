"""`make demo` end to end on one preset with its recipe cut to a few steps: train, COCO eval, a synthetic
video through `pydet detect`, and the files a user is told to look at."""
import json

import pytest
import torch

from pydet import demo, models
from tests.conftest import requires_av


def test_every_recipe_names_a_registered_model():
    assert set(demo.RECIPES) <= set(models.available())


def _check_outputs(out, name, steps):
    run = out / name
    assert (run / "last.safetensors").stat().st_size > 1_000_000
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == steps
    records = json.loads((out / f"{name}.json").read_text())
    assert isinstance(records, list)
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score"} and 0 <= r["image_id"] < demo.VIDEO_FRAMES
               for r in records)
    assert (out / f"{name}.mp4").stat().st_size > 0
    truth = json.loads((out / "shapes.json").read_text())  # the video's ground truth, frame k = image id k
    assert [image["id"] for image in truth["images"]] == list(range(demo.VIDEO_FRAMES))
    assert len(truth["annotations"]) >= 3 * demo.VIDEO_FRAMES  # four shapes, at most one hidden at a time


def _figures(row):
    """What a rerun must reproduce: everything but the timings."""
    return {k: v for k, v in row.items() if not k.endswith("_s") and "per_s" not in k}


@requires_av
def test_demo_runs_the_main_job_on_one_preset(tmp_path):
    threads = torch.get_num_threads()
    assert demo.main(["--model", "yolov7_tiny_320", "--steps-scale", "0.02", "--eval-images", "4",
                      "--out", str(tmp_path / "one")]) == 0
    assert torch.get_num_threads() == threads  # the demo's single-threaded presets leave the caller's setting
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["jobs"] == 1 and summary["threads"] == 1
    (row,) = summary["results"]
    assert row["model"] == "yolov7_tiny_320" and row["steps"] == 14  # 700 steps x 0.02
    assert 0.0 <= row["bbox_mAP"] <= 1.0 and row["segm_mAP"] is None and row["detect_frames_per_s"] > 0
    assert 0.0 <= row["video_bbox_mAP"] <= 1.0 and row["video_segm_mAP"] is None
    _check_outputs(tmp_path / "one", "yolov7_tiny_320", 14)
    assert (tmp_path / "one" / "shapes.mp4").stat().st_size > 0


@pytest.mark.slow  # three short demo runs: about 90 s on the loaded 2-core machine
@requires_av
def test_demo_trains_presets_side_by_side_in_worker_processes(tmp_path, capsys):
    names = ["yolov7_tiny_320", "mask_rcnn_resnet18_fpn"]
    argv = ["--steps-scale", "0.02", "--eval-images", "4", "--out", str(tmp_path / "two"), "--jobs", "2"]
    assert demo.main(argv + [a for n in names for a in ("--model", n)]) == 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["jobs"] == 2 and [r["model"] for r in summary["results"]] == names  # the order asked for
    mask_row = summary["results"][1]
    assert mask_row["steps"] == 7 and 0.0 <= mask_row["segm_mAP"] <= 1.0 and 0.0 <= mask_row["video_segm_mAP"] <= 1.0
    _check_outputs(tmp_path / "two", "yolov7_tiny_320", 14)
    _check_outputs(tmp_path / "two", "mask_rcnn_resnet18_fpn", 7)
    assert "mask_rcnn_resnet18_fpn" in capsys.readouterr().out  # the summary table
    # the same preset alone in this process gives the same figures as beside another in a worker
    assert demo.main(["--model", names[0], "--steps-scale", "0.02", "--eval-images", "4",
                      "--out", str(tmp_path / "one")]) == 0
    (alone,) = json.loads((tmp_path / "one" / "summary.json").read_text())["results"]
    assert _figures(alone) == _figures(summary["results"][0])
    logs = [(tmp_path / d / names[0] / "log.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert [json.loads(line).get("losses") for line in logs[0]] == [json.loads(line).get("losses") for line in logs[1]]


def test_demo_rejects_an_unknown_preset(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--model", "no_such_model", "--out", str(tmp_path)])


def test_progress_reads_the_last_complete_log_record(tmp_path):
    log = tmp_path / "log.jsonl"
    assert demo._logged_step(log) == 0  # not written yet
    log.write_text('{"event": "step", "step": 10}\n{"event": "step", "step": 20, "losses": {"a": 1}')
    assert demo._logged_step(log) == 10  # the second record is still being written
