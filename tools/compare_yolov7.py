"""Compare pydet's YOLOv7 with the official implementation (WongKinYiu/yolov7): outputs, then CPU speed.

Outside CI: needs a checkout of the official repository (``--official``, default /tmp/yolov7-official) and a
Python in which its models/yolo.py imports (``--python``): the installed torch plus what its modules import,
e.g. ``python -m venv --system-site-packages /opt/yolov7-venv && /opt/yolov7-venv/bin/pip install
opencv-python-headless pandas matplotlib seaborn``. Skips with exit status 0 when either is missing.

Steps, for YOLOv7 and YOLOv7-tiny at 640x640, batch 1:

1. build (official environment, a subprocess that imports nothing from pydet): the official ``Model`` from
   its ``cfg/deploy`` yaml (80 classes, a plain ``Detect`` head) with a fixed seed, randomised realistically
   (BatchNorm statistics calibrated on synthetic 640x640 scenes, head layers spread so that there are
   detections, as tests/deploy/helpers.py does for pydet); its state dict, a synthetic 480x640 image
   letterboxed by the official ``letterbox`` to 640x640, the raw head outputs and the official
   ``non_max_suppression`` detections (conf 0.25, IoU 0.45, at most 300: pydet's defaults) are saved, for the
   model as built and after the official ``Model.fuse()``;
2. parity (this process): ``pydet.models.yolov7(variant)`` loads ``pydet.convert.from_yolov7(state_dict)``;
   raw head outputs and final detections are compared, unfused and after ``model.fuse()``;
3. speed: official eager (``model(x)`` + ``non_max_suppression`` + ``scale_coords``; unfused and fused, as the
   official ``attempt_load`` fuses) in its own process, timed before and after pydet's paths in this process:
   eager ``model([image])`` unfused and fused, then ``torch.compile`` (inductor, freezing), the AOTInductor
   package and onnxruntime, all three of the fused model's deployment module; each path is timed in blocks
   (see :func:`time_paths`) and its detections are checked against the official ones;
4. report: JSON and a Markdown summary (machine, threads, load averages, medians, ratios).

If the official Python has no torchvision (a PyPI torchvision does not install beside every torch build),
the official code gets a stand-in package whose ``ops.nms`` / ``ops.batched_nms`` are pydet's (torchvision
semantics); nothing else of torchvision is used for inference.

    python tools/compare_yolov7.py [--variants yolov7 yolov7-tiny] [--rounds 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("yolov7", "yolov7-tiny")
SIZE = 640
CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS = 0.25, 0.45, 300  # official detect.py = pydet's defaults
SEED = 0
# Full YOLOv7 is compared at float32's precision for that network (benchmarks/test_bench_deploy.py).
TOLERANCES = {"yolov7": {"box_tol": 0.1, "score_tol": 2e-4}, "yolov7-tiny": {"box_tol": 1e-2, "score_tol": 1e-4}}


# ---- shared by both sides (torch only) ---------------------------------------------------------------

def scenes(batch: int, height: int, width: int, seed: int):
    """``[batch, 3, height, width]`` float images in [0, 1]: smooth noise with a few bright rectangles."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height // 8 + 1, width // 8 + 1, generator=g)
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear") * 0.4
    for image in images:
        for _ in range(5):
            y, x = (int(torch.randint(0, s - 8, (1,), generator=g)) for s in (height, width))
            h, w = (int(torch.randint(8, s // 2, (1,), generator=g)) for s in (height, width))
            image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.4
    return images


def time_paths(runs: dict, rounds: int, warmup: int) -> dict:
    """Median and all times (ms) of each callable: ``warmup`` untimed calls, then ``rounds`` timed calls in a
    row, in two passes (the paths in order, then in reverse order, so that slow drift of the machine falls on
    all of them alike).

    Each path runs in blocks rather than interleaved call by call: onnxruntime's worker threads spin for a
    while after each run, which on two cores slowed whatever ran next (interleaved, pydet's eager YOLOv7-tiny
    took a median 108 ms after onnxruntime; in blocks, 73 ms).
    """
    import torch

    times = {name: [] for name in runs}
    with torch.no_grad():
        for order in (list(runs), list(reversed(runs))):
            for name in order:
                for _ in range(warmup):
                    runs[name]()
                for _ in range(rounds):
                    start = time.perf_counter()
                    runs[name]()
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": round(statistics.median(t), 2), "ms": [round(v, 2) for v in t]}
            for name, t in times.items()}


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- official side (runs in the official environment; imports nothing from pydet) -----------------------

TORCHVISION_STAND_IN = {
    "__init__.py": '"""torchvision stand-in of pydet\'s tools/compare_yolov7.py."""\nfrom . import ops, utils\n',
    "ops.py": '''"""nms / batched_nms from pydet.ops (torchvision semantics); the rest is not used for inference."""
import sys
sys.path.append({root!r})
from pydet.ops import batched_nms, nms  # noqa: E402,F401


def _unavailable(*args, **kwargs):
    raise NotImplementedError("not in the torchvision stand-in of tools/compare_yolov7.py")


roi_pool = roi_align = ps_roi_pool = ps_roi_align = _unavailable


class DeformConv2d:
    __init__ = _unavailable
''',
    "utils.py": "def save_image(*args, **kwargs):\n    raise NotImplementedError('torchvision stand-in')\n",
}


def official_model(checkout: str, variant: str):
    """The official ``Model`` of ``cfg/deploy/<variant>.yaml``, built under ``SEED``."""
    import torch

    sys.path.insert(0, checkout)
    from models.yolo import Model

    torch.manual_seed(SEED)
    return Model(os.path.join(checkout, "cfg", "deploy", f"{variant}.yaml"), ch=3, nc=80)


def randomise(model, gain: float = 0.5) -> None:
    """As tests/deploy/helpers.py's ``spread_weights`` for pydet: head convs spread, BatchNorm statistics the
    cumulative average over four 640x640 scenes (train mode), then each level's logits brought to about
    ``gain`` standard deviation with a bias near -1.5, so that some boxes pass the 0.25 threshold."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(SEED)
    head = model.model[-1]
    with torch.no_grad():
        for conv in head.m:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * gain / conv.weight[0].numel() ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.5 - 3.0)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(scenes(4, SIZE, SIZE, seed=SEED + 1))
        for m in norms:
            m.momentum = 0.03  # the official initialize_weights' value
        model.eval()
        for conv, level in zip(head.m, model(scenes(2, SIZE, SIZE, seed=SEED + 2))[1]):
            conv.weight.div_(level.std() / gain)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.5 - 1.5)


def letterboxed_image():
    """``[1, 3, 640, 640]``: a 480x640 uint8 scene through the official ``letterbox`` (bands of grey 114)."""
    import torch
    from utils.datasets import letterbox

    scene = (scenes(1, 480, SIZE, seed=SEED + 3)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = letterbox(scene, SIZE, auto=False)[0]
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).float()[None] / 255


def official_detect(model, image):
    """Official inference after preprocessing, as detect.py: network, NMS, boxes to the image (clipped)."""
    from utils.general import non_max_suppression, scale_coords

    prediction, raw = model(image)
    (detections,) = non_max_suppression(prediction, CONF_THRESHOLD, IOU_THRESHOLD)
    scale_coords(image.shape[2:], detections[:, :4], image.shape[2:])
    return detections, raw


def official_build(checkout: str, variant: str, out: str) -> None:
    """Step 1: weights, input image, raw outputs and detections, unfused and fused, to ``out``."""
    import torch

    model = official_model(checkout, variant)
    randomise(model)
    image = letterboxed_image()
    saved = {"weights": {k: v.clone() for k, v in model.state_dict().items()}, "image": image}
    with torch.no_grad():
        for name in ("unfused", "fused"):
            if name == "fused":
                model.fuse()
            detections, raw = official_detect(model, image)
            saved[name] = {"raw": raw, "detections": detections}
    torch.save(saved, out)


def official_time(checkout: str, variant: str, saved_path: str, rounds: int, out: str) -> None:
    """Step 3, official side: eager unfused and fused on the saved weights and image."""
    import torch

    saved = torch.load(saved_path, weights_only=True)
    models = {}
    for name in ("official eager", "official eager fused"):
        model = official_model(checkout, variant)
        model.load_state_dict(saved["weights"])
        models[name] = model.fuse().eval() if name.endswith("fused") else model.eval()
    image = saved["image"]
    runs = {name: (lambda model=model: official_detect(model, image)) for name, model in models.items()}
    load = load_average()
    result = time_paths(runs, rounds, warmup=2)
    Path(out).write_text(json.dumps({"load_before": load, "load_after": load_average(), "paths": result}))


# ---- pydet side ------------------------------------------------------------------------------------

def pydet_models(variant: str, weights: dict) -> dict:
    """pydet's model loaded with the official weights through ``from_yolov7``, as built and fused."""
    import copy

    sys.path.insert(0, str(ROOT))  # this checkout's pydet, not an installed one
    from pydet.convert import from_yolov7
    from pydet.models import yolov7

    model = yolov7(variant, box_score_thresh=CONF_THRESHOLD, box_nms_thresh=IOU_THRESHOLD,
                   box_detections_per_img=MAX_DETECTIONS).eval()
    model.load_state_dict(from_yolov7(weights), strict=True)
    return {"unfused": model, "fused": copy.deepcopy(model).fuse().eval()}


def official_outputs(detections) -> tuple:
    """Official ``[n, 6]`` detections (xyxy, score, class) as pydet's deployment output tuple."""
    from pydet.deploy.verify import outputs_from_detections

    return outputs_from_detections([{"boxes": detections[:, :4], "scores": detections[:, 4],
                                     "labels": detections[:, 5].long()}], MAX_DETECTIONS)


def max_abs_diff(mine, official) -> dict:
    diff = (mine.double() - official.double()).abs().max().item()
    return {"max_abs_diff": diff, "max_abs_official": official.abs().max().item()}


def parity(variant: str, saved: dict, models: dict) -> dict:
    """Step 2: raw head outputs (per level) and final detections against the official ones."""
    import torch
    from pydet.deploy.verify import compare_outputs, outputs_from_detections

    report = {}
    image = saved["image"]
    for name, model in models.items():
        official = saved[name]
        with torch.no_grad():
            raw = model.model(image)
            detections = model([image[0]])
        report[name] = {
            "raw_levels": [max_abs_diff(mine, theirs) for mine, theirs in zip(raw, official["raw"])],
            "detections": {"count_pydet": len(detections[0]["boxes"]), "count_official": len(official["detections"]),
                           **compare_outputs(official_outputs(official["detections"]),
                                             outputs_from_detections(detections, MAX_DETECTIONS),
                                             **TOLERANCES[variant])},
        }
    return report


def deployment_runs(models: dict, image, folder: Path, paths: list[str]) -> dict:
    """Step 3, pydet side: eager unfused and fused, then the fused model's deployment paths."""
    import torch
    from pydet.deploy import export_onnx, export_program, load_exported, package_aoti

    runs = {"pydet eager": lambda: models["unfused"]([image[0]]),
            "pydet eager fused": lambda: models["fused"]([image[0]])}
    module = models["fused"].export_module((SIZE, SIZE), max_detections=MAX_DETECTIONS)
    if "compile" in paths:
        compiled = torch.compile(module, options={"freezing": True})  # weights folded in as constants
        runs["torch.compile"] = lambda: compiled(image)
    if "aoti" in paths:
        print("packaging with AOTInductor (minutes)", file=sys.stderr, flush=True)
        package = load_exported(package_aoti(export_program(module), folder / "model.pt2"))
        runs["AOTInductor"] = lambda: package(image)
    if "onnxruntime" in paths:
        session = load_exported(export_onnx(module, folder / "model.onnx"))
        runs["onnxruntime"] = lambda: session(image)
    return runs


def check_runs(variant: str, runs: dict, saved: dict) -> dict:
    """Every path's detections against the official model's, unfused or fused as the path (a compiled path
    compiles on this first call)."""
    import torch
    from pydet.deploy.verify import compare_outputs, outputs_from_detections

    report = {}
    with torch.no_grad():
        for name, run in runs.items():
            outputs = run()
            outputs = outputs_from_detections(outputs, MAX_DETECTIONS) if isinstance(outputs, list) else outputs
            official = saved["unfused" if name == "pydet eager" else "fused"]["detections"]
            report[name] = compare_outputs(official_outputs(official), outputs, **TOLERANCES[variant])
    return report


def merge_official(before: dict, after: dict) -> dict:
    """The official timings taken before and after pydet's: the median over both runs, and each run's."""
    merged = {}
    for name in before["paths"]:
        times = before["paths"][name]["ms"] + after["paths"][name]["ms"]
        merged[name] = {"median_ms": round(statistics.median(times), 2),
                        "median_ms_before": before["paths"][name]["median_ms"],
                        "median_ms_after": after["paths"][name]["median_ms"], "ms": times}
    return merged


def speed(args, variant: str, saved_path: str, saved: dict, models: dict, folder: Path) -> dict:
    """Step 3: official eager before and after pydet's paths (drift shows as a difference), medians."""
    runs = deployment_runs(models, saved["image"], folder, args.paths)
    checks = check_runs(variant, runs, saved)
    before = run_official_timing(args, variant, saved_path, folder / "official-before.json")
    pydet_load = [load_average()]
    pydet = time_paths(runs, args.rounds, warmup=2)
    pydet_load.append(load_average())
    after = run_official_timing(args, variant, saved_path, folder / "official-after.json")
    official = merge_official(before, after)
    for name, timing in pydet.items():
        timing["detections_vs_official"] = checks[name]
    best = min(pydet, key=lambda name: pydet[name]["median_ms"])
    return {"paths": {**official, **pydet}, "best_pydet_path": best,
            "speedup_best_vs_official": {name: round(official[name]["median_ms"] / pydet[best]["median_ms"], 2)
                                         for name in official},
            "load": {"official before": [before["load_before"], before["load_after"]], "pydet": pydet_load,
                     "official after": [after["load_before"], after["load_after"]]}}


# ---- orchestration -------------------------------------------------------------------------------------

def official_env(args, stand_in_dir: str | None) -> dict:
    """The official process's environment: its checkout (and the torchvision stand-in) first, fixed threads."""
    paths = [args.official] + ([stand_in_dir] if stand_in_dir else [])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS=str(args.threads))


def run_official(args, *command: str) -> None:
    subprocess.run([args.python, __file__, "--official", args.official, "--threads", str(args.threads), *command],
                   env=args.official_env, stdout=sys.stderr, check=True)


def run_official_timing(args, variant: str, saved_path: str, out: Path) -> dict:
    run_official(args, "--official-time", variant, saved_path, str(args.rounds), str(out))
    return json.loads(out.read_text())


def write_stand_in(folder: Path) -> str:
    package = folder / "torchvision"
    package.mkdir(parents=True, exist_ok=True)
    for name, text in TORCHVISION_STAND_IN.items():
        (package / name).write_text(text.replace("{root!r}", repr(str(ROOT))))
    return str(folder)


def skip_reason(args) -> str | None:
    if not os.path.exists(os.path.join(args.official, "models", "yolo.py")):
        return f"no official YOLOv7 checkout at {args.official}"
    if not os.path.exists(args.python):
        return f"no Python of the official environment at {args.python}"
    probe = subprocess.run([args.python, "-c", "import torch, cv2, yaml, pandas, seaborn, scipy, tqdm, requests"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{args.python} cannot import what the official code imports: {probe.stderr.strip().splitlines()[-1]}"
    return None


def has_torchvision(python: str) -> bool:
    return subprocess.run([python, "-c", "import torchvision.ops"], capture_output=True).returncode == 0


def machine(args) -> dict:
    import torch

    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    info = {"cpu": model_name, "cores": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
            "python": platform.python_version()}
    try:
        import onnxruntime
        info["onnxruntime"] = f"{onnxruntime.__version__} (its default threads)"
    except ImportError:
        pass
    info["official_nms"] = "torchvision.ops.nms" if has_torchvision(args.python) else \
        "pydet.ops.nms through a torchvision stand-in (torchvision semantics)"
    return info


def compare_variant(args, variant: str, work_dir: Path) -> dict:
    """Steps 1-3 for one variant."""
    import torch

    folder = work_dir / variant
    folder.mkdir(parents=True, exist_ok=True)
    saved_path = str(folder / "official.pt")
    if not os.path.exists(saved_path):
        print(f"{variant}: official build", file=sys.stderr, flush=True)
        run_official(args, "--official-build", variant, saved_path)
    saved = torch.load(saved_path, weights_only=True)
    models = pydet_models(variant, saved["weights"])
    result = {"parity": parity(variant, saved, models)}
    print(f"{variant}: parity {json.dumps(result['parity'])}", file=sys.stderr, flush=True)
    if args.rounds > 0:
        result["speed"] = speed(args, variant, saved_path, saved, models, folder)
    return result


def parity_lines(results: dict) -> list[str]:
    lines = ["| model | weights | raw head outputs max abs diff (per level) | detections pydet (official) "
             "| same detections | boxes max abs diff (px) | scores max abs diff |", "|---|---|---|---|---|---|---|"]
    for variant, result in results.items():
        for name, r in result["parity"].items():
            det = r["detections"]
            raw = ", ".join(f"{level['max_abs_diff']:.1e}" for level in r["raw_levels"])
            lines.append(f"| {variant} | {name} | {raw} | {det['count_pydet']} ({det['count_official']}) "
                         f"| {det['same_detections']} | {det.get('boxes', float('nan')):.1e} "
                         f"| {det.get('scores', float('nan')):.1e} |")
    return lines


def speed_lines(results: dict) -> list[str]:
    lines = ["| model | path | median ms | official eager / path | official eager fused / path | pydet eager / path "
             "| same detections as official |", "|---|---|---|---|---|---|---|"]
    for variant, result in results.items():
        if "speed" not in result:
            continue
        paths = result["speed"]["paths"]
        unfused, fused, ours = (paths[name]["median_ms"] for name in ("official eager", "official eager fused",
                                                                       "pydet eager"))
        for name, timing in paths.items():
            same = timing.get("detections_vs_official", {}).get("same_detections", "(reference)")
            median = timing["median_ms"]
            lines.append(f"| {variant} | {name} | {median:.1f} | {unfused / median:.2f}x | {fused / median:.2f}x "
                         f"| {ours / median:.2f}x | {same} |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    info = report["machine"]
    lines = ["# pydet YOLOv7 vs the official code (WongKinYiu/yolov7), same weights, CPU", "",
             f"Machine: {info['cpu']}, {info['cores']} cores (shared), torch {info['torch']}, {info['threads']} "
             f"threads, onnxruntime {info.get('onnxruntime', 'not installed')}. Official cfg/deploy models (80 "
             f"classes, Detect head), random weights with BatchNorm calibrated at 640x640; input a 480x640 scene "
             f"letterboxed by the official code to 640x640, batch 1. Official NMS: {info['official_nms']}. "
             f"Command: `{report['command']}`. Data: `{path.with_suffix('.json').name}`.", "",
             "## Parity", "", *parity_lines(report["results"]), ""]
    if report["rounds"]:
        lines += speed_section(report)
    path.write_text("\n".join(lines) + "\n")


def speed_section(report: dict) -> list[str]:
    lines = ["## Speed (medians)", "",
             f"Each path: 2 warm-up calls and {report['rounds']} timed calls in a row, in two passes (paths in "
             "order, then reversed), so 2 x rounds samples per path; blocks rather than interleaved calls because "
             "onnxruntime's spinning worker threads slow whatever runs next. The official eager model (network + "
             "non_max_suppression + scale_coords, its input already a tensor) runs in its own process, timed before "
             "and after pydet's paths (the median pools both runs; each run's median is in the JSON). pydet's eager "
             "is `model([image])` (its letterbox, here an identity copy, and box mapping included); compile / "
             "AOTInductor / onnxruntime run the fused model's `export_module((640, 640), max_detections=300)`.",
             "", *speed_lines(report["results"]),
             "", "Load averages (uptime) around each timing block:", ""]
    for variant, result in report["results"].items():
        for block, loads in result.get("speed", {}).get("load", {}).items():
            lines.append(f"- {variant}, {block}: " + " -> ".join(v.split("load average:")[-1].strip() for v in loads))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--official", default=os.environ.get("YOLOV7_DIR", "/tmp/yolov7-official"))
    parser.add_argument("--python", default=os.environ.get("YOLOV7_PYTHON", "/opt/yolov7-venv/bin/python"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (0: parity only)")
    parser.add_argument("--paths", nargs="*", default=["compile", "aoti", "onnxruntime"],
                        choices=["compile", "aoti", "onnxruntime"], help="pydet's compiled paths to time")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "yolov7-vs-official.json"))
    parser.add_argument("--work-dir", help="keep the official builds here and reuse them (default: temporary)")
    parser.add_argument("--official-build", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--official-time", nargs=4, metavar=("VARIANT", "SAVED", "ROUNDS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.official_build:
        official_build(args.official, *args.official_build)
        return 0
    if args.official_time:
        variant, saved, rounds, out = args.official_time
        official_time(args.official, variant, saved, int(rounds), out)
        return 0
    reason = skip_reason(args)
    if reason:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="compare_yolov7_") as tmp:
        work_dir = Path(args.work_dir or tmp)
        args.official_env = official_env(args, None if has_torchvision(args.python) else write_stand_in(work_dir))
        command = ["python tools/compare_yolov7.py", *(argv if argv is not None else sys.argv[1:])]
        report = {"command": " ".join(command),
                  "machine": machine(args), "rounds": args.rounds,
                  "results": {variant: compare_variant(args, variant, work_dir) for variant in args.variants}}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, Path(args.out).with_suffix(".md"))
    print(f"wrote {args.out} and its .md summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
