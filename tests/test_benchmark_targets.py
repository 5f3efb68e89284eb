import json

import pytest

from benchmarks import targets


def _write(tmp_path, medians_ms, name="r.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"machine_info": {"torch": "x", "torch_threads": 2},
                                "benchmarks": [{"name": n, "stats": {"median": ms / 1e3}} for n, ms in medians_ms.items()]}))
    return str(path)


def _rows(text):
    return {row.split(" | ")[1]: row.split(" | ")[3] for row in text.splitlines() if row.startswith("| #")}


def test_limits_and_speedups_are_judged_on_medians(tmp_path):
    path = _write(tmp_path, {"test_nms[5000-pydet]": 17.9, "test_batched_nms[20000-pydet]": 7.6,
                             "test_batched_nms[20000-pydet-cuda]": 1.0, "test_batched_nms[20000-torchvision-cuda]": 3.1,
                             "test_roi_align_backward_cuda[pydet]": 2.0,
                             "test_roi_align_backward_cuda[pydet-deterministic]": 3.1})
    text, missed = targets.report(*targets.load_medians([path]))
    rows = _rows(text)
    assert rows["nms 5k boxes, IoU 0.5"] == "met"
    assert rows["batched_nms 20k boxes x 80 classes"] == "MISSED" and missed
    assert rows["batched_nms 20k x 80 vs torchvision"] == "met"
    assert rows["roi_align deterministic backward vs atomic"] == "MISSED"  # 1.55x slower than atomic
    assert rows["paste_masks vs the grid_sample method"] == "not measured"
    assert targets.main([path]) == 1


def test_unmeasured_targets_do_not_fail(tmp_path, capsys):
    assert targets.main([_write(tmp_path, {"test_nms[5000-pydet]": 4.0}), "--markdown", str(tmp_path / "t.md")]) == 0
    assert "not measured" in (tmp_path / "t.md").read_text()


def test_corrupt_report_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not a pytest-benchmark JSON report"):
        targets.load_medians([str(bad)])
