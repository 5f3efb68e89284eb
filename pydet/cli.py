"""``pydet detect | train | eval | export | bench`` (also ``python -m pydet``).

User errors (a missing or unreadable file, a malformed annotation file, a bad argument value) are
one line on stderr naming the culprit and exit status 1; progress and warnings go to stderr too.
``PYDET_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import warnings
from pathlib import Path

EXIT_ERROR = 1


def _model_args(pairs: list[str]) -> dict:
    """``["min_size=320", "backbone=vovnet19"]`` -> ``{"min_size": 320, "backbone": "vovnet19"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg {pair!r}: expected NAME=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _add_model_options(parser: argparse.ArgumentParser, weights_required: bool = False) -> None:
    parser.add_argument("--model", required=True,
                        help="registered model name (see `pydet models`; yolov7-tiny reads as yolov7_tiny)")
    parser.add_argument("--weights", required=weights_required, help="pydet checkpoint (.safetensors), a "
                        "state dict (.pt/.pth, loaded with weights_only=True) or a detectron2 model-zoo .pkl; "
                        "torchvision, YOLOv7, detectron2 R-CNN and CenterMask2 weights are converted")
    parser.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="extra build argument, e.g. min_size=320 or box_score_thresh=0.3 (repeatable)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_data_options(parser: argparse.ArgumentParser, default_seed: int) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="'synthetic', or a COCO annotation file and its image folder")
    parser.add_argument("--num-images", type=int, default=None, help="synthetic: number of images")
    parser.add_argument("--image-size", type=int, default=None, help="synthetic: image side in pixels")
    parser.add_argument("--num-classes", type=int, default=None, help="synthetic: number of shape classes")
    parser.add_argument("--data-seed", type=int, default=default_seed, help="synthetic: dataset seed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")


def _dataset(args, saved: dict | None = None, transforms=None):
    """The dataset ``--data`` names; synthetic settings default to those a checkpoint was trained with."""
    from .data import SyntheticShapes
    from .data.coco import CocoDetection

    if args.data == ["synthetic"]:
        saved = saved or {}
        return SyntheticShapes(num_images=args.num_images or saved.get("num_images", 256),
                               image_size=args.image_size or saved.get("image_size", 128),
                               num_classes=args.num_classes or saved.get("num_classes", 3),
                               seed=args.data_seed, transforms=transforms)
    if len(args.data) != 2:
        raise ValueError("--data takes 'synthetic' or ANNOTATIONS.json IMAGE_DIR")
    return CocoDetection(args.data[0], args.data[1], transforms=transforms)


def _check_detect_args(args) -> None:
    threshold = args.score_threshold
    if not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ValueError(f"--score-threshold must be a number in [0, 1], got {threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out_video and args.out_dir:
        raise ValueError("give --out-video or --out-dir, not both")


def _build_model(args):
    """``build_model`` for ``--model``/``--weights``/``--model-arg``; a ``--model-arg`` the model does not
    take is one line naming it."""
    from .engine import build_model

    overrides = _model_args(args.model_arg)
    try:
        return build_model(args.model, args.weights, **overrides)
    except TypeError as exc:
        unknown = [key for key in overrides if f"'{key}'" in str(exc)]
        if not unknown:
            raise
        raise ValueError(f"--model-arg {unknown[0]}: {args.model} has no setting of that name") from None


def _detect_outputs(args, inputs: list[Path]) -> list[dict]:
    """Per input, the ``detect`` output arguments: as given for one input; under ``--out-dir`` for several
    (``NAME.json``, and ``NAME.mp4`` for a video or ``NAME/`` of PNGs for images)."""
    from .engine.detect import is_video, output_names

    if len(inputs) == 1 and not args.several:
        return [{"out_json": args.out_json, "out_video": args.out_video, "out_dir": args.out_dir}]
    out = Path(args.out_dir)
    return [{"out_json": out / f"{name}.json", "out_video": out / f"{name}.mp4" if is_video(path) else None,
             "out_dir": None if is_video(path) else out / name} for path, name in zip(inputs, output_names(inputs))]


def _detect(args) -> int:
    from . import models
    from .engine import detect, init_distributed
    from .engine.detect import check_outputs, expand_inputs, is_video, open_source, write_manifest

    _check_detect_args(args)
    inputs = expand_inputs(args.input)
    args.several = len(args.input) > 1 or len(inputs) > 1
    if args.several and (args.out_json or args.out_video or not args.out_dir):
        raise ValueError("several inputs write their results under --out-dir (one NAME.json per input), "
                         "not --out-json/--out-video")
    for path in inputs:  # an unreadable input fails before the model is built
        open_source(path)
        if args.track and not is_video(path):
            raise ValueError(f"{path}: --track follows objects through a video; this is not one")
    outputs = _detect_outputs(args, inputs)
    for out in outputs:
        check_outputs(**out)
    device = init_distributed(_device(args.device))
    if args.engine:
        model, label_map = _exported_detector(args)
    else:
        model, label_map, _ = _build_model(args)
        if args.weights is None:
            warnings.warn(f"no --weights: {args.model} is randomly initialised", RuntimeWarning)
    with_masks = models.spec(args.model).has_masks
    rank, world = _rank(), _world_size()
    rows = []
    for index, (path, out) in list(enumerate(zip(inputs, outputs)))[rank::world]:
        stats = detect(model, path, label_map=label_map, with_masks=with_masks, score_threshold=args.score_threshold,
                       batch_size=args.batch_size, device=device, tracker=_tracker() if args.track else None,
                       progress=not args.quiet, **out)
        rows.append({"index": index, "input": str(path), **{k: str(v) for k, v in out.items() if v is not None},
                     "images": stats.images, "detections": stats.detections, "seconds": round(stats.seconds, 3),
                     "model_seconds": round(stats.model_seconds, 3), "rank": rank})
        unit = "frames" if is_video(path) else "images"
        print(f"{path}: {stats.images} {unit}, {stats.detections} detections in {stats.seconds:.1f} s: "
              f"{stats.images_per_s:.2f} {unit}/s end to end, "
              f"{stats.images / max(stats.model_seconds, 1e-9):.2f} {unit}/s in the model", file=sys.stderr)
    if args.several:
        manifest = write_manifest(rows, Path(args.out_dir))
        if manifest is not None:
            print(f"results of {len(inputs)} inputs: {manifest}", file=sys.stderr)
    return 0


def _tracker():
    from .tracking import ByteTracker

    return ByteTracker()


def _exported_detector(args):
    """``--engine FILE``: the exported file as the model; ``--model`` names its label set."""
    from .deploy import ExportedDetector, load_exported
    from . import models
    from .engine.model_info import default_label_map

    if args.weights:
        raise ValueError("--engine runs an exported file, which holds its weights: drop --weights")
    num_classes = _model_args(args.model_arg).get("num_classes", models.spec(args.model).num_classes)
    return ExportedDetector(load_exported(args.engine)), default_label_map(args.model, num_classes)


def _export(args) -> int:
    import time

    from .deploy import FORMATS, save_exported
    from .deploy.verify import largest_differences

    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    if Path(args.out).suffix != suffix:
        raise ValueError(f"--out {args.out}: a {args.format} file must end in {suffix}")
    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 (the example batch; the exported batch stays dynamic), "
                         f"got {args.batch_size}")
    model, _, _ = _build_model(args)
    if not hasattr(model, "export_module"):
        raise ValueError(f"--model {args.model}: no deployment module for this model family yet")
    if args.format == "onnx" and _device(args.device).type != "cpu":
        raise ValueError("--format onnx exports on the CPU (onnxruntime runs it there): use --device cpu")
    module = model.to(_device(args.device)).export_module(_image_size(args.image_size), args.max_detections)
    example = module.example_inputs(args.batch_size)
    start = time.perf_counter()
    print(f"pydet: exporting {args.model} at {module.image_size[0]}x{module.image_size[1]} as {args.format} "
          f"(formats: {', '.join(FORMATS)}) ...", file=sys.stderr)
    save_exported(module, args.format, args.out, example)
    print(f"pydet: wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.0f} s; verifying ...", file=sys.stderr)
    report = largest_differences(module, args.out, example)
    print(f"pydet: {args.out} vs eager on {args.batch_size} images: {report}", file=sys.stderr)
    return 0


def _image_size(text: str | None):
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size {text!r}: expected S or HxW with positive integers")
    return tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0])


def _device(name: str | None):
    import torch

    from .engine.train import default_device

    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def _train(args) -> int:
    import torch

    from . import models
    from .data.transforms import Compose, Mosaic, RandomHorizontalFlip, RandomScaleJitter
    from .engine import LabelMap, init_distributed, train

    device = init_distributed(args.device)
    augment = [a for a in args.augment.split(",") if a] if args.augment else []
    unknown = set(augment) - {"flip", "jitter", "mosaic"}
    if unknown:
        raise ValueError(f"--augment: unknown {', '.join(sorted(unknown))} (choose from flip, jitter, mosaic)")
    steps = [RandomHorizontalFlip()] if "flip" in augment else []
    steps += [RandomScaleJitter()] if "jitter" in augment else []
    dataset = _dataset(args, transforms=Compose(steps) if steps else None)
    if "mosaic" in augment:
        dataset = Mosaic(dataset, size=args.image_size or max(dataset[0][0].shape[-2:]))
    spec = models.spec(args.model)
    recipe = {key: getattr(spec.training, key) if getattr(args, key) is None else getattr(args, key)
              for key in ("optimizer", "lr", "momentum", "weight_decay", "ema")}
    label_map = LabelMap.for_model(args.model, dataset.categories)
    kwargs = {"num_classes": label_map.num_model_classes}
    if args.data == ["synthetic"]:
        kwargs.update(spec.input_size(dataset.image_size[0]))
    kwargs.update(_model_args(args.model_arg))
    torch.manual_seed(args.seed)
    model = models.build(args.model, **kwargs)
    out = Path(args.out or f"runs/{args.model}")
    meta = {"model": args.model, "model_kwargs": kwargs, **label_map.state()}
    if args.data == ["synthetic"]:
        meta["synthetic"] = {"num_images": len(dataset), "image_size": list(dataset.image_size),
                             "num_classes": dataset.num_classes}
    result = train(model, dataset, epochs=args.epochs, max_steps=args.steps, batch_size=args.batch_size,
                   label_offset=spec.label_offset, with_masks=spec.has_masks, schedule=args.schedule,
                   warmup_steps=args.warmup_steps, clip_grad_norm=args.clip_grad_norm, amp=not args.no_amp,
                   checkpoint=out / "last.safetensors",
                   checkpoint_every=args.checkpoint_every, resume=args.resume or False, log_file=out / "log.jsonl",
                   device=device, num_workers=args.workers, seed=args.seed, progress=not args.quiet, meta=meta,
                   **recipe)
    if _rank() != 0:
        return 0
    if not result.losses and args.resume:
        print(f"{out / 'last.safetensors'}: already trained for {result.steps} steps", file=sys.stderr)
    else:
        mean = sum(result.losses[-10:]) / max(len(result.losses[-10:]), 1)
        print(f"trained to step {result.steps}: loss {mean:.4f} (last 10 steps), {result.images_per_s:.1f} images/s; "
              f"checkpoint {out / 'last.safetensors'}", file=sys.stderr)
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _eval(args) -> int:
    from . import models
    from .engine import LabelMap, evaluate

    # a COCO annotation file is checked before the model is built; synthetic data follows the checkpoint
    dataset = None if args.data == ["synthetic"] else _dataset(args)
    model, label_map, meta = _build_model(args)
    dataset = dataset or _dataset(args, saved=meta.get("synthetic"))
    if args.coco_ids:
        label_map = LabelMap.for_model(args.model, dataset.categories, coco_ids=True)
    elif [c["id"] for c in label_map.categories] != [c["id"] for c in dataset.categories]:
        if "categories" in meta:
            raise ValueError(f"{args.weights}: trained on categories {[c['name'] for c in label_map.categories]}, "
                             f"the data has {[c['name'] for c in dataset.categories]}")
        label_map = LabelMap.for_model(args.model, dataset.categories)
    metrics = evaluate(model, dataset, label_map=label_map, with_masks=models.spec(args.model).has_masks,
                       batch_size=args.batch_size, device=_device(args.device), num_workers=args.workers,
                       progress=not args.quiet)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(metrics, indent=2))
    return 0


def _bench(args) -> int:
    from .bench import run_bench

    only = args.ops.split(",") if args.ops else None
    run_bench(models=args.models, repeat=args.repeat, threads=args.threads, only=only)
    return 0


def _models(args) -> int:
    from . import models

    print("\n".join(models.available()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pydet", description="Object detection and instance segmentation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="detect objects in images, folders of images and videos")
    p.add_argument("input", metavar="INPUT", nargs="+",
                   help="image file, folder of images, video file, or a .txt/.lst file listing them; several "
                        "inputs are processed in turn (shared among the processes of a torchrun launch)")
    _add_model_options(p)
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="keep detections scoring at least this (lowers the model's own threshold if needed)")
    p.add_argument("--out-json", help="COCO results JSON (one input)")
    p.add_argument("--out-video", help="annotated video (one video INPUT)")
    p.add_argument("--out-dir", help="one input: folder for annotated images (PNG); several inputs: folder for "
                   "NAME.json and NAME.mp4 (videos) or NAME/ (images) per input, and manifest.json")
    p.add_argument("--batch-size", type=int, default=4, help="images or frames per model call")
    p.add_argument("--track", action="store_true", help="follow objects through videos (ByteTrack): adds "
                   "track_id to each JSON record and draws the ids")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--engine", metavar="FILE", help="run this exported file (pydet export: .onnx, .pt2 program or "
                   "AOTInductor package) instead of the eager model; --model names its label set")
    p.set_defaults(func=_detect)

    p = sub.add_parser("train", help="train a model (torchrun for several GPUs or machines)")
    _add_model_options(p)
    _add_data_options(p, default_seed=0)
    p.add_argument("--out", help="folder for last.safetensors and log.jsonl (default runs/MODEL)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of --epochs")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the model's recipe")
    p.add_argument("--lr", type=float, default=None, help="default: the model's recipe")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum, or AdamW's beta1 (default: the "
                   "model's recipe)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the model's recipe")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an EMA of the weights (default: the model's recipe, on for YOLOv7)")
    p.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    p.add_argument("--augment", default="flip", help="comma-separated: flip, jitter, mosaic (default flip)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="COCO mAP of trained weights")
    _add_model_options(p, weights_required=True)
    _add_data_options(p, default_seed=1_000_003)
    p.add_argument("--coco-ids", action="store_true",
                   help="R-CNN weights use COCO's category ids as labels (torchvision's 91-class models)")
    p.add_argument("--out-json", help="also write the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export a model for deployment (torch.export, ONNX, AOTInductor)")
    _add_model_options(p)
    p.add_argument("--format", choices=("pt2", "onnx", "aoti"), required=True,
                   help="pt2: torch.export program; onnx: standard ONNX (opset 18); aoti: AOTInductor package")
    p.add_argument("--image-size", default=None, metavar="S or HxW",
                   help="fixed input size of the exported model (default: the model's own)")
    p.add_argument("--max-detections", type=int, default=100, help="detection rows per image")
    p.add_argument("--batch-size", type=int, default=2, help="example batch (the batch dimension stays dynamic)")
    p.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for pt2 and aoti)")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="kernel and model timings against the reference implementations")
    p.add_argument("--models", choices=("none", "small", "all"), default="small",
                   help="which models to time (default: the small CPU presets)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--ops", help="comma-separated kernels to time (default: all)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("models", help="list the registered model names")
    p.set_defaults(func=_models)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pydet: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import InputError

    try:
        if getattr(args, "model", None):
            from .models import canonical_name

            args.model = canonical_name(args.model)  # `yolov7-tiny` is `yolov7_tiny`; unknown names fail here
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (InputError, FileNotFoundError, PermissionError, IsADirectoryError, ValueError) as exc:
        if os.environ.get("PYDET_DEBUG"):
            raise
        print(f"pydet: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pydet: interrupted", file=sys.stderr)
        return 130
