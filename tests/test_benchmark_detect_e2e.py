"""``benchmarks.detect_e2e`` on a tiny video: the rows it writes are what its README table is built from."""
import json

import pytest

from .conftest import requires_av

pytestmark = [requires_av, pytest.mark.slow]


def test_each_detect_run_is_paired_with_the_model_alone_before_and_after(tmp_path, capsys):
    from benchmarks import detect_e2e

    out = tmp_path / "results.json"
    assert detect_e2e.main(["--models", "yolov7_tiny", "--frames", "4", "--repeats", "2", "--model-frames", "4",
                            "--batch-size", "2", "--work", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["batch_size"] == 2 and report["machine"]["threads"] == 2
    rows = report["results"]
    assert [(r["model"], r["frames"], r["outputs"]) for r in rows] == [("yolov7_tiny", 4, "json+video")] * 2
    assert rows[0]["model_before_after"][1] == rows[1]["model_before_after"][0]  # one pass between the rounds
    for row in rows:
        before, after = row["model_before_after"]
        assert before > 0 and after > 0
        assert row["model_frames_per_s"] == pytest.approx((before + after) / 2, abs=1e-3)
        assert row["e2e_over_model"] == pytest.approx(row["e2e_frames_per_s"] / row["model_frames_per_s"], rel=1e-2)
        assert row["in_detect_model_frames_per_s"] >= row["e2e_frames_per_s"] * 0.99  # a part of the run
        assert row["detections_per_frame"] == detect_e2e.DETECTIONS_PER_FRAME
        assert row["peak_rss_mb"] > 100  # the child's own peak: torch and a model at least
    median = (rows[0]["e2e_over_model"] + rows[1]["e2e_over_model"]) / 2  # of two values: their mean
    assert f"yolov7_tiny, 4 frames: end to end / model-only {median:.3f} (median of 2)" in capsys.readouterr().out
    records = json.loads((tmp_path / "yolov7_tiny.json").read_text())
    assert sorted({r["image_id"] for r in records}) == [0, 1, 2, 3]
    assert (tmp_path / "yolov7_tiny.mp4").stat().st_size > 0
