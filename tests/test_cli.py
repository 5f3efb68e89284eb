"""``pydet train | eval | detect`` end to end, and their one-line errors for bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

# The video and coco extras (`pip install .[video,coco]`); `make test` installs them.
av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")
mask_utils = pytest.importorskip("pycocotools.mask")

from pydet.cli import main
from pydet.data import SyntheticShapes, read_video, write_synthetic_video
from pydet.data.video import probe_video

MODEL = "mask_rcnn_resnet18_fpn"  # the small Mask R-CNN preset, on 64-pixel images
# A two-step model scores the background near 0.9 (BatchNorm has barely begun to learn), so its own
# 0.05 threshold would leave some images without detections: keep every candidate, but only a few per
# image so that the test is quick.
FEW = ["--model-arg", "box_score_thresh=0", "--model-arg", "box_detections_per_img=4",
       "--model-arg", "rpn_post_nms_top_n_test=50"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--model", MODEL, "--data", "synthetic", "--num-images", "8", "--image-size", "64",
            "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


def run_cli(*args):
    """``python -m pydet ARGS`` in a fresh process: exit status and stderr lines."""
    proc = subprocess.run([sys.executable, "-m", "pydet", *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_train_writes_checkpoint_and_log_and_resumes(weights, capsys):
    log = [json.loads(line) for line in (weights / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and {"loss_mask", "loss_objectness"} <= set(log[-1]["losses"])
    assert main(["train", "--model", MODEL, "--data", "synthetic", "--num-images", "8", "--image-size", "64",
                 "--batch-size", "2", "--steps", "2", "--out", str(weights), "--resume", "--quiet"]) == 0
    assert "already trained for 2 steps" in capsys.readouterr().err


def test_detect_on_video_writes_json_and_annotated_video(weights, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    write_synthetic_video(clip, num_frames=10, image_size=(64, 96), fps=10, seed=1)
    out_json, out_video = tmp_path / "det.json", tmp_path / "det.mp4"
    assert main(["detect", str(clip), "--model", MODEL, "--weights", str(weights / "last.safetensors"),
                 "--score-threshold", "0", "--out-json", str(out_json), "--out-video", str(out_video),
                 "--batch-size", "3", "--quiet", *FEW]) == 0
    assert "frames/s" in capsys.readouterr().err
    records = json.loads(out_json.read_text())
    assert records and {r["image_id"] for r in records} == set(range(10))
    for r in records:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["category_id"] in (1, 2, 3) and 0 <= r["score"] <= 1
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 96 and 0 <= y <= 64
        assert r["segmentation"]["size"] == [64, 96] and isinstance(r["segmentation"]["counts"], str)
        assert mask_utils.decode(r["segmentation"]).shape == (64, 96)
    frames = list(read_video(out_video))
    assert len(frames) == 10 and frames[0].image.shape == (64, 96, 3)
    assert probe_video(out_video).fps == pytest.approx(10)


def test_detect_on_image_folder(weights, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    ds = SyntheticShapes(3, (48, 64), seed=4)
    for i in range(3):
        Image.fromarray((ds[i][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out_json, out_dir = tmp_path / "det.json", tmp_path / "annotated"
    assert main(["detect", str(folder), "--model", MODEL, "--weights", str(weights / "last.safetensors"),
                 "--score-threshold", "0", "--out-json", str(out_json), "--out-dir", str(out_dir), "--quiet", *FEW]) == 0
    assert "3 images" in capsys.readouterr().err
    assert {r["image_id"] for r in json.loads(out_json.read_text())} == {0, 1, 2}
    assert sorted(p.name for p in out_dir.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert Image.open(out_dir / "img0.png").size == (64, 48)


def test_eval_prints_coco_table(weights, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--model", MODEL, "--weights", str(weights / "last.safetensors"), "--data", "synthetic",
                 "--num-images", "4", "--out-json", str(metrics), "--quiet", *FEW]) == 0
    out = capsys.readouterr().out
    assert "IoU metric: bbox" in out and "IoU metric: segm" in out
    values = json.loads(metrics.read_text())
    assert set(values) == {"bbox", "segm"} and 0 <= values["bbox"]["AP"] <= 1


def test_missing_input_is_one_line_error(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    code, lines = run_cli("detect", missing, "--model", "yolov7_tiny")
    assert code == 1 and len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0]


def test_corrupt_input_is_one_line_error(tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad_video, bad_image = tmp_path / "broken.mp4", tmp_path / "broken.png"
    bad_video.write_bytes(noise)
    bad_image.write_bytes(noise)
    code, lines = run_cli("detect", bad_video, "--model", "yolov7_tiny")
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"pydet: error: {bad_video}: cannot open video")
    assert main(["detect", str(bad_image), "--model", "yolov7_tiny"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pydet: error: {bad_image}: cannot read image")


def test_malformed_annotations_are_one_line_error(tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
                               "categories": [{"id": 1, "name": "a"}],
                               "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert main(["eval", "--model", "yolov7_tiny", "--weights", str(weights), "--data", str(ann), str(tmp_path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0] == f"pydet: error: {ann}: annotations[0] (id 5): bbox must be [x, y, width, height] with " \
                       "width, height >= 0, got [0, 0, 1]"



def test_video_with_a_corrupt_middle_is_processed_with_a_warning(weights, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    write_synthetic_video(clip, num_frames=20, image_size=(64, 96), fps=10, seed=2, codec="libx264")
    with av.open(str(clip)) as container:  # where frame 15's bytes are in the file
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    start, size = packets[10]
    data = bytearray(clip.read_bytes())
    data[start:start + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    clip.write_bytes(bytes(data))
    out_json, out_video = tmp_path / "det.json", tmp_path / "det.mp4"
    assert main(["detect", str(clip), "--model", MODEL, "--weights", str(weights / "last.safetensors"),
                 "--score-threshold", "0", "--out-json", str(out_json), "--out-video", str(out_video),
                 "--quiet", *FEW]) == 0
    err = capsys.readouterr().err
    assert "pydet: warning:" in err and str(clip) in err and "Traceback" not in err
    frames = {r["image_id"] for r in json.loads(out_json.read_text())}
    assert 0 in frames and 19 in frames and len(frames) < 20  # before and after the damage, minus the damage
    assert len(list(read_video(out_video))) == len(frames)


def test_bench_times_kernels_against_references(capsys):
    assert main(["bench", "--ops", "box_iou,nms", "--models", "none", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"box_iou", "nms"}
    assert all(float(rows[op][-3]) > 0 and float(rows[op][-2]) > 0 for op in rows)  # pydet and reference ms


def test_weights_that_do_not_fit_are_one_line_naming_the_key(tmp_path, capsys):
    import torch

    from pydet.models import build

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(image)
    weights = tmp_path / "five_classes.pth"
    torch.save({"model": build("faster_rcnn_resnet18_fpn", num_classes=5).state_dict()}, weights)
    assert main(["detect", str(image), "--model", "faster_rcnn_resnet18_fpn", "--weights", str(weights)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pydet: error: {weights}: weights do not fit")
    assert "cls_score.weight has shape (5, 512) in the weights, (91, 512) in the model" in lines[0]
