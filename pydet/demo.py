"""``make demo``: the main job on a fresh CPU machine, in under ten minutes on two cores.

For each small preset (or the ``--model`` given): train from scratch on SyntheticShapes, measure COCO mAP
on held-out images, then run ``pydet detect`` on a synthetic video. Presets train side by side, one worker
process per core. Everything lands in ``demo-output/``: checkpoints and training logs, COCO-results JSON,
annotated videos and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from . import models
from .cli import main as cli_main
from .data import SyntheticShapes, write_synthetic_video
from .data.transforms import RandomHorizontalFlip
from .engine import LabelMap, evaluate, train

NUM_CLASSES = 3
HELD_OUT_SEED = 1_000_003
VIDEO_FRAMES = 60
_RCNN_SPEED = {"box_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
               "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}

# Per preset: image size, extra build arguments and a CPU training recipe, listed longest first (the order
# the demo starts them in), each three to four minutes on one core. Fewer sampled RoIs and proposals keep
# the two-stage steps short (CenterMask's mask branch: 8 RoIs of 64 channels per image instead of up to 128
# of 128, which was half of its step time); AdamW trains these from-scratch models far better than SGD at
# this length (YOLOv7-tiny: 0.47 against 0.12 bbox mAP at 500 steps). Mosaic is off: at 128 pixels its
# half-size tiles shrink the shapes below what the model learns in minutes (0.28 against 0.47). The
# schedules are about the shortest that pass 0.5 bbox mAP: CenterMask-Lite reaches 0.29 at 300 steps,
# 0.40 at 400 and 0.7 at 550-600; YOLOv7-tiny 0.47 at 500 and 0.8 at 700. YOLOv7 is evaluated at the
# official test threshold (0.001).
RECIPES = {
    "centermask2_lite_vovnet19_slim": {"image_size": 128, "model": {"backbone_norm": "bn", "mask_channels": 64,
                                                                    "box_batch_size_per_image": 32},
                                       "train": dict(optimizer="adamw", lr=2e-3, steps=550, batch_size=4)},
    "yolov7_tiny_320": {"image_size": 128, "model": {"box_score_thresh": 0.001},
                        "train": dict(optimizer="adamw", lr=0.004, weight_decay=5e-4, steps=700, batch_size=8)},
    "mask_rcnn_resnet18_fpn": {"image_size": 128, "model": _RCNN_SPEED,
                               "train": dict(optimizer="adamw", lr=3e-4, steps=350, batch_size=4)},
    "faster_rcnn_resnet18_fpn": {"image_size": 128, "model": _RCNN_SPEED,
                                 "train": dict(optimizer="adamw", lr=3e-4, steps=300, batch_size=4)},
}


def preset_steps(name: str, steps_scale: float) -> int:
    return max(1, round(RECIPES[name]["train"]["steps"] * steps_scale))


def run_preset(name: str, out: Path, video: Path, steps_scale: float, eval_images: int,
               verbose: bool = True) -> dict:
    """Train, evaluate and run ``pydet detect`` for one preset; ``verbose=False`` prints nothing (the
    parallel demo's workers: the parent draws their progress from the training logs)."""
    recipe = RECIPES[name]
    spec = models.spec(name)
    settings = dict(recipe["train"])
    del settings["steps"]
    steps = preset_steps(name, steps_scale)
    size = recipe["image_size"]
    say = (lambda text: print(text, file=sys.stderr)) if verbose else (lambda text: None)
    train_set = SyntheticShapes(num_images=max(steps * settings["batch_size"], 64), image_size=size,
                                num_classes=NUM_CLASSES, seed=0, transforms=RandomHorizontalFlip())
    label_map = LabelMap.for_model(name, train_set.categories)
    kwargs = {"num_classes": label_map.num_model_classes, **spec.input_size(size), **recipe["model"]}
    torch.manual_seed(0)
    model = models.build(name, **kwargs)
    run_dir = out / name
    checkpoint = run_dir / "last.safetensors"
    checkpoint.unlink(missing_ok=True)
    (run_dir / "log.jsonl").unlink(missing_ok=True)
    say(f"\n== {name}: training {steps} steps on {size}px SyntheticShapes")
    start = time.perf_counter()
    meta = {"model": name, "model_kwargs": kwargs, **label_map.state(),
            "synthetic": {"num_images": len(train_set), "image_size": [size, size],
                          "num_classes": NUM_CLASSES}}
    result = train(model, train_set, max_steps=steps, label_offset=spec.label_offset, with_masks=spec.has_masks,
                   warmup_steps=min(50, steps // 5), clip_grad_norm=10.0, checkpoint=checkpoint,
                   log_file=run_dir / "log.jsonl", device="cpu", meta=meta, progress=verbose, **settings)
    train_s = time.perf_counter() - start
    evaluated = result.ema if result.ema is not None else model
    held_out = SyntheticShapes(eval_images, size, num_classes=NUM_CLASSES, seed=HELD_OUT_SEED)
    say(f"== {name}: COCO mAP on {eval_images} held-out images")
    metrics = evaluate(evaluated, held_out, label_map=label_map, with_masks=spec.has_masks, device="cpu",
                       progress=verbose, print_table=verbose)
    say(f"== {name}: pydet detect {video.name}")
    start = time.perf_counter()
    cli_main(["detect", str(video), "--model", name, "--weights", str(checkpoint), "--device", "cpu",
              "--score-threshold", "0.3", "--out-json", str(out / f"{name}.json"),
              "--out-video", str(out / f"{name}.mp4")] + ([] if verbose else ["--quiet"]))
    detect_s = time.perf_counter() - start
    return {"model": name, "steps": result.steps, "train_s": round(train_s, 1),
            "train_images_per_s": round(result.images_per_s, 2),
            "bbox_mAP": round(metrics["bbox"]["AP"], 4),
            "segm_mAP": round(metrics["segm"]["AP"], 4) if "segm" in metrics else None,
            "detect_frames_per_s": round(VIDEO_FRAMES / detect_s, 2)}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _logged_step(log: Path) -> int:
    """The last step a training log has recorded (0 before the first record)."""
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:  # the line being written
            continue
    return 0


def run_parallel(names: list[str], out: Path, video: Path, steps_scale: float, eval_images: int, jobs: int,
                 threads: int) -> list[dict]:
    """The presets in ``jobs`` worker processes of ``threads`` torch threads each.

    These small models use two cores poorly from one process (YOLOv7-tiny at 128 px trains 36 images/s
    with two threads, 32 with one), so two single-threaded trainings side by side finish the demo in
    about two thirds of the time. Presets start in ``RECIPES`` order (longest first), and one progress
    bar per preset follows its training log.
    """
    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")  # a fork of a process holding OpenMP threads may hang
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        for name in names:  # a previous run's log would show its progress until the worker starts
            (out / name / "log.jsonl").unlink(missing_ok=True)
        futures = {name: pool.submit(run_preset, name, out, video, steps_scale, eval_images, False)
                   for name in names}
        bars = {name: tqdm(total=preset_steps(name, steps_scale), desc=f"{name:<31}", position=i, file=sys.stderr,
                           dynamic_ncols=True, unit="step") for i, name in enumerate(names)}
        try:
            pending, finished = set(futures.values()), set()
            while pending:
                _, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                for name, bar in bars.items():
                    future = futures[name]
                    if future in finished:
                        continue
                    if not future.done():
                        bar.update(_logged_step(out / name / "log.jsonl") - bar.n)
                        continue
                    finished.add(future)
                    bar.update(bar.total - bar.n)
                    if future.exception() is None:
                        bar.set_postfix_str(f"bbox mAP {future.result()['bbox_mAP']:.3f}")
        finally:
            for bar in bars.values():
                bar.close()
        return [futures[name].result() for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=list(RECIPES),
                        help="run only this preset (repeatable; default: every registered preset)")
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output/)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every recipe's training steps")
    parser.add_argument("--eval-images", type=int, default=100, help="held-out images for COCO mAP")
    parser.add_argument("--jobs", type=int, default=None,
                        help="presets trained side by side in worker processes (default: one per core, at most "
                             "one per preset); 1 runs them one after another in this process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per preset (default: the cores divided among the jobs)")
    args = parser.parse_args(argv)
    names = args.model or [n for n in RECIPES if n in models.available()]
    if not names:
        print("no demo preset is registered", file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    jobs = max(1, min(args.jobs or cores, len(names)))
    threads = args.threads or max(1, cores // jobs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "shapes.mp4"
    write_synthetic_video(video, num_frames=VIDEO_FRAMES, image_size=(240, 320), fps=15, num_classes=NUM_CLASSES, seed=7)
    start = time.perf_counter()
    if jobs == 1:
        torch.set_num_threads(threads)
        rows = [run_preset(name, out, video, args.steps_scale, args.eval_images) for name in names]
    else:
        print(f"training {len(names)} presets, {jobs} at a time with {threads} thread(s) each", file=sys.stderr)
        rows = run_parallel(names, out, video, args.steps_scale, args.eval_images, jobs, threads)
    total = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps({"total_s": round(total, 1), "jobs": jobs, "threads": threads,
                                                  "results": rows}, indent=2))
    print(f"\n{'model':<32}{'steps':>6}{'train s':>9}{'bbox mAP':>10}{'segm mAP':>10}{'detect fps':>12}")
    for r in rows:
        segm = f"{r['segm_mAP']:.3f}" if r["segm_mAP"] is not None else "-"
        print(f"{r['model']:<32}{r['steps']:>6}{r['train_s']:>9.0f}{r['bbox_mAP']:>10.3f}{segm:>10}"
              f"{r['detect_frames_per_s']:>12.1f}")
    print(f"total {total / 60:.1f} min; outputs in {out}/ (annotated videos, COCO JSON, checkpoints, logs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
