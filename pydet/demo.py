"""``make demo``: the main job on a fresh CPU machine, in about ten minutes.

For each small preset (or the ``--model`` given): train from scratch on SyntheticShapes, measure COCO mAP
on held-out images, then run ``pydet detect`` on a synthetic video. Everything lands in ``demo-output/``:
checkpoints and training logs, COCO-results JSON, annotated videos and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import models
from .cli import main as cli_main
from .data import SyntheticShapes, write_synthetic_video
from .data.transforms import RandomHorizontalFlip
from .engine import LabelMap, evaluate, model_info, train
from .engine.model_info import input_size_kwargs

NUM_CLASSES = 3
HELD_OUT_SEED = 1_000_003
VIDEO_FRAMES = 60
_RCNN_SPEED = {"box_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
               "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}

# Per preset: image size, extra build arguments and a CPU training recipe sized for about two minutes of a
# two-core machine. Fewer sampled RoIs and proposals keep the R-CNN steps short; AdamW trains these
# from-scratch models far better than SGD at this length (YOLOv7-tiny: 0.47 against 0.12 bbox mAP at 500
# steps). Mosaic is off: at 128 pixels its half-size tiles shrink the shapes below what the model learns in
# two minutes (0.28 against 0.47). YOLOv7 is evaluated at the official test threshold (0.001).
RECIPES = {
    "faster_rcnn_resnet18_fpn": {"image_size": 128, "model": _RCNN_SPEED,
                                 "train": dict(optimizer="adamw", lr=3e-4, steps=300, batch_size=4)},
    "mask_rcnn_resnet18_fpn": {"image_size": 128, "model": _RCNN_SPEED,
                               "train": dict(optimizer="adamw", lr=3e-4, steps=350, batch_size=4)},
    "yolov7_tiny_320": {"image_size": 128, "model": {"box_score_thresh": 0.001},
                        "train": dict(optimizer="adamw", lr=0.004, weight_decay=5e-4, steps=700, batch_size=8)},
    "centermask2_lite_vovnet19_slim": {"image_size": 128, "model": {"backbone_norm": "bn"},
                                       "train": dict(optimizer="adamw", lr=2e-3, steps=300, batch_size=4)},
}


def run_preset(name: str, out: Path, video: Path, steps_scale: float, eval_images: int) -> dict:
    recipe = RECIPES[name]
    has_masks, offset = model_info(name)
    settings = dict(recipe["train"])
    steps = max(1, round(settings.pop("steps") * steps_scale))
    size = recipe["image_size"]
    train_set = SyntheticShapes(num_images=max(steps * settings["batch_size"], 64), image_size=size,
                                num_classes=NUM_CLASSES, seed=0, transforms=RandomHorizontalFlip())
    label_map = LabelMap.for_model(name, train_set.categories)
    kwargs = {"num_classes": label_map.num_model_classes, **input_size_kwargs(name, size), **recipe["model"]}
    torch.manual_seed(0)
    model = models.build(name, **kwargs)
    run_dir = out / name
    checkpoint = run_dir / "last.safetensors"
    checkpoint.unlink(missing_ok=True)
    (run_dir / "log.jsonl").unlink(missing_ok=True)
    print(f"\n== {name}: training {steps} steps on {size}px SyntheticShapes", file=sys.stderr)
    start = time.perf_counter()
    meta = {"model": name, "model_kwargs": kwargs, **label_map.state(),
            "synthetic": {"num_images": len(train_set), "image_size": [size, size],
                          "num_classes": NUM_CLASSES}}
    result = train(model, train_set, max_steps=steps, label_offset=offset, with_masks=has_masks,
                   warmup_steps=min(50, steps // 5), clip_grad_norm=10.0, checkpoint=checkpoint,
                   log_file=run_dir / "log.jsonl", device="cpu", meta=meta, **settings)
    train_s = time.perf_counter() - start
    evaluated = result.ema if result.ema is not None else model
    held_out = SyntheticShapes(eval_images, size, num_classes=NUM_CLASSES, seed=HELD_OUT_SEED)
    print(f"== {name}: COCO mAP on {eval_images} held-out images", file=sys.stderr)
    metrics = evaluate(evaluated, held_out, label_map=label_map, with_masks=has_masks, device="cpu")
    print(f"== {name}: pydet detect {video.name}", file=sys.stderr)
    start = time.perf_counter()
    cli_main(["detect", str(video), "--model", name, "--weights", str(checkpoint), "--device", "cpu",
              "--score-threshold", "0.3",
              "--out-json", str(out / f"{name}.json"), "--out-video", str(out / f"{name}.mp4")])
    detect_s = time.perf_counter() - start
    return {"model": name, "steps": result.steps, "train_s": round(train_s, 1),
            "train_images_per_s": round(result.images_per_s, 2),
            "bbox_mAP": round(metrics["bbox"]["AP"], 4),
            "segm_mAP": round(metrics["segm"]["AP"], 4) if "segm" in metrics else None,
            "detect_frames_per_s": round(VIDEO_FRAMES / detect_s, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(RECIPES),
                        help="run only this preset (repeatable; default: every registered preset)")
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output/)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every recipe's training steps")
    parser.add_argument("--eval-images", type=int, default=100, help="held-out images for COCO mAP")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.model or [n for n in RECIPES if n in models.available()]
    if not names:
        print("no demo preset is registered", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "shapes.mp4"
    write_synthetic_video(video, num_frames=VIDEO_FRAMES, image_size=(240, 320), fps=15, num_classes=NUM_CLASSES, seed=7)
    start = time.perf_counter()
    rows = [run_preset(name, out, video, args.steps_scale, args.eval_images) for name in names]
    total = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps({"total_s": round(total, 1), "results": rows}, indent=2))
    print(f"\n{'model':<28}{'steps':>6}{'train s':>9}{'bbox mAP':>10}{'segm mAP':>10}{'detect fps':>12}")
    for r in rows:
        segm = f"{r['segm_mAP']:.3f}" if r["segm_mAP"] is not None else "-"
        print(f"{r['model']:<28}{r['steps']:>6}{r['train_s']:>9.0f}{r['bbox_mAP']:>10.3f}{segm:>10}"
              f"{r['detect_frames_per_s']:>12.1f}")
    print(f"total {total / 60:.1f} min; outputs in {out}/ (annotated videos, COCO JSON, checkpoints, logs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
