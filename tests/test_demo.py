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


@requires_av
def test_demo_runs_the_main_job_on_one_preset(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--model", "yolov7_tiny_320", "--steps-scale", "0.02", "--eval-images", "4",
                          "--out", str(tmp_path), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["jobs"] == 1 and summary["threads"] == 1
    (row,) = summary["results"]
    assert row["model"] == "yolov7_tiny_320" and row["steps"] == 14  # 700 steps x 0.02
    assert 0.0 <= row["bbox_mAP"] <= 1.0 and row["segm_mAP"] is None and row["detect_frames_per_s"] > 0
    _check_outputs(tmp_path, "yolov7_tiny_320", 14)
    assert (tmp_path / "shapes.mp4").stat().st_size > 0


@requires_av
def test_demo_trains_presets_side_by_side_in_worker_processes(tmp_path, capsys):
    names = ["yolov7_tiny_320", "mask_rcnn_resnet18_fpn"]
    argv = ["--steps-scale", "0.02", "--eval-images", "4", "--out", str(tmp_path), "--jobs", "2", "--threads", "1"]
    assert demo.main(argv + [a for n in names for a in ("--model", n)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["jobs"] == 2 and [r["model"] for r in summary["results"]] == names  # the order asked for
    mask_row = summary["results"][1]
    assert mask_row["steps"] == 7 and 0.0 <= mask_row["segm_mAP"] <= 1.0
    _check_outputs(tmp_path, "yolov7_tiny_320", 14)
    _check_outputs(tmp_path, "mask_rcnn_resnet18_fpn", 7)
    assert "mask_rcnn_resnet18_fpn" in capsys.readouterr().out  # the summary table


def test_demo_rejects_an_unknown_preset(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--model", "no_such_model", "--out", str(tmp_path)])


def test_progress_reads_the_last_complete_log_record(tmp_path):
    log = tmp_path / "log.jsonl"
    assert demo._logged_step(log) == 0  # not written yet
    log.write_text('{"event": "step", "step": 10}\n{"event": "step", "step": 20, "losses": {"a": 1}')
    assert demo._logged_step(log) == 10  # the second record is still being written
