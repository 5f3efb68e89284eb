"""End-to-end ``pydet detect`` on a generated 1024x1024 video against the model's own forward throughput.

For each model and frame count: ``python -m pydet detect VIDEO --out-json --out-video`` runs in a fresh
process (peak RSS from ``wait4``; frames/s from its own summary line, decoding to encoding, the model
build excluded); the model alone runs over the same decoded frames in this process, in batches of the
same size (frames/s of ``model(batch)`` only), before and after each round of ``pydet detect`` runs, and
each run's ratio is taken to the mean of the two, so that the machine's drift in speed (10-20% over minutes on the
shared 2-core machine) does not land on one side only; ``--repeats`` runs it all several times and
prints the median ratios. The targets: end to end >= 0.9 x model-only, and
the peak RSS after the longest run within 50 MB of the shortest (memory flat in the video's length).

    python -m benchmarks.detect_e2e --frames 60 600 --out benchmarks/results/cpu-detect-e2e.json
    python -m benchmarks.detect_e2e --models yolov7_tiny --frames 600 --repeats 3
    python -m benchmarks.detect_e2e --models yolov7_tiny --no-video   # the JSON alone, no annotated video

Models are randomly initialised (no weights are downloaded); every frame keeps its best 20 candidates,
so there are detections to draw, encode and, for mask models, paste to RLE.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# Build arguments: YOLOv7 letterboxes to 640, the others resize to 800. Randomly initialised models score
# nothing above their own thresholds, so the runs keep every candidate (--score-threshold 0) and cap the
# detections per frame: 20 boxes (and masks) per frame to draw, encode and paste to RLE. YOLOv7 would then
# send its 30,000 best (box, class) candidates to NMS, where a trained model at its 0.25 threshold sends a
# few hundred: 1000 keeps the figure about the network, not about NMS of random boxes.
DETECTIONS_PER_FRAME = 20
MODELS = {
    "yolov7_tiny": {"img_size": 640, "pre_nms_topk": 1000},
    "yolov7": {"img_size": 640, "pre_nms_topk": 1000},
    "centermask2_lite_vovnet19": {"min_size": 800, "max_size": 1333},
    "mask_rcnn_resnet50_fpn": {"min_size": 800, "max_size": 1333},
}
_SUMMARY = re.compile(r"(\d+) frames, \d+ detections in ([\d.]+) s: .* ([\d.]+) frames/s in the model")


def make_video(path: Path, frames: int, size: int = 1024) -> None:
    from pydet.data import write_synthetic_video

    if not path.exists():
        write_synthetic_video(path, num_frames=frames, image_size=size, fps=30, seed=3)


def run_detect(video: Path, name: str, out: Path, batch_size: int, threads: int, with_video: bool = True) -> dict:
    """``pydet detect`` in a child process: its end-to-end frames/s, the frames/s of its model calls
    alone (sharing the cores with decoding and writing) and its peak RSS (``with_video``: also drawing
    and encoding the annotated video, else the COCO-results JSON alone)."""
    kwargs = {**MODELS[name], "box_detections_per_img": DETECTIONS_PER_FRAME}
    argv = [sys.executable, "-m", "pydet", "detect", str(video), "--model", name, "--device", "cpu", "--quiet",
            "--score-threshold", "0", "--batch-size", str(batch_size),
            "--out-json", str(out / f"{name}.json")] + (["--out-video", str(out / f"{name}.mp4")] if with_video else [])
    argv += [a for k, v in kwargs.items() for a in ("--model-arg", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if status != 0:
        raise RuntimeError(f"pydet detect failed:\n{err}")
    records = json.loads((out / f"{name}.json").read_text())
    frames, seconds, in_model = _SUMMARY.search(err).groups()
    return {"e2e_frames_per_s": round(int(frames) / float(seconds), 3), "in_detect_model_frames_per_s": float(in_model),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "detections_per_frame": len(records) / max(len({r["image_id"] for r in records}), 1)}


class ModelOnly:
    """The model's forward alone over the first ``frames`` decoded frames of ``video``, in batches of
    ``batch_size``: :meth:`frames_per_s` times one pass (after a warm-up batch at construction)."""

    @torch.inference_mode()
    def __init__(self, video: Path, name: str, frames: int, batch_size: int):
        from pydet import models
        from pydet.data import image_to_tensor, read_video

        kwargs = {**MODELS[name], "box_detections_per_img": DETECTIONS_PER_FRAME, "box_score_thresh": 0.0}
        self.model = models.build(name, **kwargs).eval()
        self.images, self.batch_size = [], batch_size
        for frame in read_video(video):
            self.images.append(image_to_tensor(frame.image))
            if len(self.images) == frames:
                break
        self.model(self.images[:batch_size])

    @torch.inference_mode()
    def frames_per_s(self) -> float:
        start = time.perf_counter()
        for i in range(0, len(self.images), self.batch_size):
            self.model(self.images[i:i + self.batch_size])
        return len(self.images) / (time.perf_counter() - start)


class _RandomDetections(torch.nn.Module):
    """The pipeline without a model: 20 random boxes with 28x28 box-relative masks per frame, and the
    process's resident memory every 20 frames (what decoding, RLE, drawing, encoding and JSON keep)."""

    box_relative_masks = True

    def __init__(self):
        super().__init__()
        self.frames, self.rss_mb = 0, []

    def forward(self, images):
        if self.frames % 20 == 0:
            status = Path("/proc/self/status").read_text()
            self.rss_mb.append((self.frames, round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)))
        self.frames += len(images)
        g = torch.Generator().manual_seed(self.frames)
        corners = [torch.rand(DETECTIONS_PER_FRAME, 2, generator=g) * 900 for _ in images]
        return [{"boxes": torch.cat([xy, xy + 100], 1), "scores": torch.rand(len(xy), generator=g),
                 "labels": torch.zeros(len(xy), dtype=torch.int64), "mask_probs": torch.rand(len(xy), 28, 28, generator=g)}
                for xy in corners]


def pipeline_rss(video: Path, out: Path, batch_size: int) -> list[tuple[int, float]]:
    from pydet.engine import LabelMap, detect

    model = _RandomDetections()
    detect(model, video, label_map=LabelMap([{"id": 1, "name": "shape"}], [0]), with_masks=True, score_threshold=0.0,
           batch_size=batch_size, out_json=out / "pipeline.json", out_video=out / "pipeline.mp4", progress=False)
    return model.rss_mb


def measure(name: str, args: argparse.Namespace, work: Path) -> list[dict]:
    """One row per ``pydet detect`` run, ``args.repeats`` times over ``args.frames``, each run's ratio
    taken to the mean of the model-only passes just before and just after it (the machine's speed
    drifts by 10-20% over minutes here, so the model alone is timed between the runs, not once)."""
    longest = work / f"video-{max(args.frames)}.mp4"
    make_video(longest, max(args.frames))
    model_only = ModelOnly(longest, name, min(args.model_frames, max(args.frames)), args.batch_size)
    passes, rows = [model_only.frames_per_s()], []
    for _ in range(args.repeats):
        measured = []
        for frames in sorted(args.frames):
            video = work / f"video-{frames}.mp4"
            make_video(video, frames)
            measured.append({"model": name, "frames": frames, "outputs": "json" if args.no_video else "json+video",
                             **run_detect(video, name, work, args.batch_size, args.threads,
                                          with_video=not args.no_video)})
        passes.append(model_only.frames_per_s())
        reference = (passes[-2] + passes[-1]) / 2
        for row in measured:
            row.update(model_frames_per_s=round(reference, 3),
                       model_before_after=[round(passes[-2], 3), round(passes[-1], 3)],
                       e2e_over_model=round(row["e2e_frames_per_s"] / reference, 3))
        rows += measured
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["yolov7_tiny", "centermask2_lite_vovnet19"],
                        choices=list(MODELS))
    parser.add_argument("--frames", nargs="+", type=int, default=[60, 600], help="video lengths to run")
    parser.add_argument("--model-frames", type=int, default=60, help="frames timed for the model-only figure")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each video length, model-only passes between")
    parser.add_argument("--no-video", action="store_true", help="write the JSON only (no annotated video)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/pydet-bench-detect", help="folder for the videos and outputs")
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("--pipeline-rss", type=int, default=0, metavar="FRAMES",
                        help="instead: resident memory every 20 frames of the pipeline alone over FRAMES frames")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.pipeline_rss:
        video = work / f"video-{args.pipeline_rss}.mp4"
        make_video(video, args.pipeline_rss)
        trace = pipeline_rss(video, work, args.batch_size)
        print(json.dumps({"frames_rss_mb": trace}))
        if args.out:
            Path(args.out).write_text(json.dumps({"machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__},
                                                  "video": "1024x1024 SyntheticShapes clip (libx264)",
                                                  "detections_per_frame": DETECTIONS_PER_FRAME,
                                                  "frames_rss_mb": trace}, indent=2))
        return 0
    rows, ratios = [], {}
    for name in args.models:
        for row in measure(name, args, work):
            print(json.dumps(row), flush=True)
            rows.append(row)
            ratios.setdefault((name, row["frames"]), []).append(row["e2e_over_model"])
    for (name, frames), values in ratios.items():
        print(f"{name}, {frames} frames: end to end / model-only {statistics.median(values):.3f} (median of {len(values)})")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": {"cpu_count": os.cpu_count(), "threads": args.threads,
                                                          "torch": torch.__version__,
                                                          "platform": platform.platform()},
                                              "video": "1024x1024 SyntheticShapes clip (libx264)",
                                              "batch_size": args.batch_size, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
