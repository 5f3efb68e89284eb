"""``pydet export`` and ``pydet detect --engine``: end to end, and one-line errors."""
import json

import numpy as np
import pytest
import torch

from pydet.cli import main
from pydet.data import SyntheticShapes

Image = pytest.importorskip("PIL.Image")  # the video extra; `make test` installs it

MODEL = ["--model", "yolov7_tiny_320", "--model-arg", "box_score_thresh=0.0001", "--model-arg",
         "box_detections_per_img=20"]


def _images(folder):
    folder.mkdir()
    ds = SyntheticShapes(2, (48, 64), seed=4)
    for i in range(2):
        Image.fromarray((ds[i][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_export_verifies_and_detect_runs_the_file_like_the_eager_model(tmp_path, capsys):
    folder = _images(tmp_path / "images")
    torch.manual_seed(0)
    assert main(["export", *MODEL, "--format", "pt2", "--image-size", "48x64", "--max-detections", "20",
                 "--out", str(tmp_path / "tiny.pt2")]) == 0
    err = capsys.readouterr().err
    assert "exporting yolov7_tiny_320 at 48x64 as pt2" in err and "same counts, same labels" in err
    records = {}
    for engine in (None, tmp_path / "tiny.pt2"):
        torch.manual_seed(0)  # the same random weights as the exported model
        out_json = tmp_path / f"{engine is None}.json"
        extra = [] if engine is None else ["--engine", str(engine)]
        assert main(["detect", str(folder), *MODEL, "--score-threshold", "0", "--out-json", str(out_json),
                     "--quiet", *extra]) == 0
        records[engine is None] = json.loads(out_json.read_text())
    eager, exported = records[True], records[False]
    assert len(eager) == len(exported) == 40
    for e, x in zip(eager, exported):
        assert e["image_id"] == x["image_id"] and e["category_id"] == x["category_id"]
        assert abs(e["score"] - x["score"]) < 1e-5 and np.allclose(e["bbox"], x["bbox"], atol=1e-2)


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx", "--out", "model.pt2"], "a onnx file must end in .onnx"),
    (["--format", "pt2", "--out", "model.pt2", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["--format", "pt2", "--out", "model.pt2", "--image-size", "64x"], "--image-size '64x'"),
])
def test_export_errors_are_one_line(args, message, tmp_path, capsys):
    assert main(["export", "--model", "yolov7_tiny_320", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_detect_engine_errors_are_one_line(tmp_path, capsys):
    folder = _images(tmp_path / "images")
    assert main(["detect", str(folder), "--model", "yolov7_tiny_320", "--engine", str(tmp_path / "none.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.onnx" in err[0], err
    assert main(["detect", str(folder), "--model", "yolov7_tiny_320", "--engine", "x.pt2", "--weights", "w.pt"]) == 1
    assert "drop --weights" in capsys.readouterr().err
    (tmp_path / "junk.pt2").write_text("not an archive")
    assert main(["detect", str(folder), "--model", "yolov7_tiny_320", "--engine", str(tmp_path / "junk.pt2")]) == 1
    assert "not an exported pydet model" in capsys.readouterr().err
