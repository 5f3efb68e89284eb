"""`make demo` end to end on one preset with its recipe cut to a few steps: train, COCO eval, a synthetic
video through `pydet detect`, and the files a user is told to look at."""
import json

import pytest
import torch

from pydet import demo, models


def test_every_recipe_names_a_registered_model():
    assert set(demo.RECIPES) <= set(models.available())


def test_demo_runs_the_main_job_on_one_preset(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--model", "yolov7_tiny_320", "--steps-scale", "0.02", "--eval-images", "4",
                          "--out", str(tmp_path), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["results"]
    assert row["model"] == "yolov7_tiny_320" and row["steps"] == 14  # 700 steps x 0.02
    assert 0.0 <= row["bbox_mAP"] <= 1.0 and row["segm_mAP"] is None and row["detect_frames_per_s"] > 0
    run = tmp_path / "yolov7_tiny_320"
    assert (run / "last.safetensors").stat().st_size > 1_000_000
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 14
    records = json.loads((tmp_path / "yolov7_tiny_320.json").read_text())
    assert isinstance(records, list)
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score"} and 0 <= r["image_id"] < demo.VIDEO_FRAMES
               for r in records)
    assert (tmp_path / "yolov7_tiny_320.mp4").stat().st_size > 0
    assert (tmp_path / "shapes.mp4").stat().st_size > 0


def test_demo_rejects_an_unknown_preset(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--model", "no_such_model", "--out", str(tmp_path)])
