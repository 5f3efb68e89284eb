"""Compare pydet's CenterMask2 with the official implementation (youngwanLEE/centermask2 on detectron2).

Outside CI: needs checkouts of detectron2 and centermask2 and a Python environment in which they run
(torch + torchvision + fvcore + pycocotools; detectron2's C extension is not needed). Skips with exit
status 0 when any of them is missing.

For each config the official model is built from its own code and config files in that environment,
randomised deterministically (conv weights and biases, BatchNorm statistics calibrated on the input image
and then perturbed, heads biased so that many points pass the score threshold and boxes cross the image
border), and run on a synthetic BGR image whose test-time resize is the identity. Its weights, the image
and every stage's output go to a file; then, in this process, pydet loads the same weights through
``pydet.convert.from_centermask2`` and the stages are compared.

    python tools/compare_centermask2.py [--configs V-39 Lite-V-19-slim R-50] [--out benchmarks/results/...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# config name -> (official config file, pydet backbone, lite, image height, width)
CONFIGS = {
    "V-39": ("centermask_V_39_eSE_FPN_ms_3x.yaml", "vovnet39", False, 800, 1067),
    "V-57": ("centermask_V_57_eSE_FPN_ms_3x.yaml", "vovnet57", False, 800, 1067),
    "V-99": ("centermask_V_99_eSE_FPN_ms_3x.yaml", "vovnet99", False, 800, 1067),
    "R-50": ("centermask_R_50_FPN_ms_3x.yaml", "resnet50", False, 800, 1067),
    "Lite-V-19-slim": ("centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml", "vovnet19_slim", True, 600, 797),
    "Lite-V-19": ("centermask_lite_V_19_eSE_FPN_ms_4x.yaml", "vovnet19", True, 600, 797),
    "Lite-V-39": ("centermask_lite_V_39_eSE_FPN_ms_4x.yaml", "vovnet39", True, 600, 797),
}
DEFAULT_CONFIGS = ("V-39", "Lite-V-19-slim", "R-50")
ROOT = Path(__file__).resolve().parents[1]


# ---- official side (runs in the official environment; imports neither pydet nor this repo) ----------

def _record(modules: dict, convert: dict) -> dict:
    """Forward hooks keeping each module's output (through ``convert[name]`` where given) under its name."""
    stages = {}
    for name, module in modules.items():
        def hook(module, inputs, output, name=name):
            stages[name] = convert[name](output) if name in convert else output
        module.register_forward_hook(hook)
    return stages


def _synthetic_image(height: int, width: int, seed: int):
    """uint8 BGR image: smooth colour gradients with filled ellipses and rectangles."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([64 + 48 * np.sin(xs / rng.uniform(40, 120) + c) + 32 * np.cos(ys / rng.uniform(40, 120))
                      for c in range(3)], axis=-1)
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, width / 4), rng.uniform(20, height / 4)
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        if rng.random() < 0.5:
            inside = (abs(xs - cx) <= rx) & (abs(ys - cy) <= ry)
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def _randomise(model, image, generator) -> None:
    """Deterministic weights that exercise every stage: see the module docstring."""
    import torch
    from torch import nn
    from detectron2.layers import FrozenBatchNorm2d

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    def uniform(t, low, high):
        t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = module.weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) else \
                    module.weight.shape[0] * module.weight[0, 0].numel() / 4
                normal(module.weight, (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    normal(module.bias, 0.1)
            elif isinstance(module, (FrozenBatchNorm2d, nn.GroupNorm)):
                uniform(module.weight, 0.5, 1.5)
                normal(module.bias, 0.2)
        head = model.proposal_generator.fcos_head
        normal(head.cls_logits.weight, 0.03)
        head.cls_logits.bias.fill_(-4.0)  # ~10% of (point, class) pairs above the 0.05 threshold
        normal(head.bbox_pred.weight, 0.01)
        uniform(head.bbox_pred.bias, 2.0, 6.0)  # boxes of 4-12 strides: many cross the border
        normal(head.ctrness.weight, 0.03)
        for scale in head.scales:
            uniform(scale.scale, 0.7, 1.3)
        normal(model.roi_heads.mask_head.predictor.weight, 0.05)
        uniform(model.roi_heads.mask_head.predictor.bias, -1.0, 2.0)  # masks neither empty nor full
        normal(model.roi_heads.maskiou_head.maskiou.weight, 0.01)
        uniform(model.roi_heads.maskiou_head.maskiou.bias, 0.3, 0.9)

    # BatchNorm statistics: each layer's actual input statistics on the image, perturbed, set in order
    def calibrate(module, inputs):
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
        module.running_mean.copy_(mean + torch.randn(mean.shape, generator=generator) * 0.2 * var.sqrt())
        module.running_var.copy_(var * (torch.rand(var.shape, generator=generator) * 1.5 + 0.5) + 1e-3)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.backbone(model.preprocess_image([image]).tensor)
    for hook in hooks:
        hook.remove()


def _official_run(config_file: str, height: int, width: int, centermask2_dir: str, out: str) -> None:
    import torch
    from centermask.config import get_cfg
    import centermask.modeling  # noqa: F401  (registers FCOS, CenterROIHeads, the VoVNet backbones)
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(centermask2_dir, "configs", "centermask", config_file))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    bgr = _synthetic_image(height, width, seed=0)
    image = {"image": torch.as_tensor(bgr.transpose(2, 0, 1).copy()).float(), "height": height, "width": width}
    _randomise(model, image, torch.Generator().manual_seed(0))

    # the proposals are copied when produced: detector_postprocess later clips their boxes in place
    stages = _record({"features": model.backbone, "head": model.proposal_generator.fcos_head,
                      "proposals": model.proposal_generator, "mask_logits": model.roi_heads.mask_head,
                      "maskiou": model.roi_heads.maskiou_head},
                     {"proposals": lambda output: {"boxes": output[0][0].pred_boxes.tensor.clone(),
                                                   "scores": output[0][0].scores.clone(),
                                                   "labels": output[0][0].pred_classes.clone()}})
    with torch.no_grad():
        (result,) = model([image])
    instances = result["instances"]
    logits, reg, ctrness, _ = stages["head"]
    torch.save({
        "weights": model.state_dict(), "image_bgr": torch.from_numpy(bgr),
        "features": {k: v for k, v in stages["features"].items()},
        "head": {"logits": logits, "reg": reg, "ctrness": ctrness},
        "proposals": stages["proposals"],
        "mask_logits": stages["mask_logits"], "maskiou": stages["maskiou"],
        "final": {"boxes": instances.pred_boxes.tensor, "scores": instances.scores,
                  "labels": instances.pred_classes, "mask_scores": instances.mask_scores,
                  "masks": instances.pred_masks},
    }, out)


# ---- pydet side ------------------------------------------------------------------------------------

def _pydet_run(saved: dict, backbone: str, lite: bool) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))  # this checkout's pydet, not an installed one
    from pydet.convert import from_centermask2
    from pydet.models.centermask2 import centermask2

    model = centermask2(backbone, lite=lite, stride_in_1x1=backbone == "resnet50").eval()
    model.load_state_dict(from_centermask2({"model": saved["weights"]}), strict=True)
    stages = _record({"features": model.backbone, "head": model.fcos.head, "proposals": model.fcos,
                      "mask_logits": model.mask_head, "maskiou": model.maskiou_head},
                     {"proposals": lambda output: [dict(d) for d in output[0]]})
    rgb = saved["image_bgr"].flip(-1).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        (final,) = model([rgb])
    stages["final"] = final
    return stages


def _max_diff(a, b) -> dict:
    import torch

    a, b = a.double(), b.double()
    if a.shape != b.shape:
        return {"shape_pydet": list(a.shape), "shape_official": list(b.shape)}
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return {"max_abs_diff": diff, "max_abs_official": scale, "rel": diff / scale if scale else diff}


def _flatten_levels(levels):
    import torch

    return torch.cat([x.flatten(2).transpose(1, 2) for x in levels], dim=1)  # [B, points, K]


def _compare(saved: dict, ours: dict) -> dict:
    report = {}
    features = list(ours["features"].values())
    report["features"] = {name: _max_diff(mine, saved["features"][name])
                          for name, mine in zip(("p3", "p4", "p5", "p6", "p7"), features)}
    logits, boxes, centerness = ours["head"]
    head = saved["head"]
    report["head"] = {"cls_logits": _max_diff(logits, _flatten_levels(head["logits"])),
                      "box_regression": _max_diff(boxes, _flatten_levels(head["reg"])),
                      "centerness": _max_diff(centerness, _flatten_levels(head["ctrness"])[..., 0])}
    (proposals,) = ours["proposals"]
    order, report["pre_mask_detections"] = _compare_detections(proposals, saved["proposals"])
    height, width = saved["image_bgr"].shape[:2]
    boxes = saved["proposals"]["boxes"]
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    report["pre_mask_detections"]["official_boxes_crossing_the_border"] = int(outside.sum().item())
    if order is not None:
        report["mask_logits"] = _max_diff(ours["mask_logits"][order], saved["mask_logits"])
        report["maskiou"] = _max_diff(ours["maskiou"][order], saved["maskiou"])
    final, official = ours["final"], saved["final"]
    order, report["final"] = _compare_detections(final, official)
    if order is not None:
        report["final"]["mask_scores"] = _max_diff(final["mask_scores"][order], official["mask_scores"])
        mine = final["masks"][order, 0] >= 0.5
        report["final"]["mask_pixels_differing"] = (mine != official["masks"]).sum().item()
        report["final"]["mask_pixels_total"] = int(official["masks"].sum().item())
    return report


def _compare_detections(mine: dict, official: dict):
    """``(order, report)``: ``mine[order]`` lines up with ``official`` (same label, box within 0.1 px) or
    ``order`` is None when some detection has no counterpart. ``reordered`` counts detections ranked
    differently, which happens between scores that agree to float32 rounding."""
    import torch

    out = {"count_pydet": len(mine["boxes"]), "count_official": len(official["boxes"])}
    order = None
    if out["count_pydet"] == out["count_official"]:
        distance = torch.cdist(official["boxes"].double(), mine["boxes"].double(), p=float("inf"))
        distance[official["labels"][:, None] != mine["labels"][None, :]] = float("inf")
        best = distance.argmin(1) if len(distance) else torch.zeros(0, dtype=torch.int64)
        found = distance.gather(1, best[:, None])[:, 0] < 0.1 if len(distance) else torch.ones(0, dtype=torch.bool)
        if found.all() and len(set(best.tolist())) == len(best):
            order = best
    out["same_detections"] = order is not None
    if order is not None:
        out["reordered"] = int((order != torch.arange(len(order))).sum().item())
        out["boxes"] = _max_diff(mine["boxes"][order], official["boxes"])
        out["scores"] = _max_diff(mine["scores"][order], official["scores"])
    return order, out


def write_markdown(results: dict, path: Path) -> None:
    """One table row per config: the largest relative difference per stage and the detection agreement."""
    def rel(stats):
        return max(v["rel"] for v in stats.values()) if stats else float("nan")

    lines = ["# pydet CenterMask2 vs the official code (same random weights, identity resize)", "",
             "| config | image | features | FCOS head | mask logits | MaskIoU | detections (pydet / official) "
             "| same detections (reordered) | boxes max abs | scores max abs | mask_scores max abs "
             "| mask pixels differing / set |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        final = r["final"]
        lines.append(
            f"| {name} | {r['image'][0]}x{r['image'][1]} | {rel(r['features']):.1e} | {rel(r['head']):.1e} "
            f"| {r.get('mask_logits', {}).get('rel', float('nan')):.1e} "
            f"| {r.get('maskiou', {}).get('rel', float('nan')):.1e} "
            f"| {final['count_pydet']} / {final['count_official']} "
            f"| {final['same_detections']} ({final.get('reordered', '-')}) "
            f"| {final.get('boxes', {}).get('max_abs_diff', float('nan')):.1e} "
            f"| {final.get('scores', {}).get('max_abs_diff', float('nan')):.1e} "
            f"| {final.get('mask_scores', {}).get('max_abs_diff', float('nan')):.1e} "
            f"| {final.get('mask_pixels_differing', '-')} / {final.get('mask_pixels_total', '-')} |")
    lines += ["", "Relative differences are max |pydet - official| / max |official| per stage; detections are "
              "paired by label and box (reordered: pairs ranked differently, between scores equal to float32 "
              "rounding); "
              f"{sum(r['pre_mask_detections']['official_boxes_crossing_the_border'] for r in results.values())} "
              "pre-mask detections in all reach past the image border (pooled unclipped by both).", "",
              "What differs is float32 rounding: the two sides run in different processes and torch builds, pydet's "
              "first conv carries the input scale in its weights rather than in its input, and kernels sum in other "
              "orders (it grows with depth, V-99 the most). A pasted mask pixel differs only where the probability "
              "is within that rounding of the 0.5 threshold; near-equal scores can swap ranks."]
    path.write_text("\n".join(lines) + "\n")


def _skip_reason(args) -> str | None:
    for path, what in ((args.detectron2, "detectron2 checkout"), (args.centermask2, "centermask2 checkout"),
                       (args.python, "Python of the official environment")):
        if not os.path.exists(path):
            return f"no {what} at {path}"
    probe = subprocess.run([args.python, "-c", "import torch, torchvision, fvcore, pycocotools"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{args.python} cannot import torch/torchvision/fvcore/pycocotools"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--detectron2", default=os.environ.get("DETECTRON2_DIR", "/work/official/detectron2"))
    parser.add_argument("--centermask2", default=os.environ.get("CENTERMASK2_DIR", "/work/official/centermask2"))
    parser.add_argument("--python", default=os.environ.get("OFFICIAL_PYTHON", "/opt/tvenv/bin/python"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "centermask2-vs-official.json"))
    parser.add_argument("--work-dir", help="keep the official runs' files here and reuse them (default: a "
                        "temporary directory)")
    parser.add_argument("--official-run", nargs=4, metavar=("CONFIG_FILE", "HEIGHT", "WIDTH", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.official_run:
        config_file, height, width, out = args.official_run
        _official_run(config_file, int(height), int(width), args.centermask2, out)
        return 0
    reason = _skip_reason(args)
    if reason:
        print(f"skipped: {reason}")
        return 0
    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.detectron2, args.centermask2]))
    results = {}
    with tempfile.TemporaryDirectory(prefix="compare_centermask2_") as tmp:
        work_dir = args.work_dir or tmp
        for name in args.configs:
            config_file, backbone, lite, height, width = CONFIGS[name]
            path = os.path.join(work_dir, f"{name}.pt")
            if not os.path.exists(path):
                print(f"{name}: official run", file=sys.stderr, flush=True)
                subprocess.run([args.python, __file__, "--centermask2", args.centermask2, "--official-run",
                                config_file, str(height), str(width), path], env=env, check=True)
            saved = torch.load(path, weights_only=True)
            print(f"{name}: pydet run", file=sys.stderr, flush=True)
            results[name] = {"image": [height, width], **_compare(saved, _pydet_run(saved, backbone, lite))}
            print(json.dumps(results[name]["final"], indent=1), file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, Path(args.out).with_suffix(".md"))
    print(f"wrote {args.out} and its .md summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
