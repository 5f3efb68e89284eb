"""Compare pydet's ``style="detectron2"`` R-CNN models with detectron2's own code, stage by stage.

Outside CI: needs a detectron2 source tree (``--detectron2``, default ``/work/official/detectron2``) and a
Python environment with torch, torchvision, fvcore and iopath that can import it (``--python``, default
``/opt/tvenv/bin/python``); pydet is never imported there. When either is missing the script says so and
exits 0.

1. In that environment (``--dump``), build detectron2's Faster R-CNN and Mask R-CNN R50-FPN from their model
   zoo configs, give them deterministic random weights with non-trivial FrozenBatchNorm statistics and
   biases that give many detections, and save the weights as a model-zoo-like ``.pkl`` of numpy arrays
   (with the ``pixel_mean``/``pixel_std``/``cell_anchors`` entries older checkpoints carry), an 800x1066
   image (its resize is the identity) and the outputs of every stage.
2. Here, convert the ``.pkl`` with ``pydet.convert.from_detectron2``, run pydet on the same image and
   compare: FPN features, RPN proposals, box head outputs, detections before the mask head, final boxes,
   scores, labels and pasted masks. The numbers go to ``--out`` (JSON).

    python tools/compare_detectron2.py --out benchmarks/results/cpu-detectron2.json
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "faster_rcnn_resnet50_fpn": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "mask_rcnn_resnet50_fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
}
IMAGE_SIZE = (800, 1066)  # short side 800, long side < 1333: detectron2's and pydet's resize are the identity
# With random weights the best 1000 proposals all come from the finest levels; keeping every proposal that
# survives NMS (on both sides) sends boxes of every level and anchor shape through the box head.
POST_NMS_TOPK_TEST = 5000


# ---------------------------------------------------------------- detectron2 side (run with --dump)

def randomise(model, seed: int) -> None:
    """Deterministic weights: variance-preserving convs and linears, FrozenBN statistics away from the
    identity (residual branches scaled down so that 16 blocks keep activations of order one), and
    classifier/objectness biases that let many boxes pass the score thresholds."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, value in state.items():
        if name.endswith("conv3.norm.weight"):
            new = torch.rand(value.shape, generator=gen) * 0.3 + 0.1
        elif name.endswith("norm.weight"):
            new = torch.rand(value.shape, generator=gen) * 0.5 + 0.5
        elif name.endswith("norm.running_var"):
            new = torch.rand(value.shape, generator=gen) + 0.5
        elif name.endswith(("norm.bias", "norm.running_mean")):
            new = torch.randn(value.shape, generator=gen) * 0.1
        elif name.endswith("weight") and value.dim() > 1:
            fan_in = value[0].numel() if "deconv" not in name else value.shape[0] * value[0, 0].numel()
            std = (1.0 / fan_in) ** 0.5
            if "stem" in name:
                std /= 64.0  # BGR 0-255 input minus the mean
            if "bbox_pred" in name or "anchor_deltas" in name:
                std = 0.01
            if "cls_score" in name or "objectness" in name:
                std = 0.05  # logits that depend on the features, not on the biases alone
            new = torch.randn(value.shape, generator=gen) * std
        elif name.endswith("bias"):
            new = torch.randn(value.shape, generator=gen) * 0.1
            if "cls_score" in name:
                new = torch.randn(value.shape, generator=gen) * 2.0
                new[-1] = -4.0  # detectron2's background is the last logit
            if "objectness_logits" in name:
                new = torch.randn(value.shape, generator=gen)
        else:
            continue
        value.copy_(new.to(value.dtype))


def dump(workdir: Path, detectron2_root: str, seed: int) -> None:
    import numpy as np
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.modeling.postprocessing import detector_postprocess

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    h, w = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Smooth structure plus noise: enough texture for the random weights to give varied features.
    image = np.stack([127 + 100 * np.sin(xx / (23 + 9 * c) + yy / (31 - 5 * c)) for c in range(3)], axis=-1)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)  # BGR, HWC
    np.save(workdir / "image_bgr.npy", image)
    for name, config in CONFIGS.items():
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(detectron2_root, "configs", config))
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = POST_NMS_TOPK_TEST
        model = build_model(cfg).eval()
        randomise(model, seed)
        state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        # Older model-zoo files also carry the input normalisation and the anchors.
        state["pixel_mean"] = model.pixel_mean.numpy().copy()
        state["pixel_std"] = model.pixel_std.numpy().copy()
        for i, cell in enumerate(model.proposal_generator.anchor_generator.cell_anchors):
            state[f"proposal_generator.anchor_generator.cell_anchors.{i}"] = cell.numpy().copy()
        with open(workdir / f"{name}.pkl", "wb") as f:
            pickle.dump({"model": state, "__author__": "pydet compare_detectron2 (random weights)"}, f)

        stages = {}
        inputs = [{"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "height": h, "width": w}]
        with torch.no_grad():
            images = model.preprocess_image(inputs)
            features = model.backbone(images.tensor)
            for key, value in features.items():
                stages[f"features.{key}"] = value
            proposals, _ = model.proposal_generator(images, features, None)
            stages["proposals"] = proposals[0].proposal_boxes.tensor
            stages["proposal_logits"] = proposals[0].objectness_logits
            box_features = model.roi_heads.box_pooler([features[f] for f in model.roi_heads.box_in_features],
                                                      [p.proposal_boxes for p in proposals])
            logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(box_features))
            stages["class_logits"], stages["box_deltas"] = logits, deltas
            raw = model.inference(inputs, do_postprocess=False)[0]
            stages["pre_mask.boxes"] = raw.pred_boxes.tensor
            stages["pre_mask.scores"] = raw.scores
            stages["pre_mask.labels"] = raw.pred_classes
            if raw.has("pred_masks"):
                stages["mask_probs"] = raw.pred_masks[:, 0]
            final = detector_postprocess(raw, h, w)
            stages["boxes"], stages["scores"], stages["labels"] = (final.pred_boxes.tensor, final.scores,
                                                                   final.pred_classes)
            if final.has("pred_masks"):
                stages["masks"] = final.pred_masks
        torch.save(stages, workdir / f"{name}.stages.pt")
        print(f"{name}: {len(final)} detections, {len(proposals[0])} proposals", flush=True)


# ---------------------------------------------------------------- pydet side

def _max_abs(a, b) -> float | None:
    if a.shape != b.shape:
        return None
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _match_rows(a, b) -> dict:
    """Row counts; the largest difference when both have the same rows; and how many rows of ``a`` equal
    (within 1e-3) some row of ``b``, whatever the order."""
    import torch
    report = {"rows": [a.shape[0], b.shape[0]]}
    if a.shape == b.shape and a.numel():
        report["max_abs"] = float((a.double() - b.double()).abs().max())
    if len(a) and len(b):
        distance = torch.cdist(a.double().reshape(len(a), -1), b.double().reshape(len(b), -1), p=float("inf"))
        report["rows_matched_1e-3"] = int((distance.amin(1) < 1e-3).sum())
    return report


def compare_model(name: str, workdir: Path) -> dict:
    import numpy as np
    import torch
    import pydet.models
    from pydet.convert import from_detectron2

    ref = torch.load(workdir / f"{name}.stages.pt")
    model = pydet.models.build(name, num_classes=81, style="detectron2",
                               rpn_post_nms_top_n_test=POST_NMS_TOPK_TEST).eval()
    model.load_state_dict(from_detectron2(workdir / f"{name}.pkl"), strict=True)
    bgr = np.load(workdir / "image_bgr.npy")
    image = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
    report: dict = {}
    with torch.no_grad():
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        for key, value in zip(("p2", "p3", "p4", "p5", "p6"), features.values()):
            scale = float(ref[f"features.{key}"].abs().max())
            report[f"features.{key}"] = {"max_abs": _max_abs(value, ref[f"features.{key}"]), "ref_max": scale}
        # The later stages are fed detectron2's own inputs, so that each comparison measures one stage.
        ref_features = {k: ref[f"features.{p}"] for k, p in zip(features, ("p2", "p3", "p4", "p5", "p6"))}
        proposals, _ = model.rpn(batch, ref_features)
        report["proposals"] = _match_rows(proposals[0], ref["proposals"])
        sides = (ref["proposals"][:, 2:] - ref["proposals"][:, :2]).prod(1).sqrt()
        report["proposal_sqrt_area_quantiles"] = [round(float(q), 1) for q in
                                                  sides.quantile(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))]
        logits, deltas = model.roi_heads.box_forward(ref_features, [ref["proposals"]], batch.image_sizes)
        background_last = torch.cat([logits[:, 1:], logits[:, :1]], 1)
        report["class_logits"] = {"max_abs": _max_abs(background_last, ref["class_logits"])}
        report["box_deltas"] = {"max_abs": _max_abs(deltas[:, 4:], ref["box_deltas"])}
        pre = model.roi_heads.postprocess_detections(logits, deltas, [ref["proposals"]], batch.image_sizes)[0]
        report["pre_mask.boxes"] = _match_rows(pre["boxes"], ref["pre_mask.boxes"])
        report["pre_mask.scores"] = {"max_abs": _max_abs(pre["scores"], ref["pre_mask.scores"])}
        report["pre_mask.labels_equal"] = bool(torch.equal(pre["labels"] - 1, ref["pre_mask.labels"]))
        if "mask_probs" in ref:
            ref_labels = ref["pre_mask.labels"] + 1
            mask_logits = model.roi_heads.mask_logits(ref_features, [ref["pre_mask.boxes"]], batch.image_sizes)
            probs = mask_logits[torch.arange(len(ref_labels)), ref_labels].sigmoid()
            report["mask_probs"] = {"max_abs": _max_abs(probs, ref["mask_probs"])}
        start = time.perf_counter()
        out = model([image])[0]  # end to end, from pydet's own features
        report["end_to_end_s"] = round(time.perf_counter() - start, 2)
    report["detections"] = [int(out["boxes"].shape[0]), int(ref["boxes"].shape[0])]
    report["boxes"] = _match_rows(out["boxes"], ref["boxes"])
    if out["boxes"].shape == ref["boxes"].shape:
        report["scores"] = {"max_abs": _max_abs(out["scores"], ref["scores"])}
        report["labels_equal"] = bool(torch.equal(out["labels"] - 1, ref["labels"]))
        if "masks" in ref:
            masks = out["masks"][:, 0] >= 0.5
            differ = (masks != ref["masks"]).flatten(1).sum(1)
            report["masks"] = {"pixels_differing": int(differ.sum()), "pixels_set": int(ref["masks"].sum()),
                               "masks_differing": int((differ > 0).sum())}
    return report


# Each detectron2 setting set back to torchvision's value, one at a time: how many of detectron2's final
# detections pydet still gives shows what each setting is for.
TORCHVISION_VALUES = {
    "stride_in_1x1": False, "round_anchors": True, "anchor_strides": None, "roi_align_aligned": False,
    "roi_sampling_ratio": 2, "roi_level_rule": "torchvision", "rpn_strict_min_size": False,
    "rpn_nms_on_logits": False, "box_min_size": 1e-2, "clip_detections": False,
}


def ablation(name: str, workdir: Path) -> dict:
    import numpy as np
    import torch
    import pydet.models
    from pydet.convert import from_detectron2

    ref = torch.load(workdir / f"{name}.stages.pt")
    state = from_detectron2(workdir / f"{name}.pkl")
    bgr = np.load(workdir / "image_bgr.npy")
    image = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
    report = {}
    for setting, value in TORCHVISION_VALUES.items():
        model = pydet.models.build(name, num_classes=81, style="detectron2",
                                   rpn_post_nms_top_n_test=POST_NMS_TOPK_TEST, **{setting: value}).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            out = model([image])[0]
        report[f"{setting}={value}"] = _match_rows(torch.cat([out["boxes"], out["labels"][:, None] - 1.0], 1),
                                                   torch.cat([ref["boxes"], ref["labels"][:, None].float()], 1))
    return report


def compare_all(workdir: Path) -> dict:
    import torch
    report = {"image": list(IMAGE_SIZE), "torch": torch.__version__, "rpn_post_nms_top_n_test": POST_NMS_TOPK_TEST,
              **{name: compare_model(name, workdir) for name in CONFIGS}}
    report["faster_rcnn_resnet50_fpn"]["one_setting_set_to_torchvision"] = ablation("faster_rcnn_resnet50_fpn", workdir)
    return report


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectron2", default=os.environ.get("DETECTRON2_ROOT", "/work/official/detectron2"))
    parser.add_argument("--python", default=os.environ.get("DETECTRON2_PYTHON", "/opt/tvenv/bin/python"))
    parser.add_argument("--workdir", default="/tmp/pydet-compare-detectron2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    parser.add_argument("--reuse", action="store_true", help="compare with the detectron2 outputs already in "
                        "--workdir (from an earlier run with the same seed) instead of recomputing them")
    parser.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)  # the detectron2 side
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.dump:
        dump(workdir, args.detectron2, args.seed)
        return 0
    if not (Path(args.detectron2, "detectron2").is_dir() and Path(args.python).exists()):
        print(f"skipped: needs the detectron2 tree ({args.detectron2}) and a Python that imports it ({args.python})")
        return 0
    if not args.reuse:
        env = {**os.environ, "PYTHONPATH": args.detectron2}
        start = time.perf_counter()
        subprocess.run([args.python, os.path.abspath(__file__), "--dump", "--workdir", str(workdir),
                        "--detectron2", args.detectron2, "--seed", str(args.seed)], check=True, env=env,
                       cwd=tempfile_dir())
        print(f"detectron2 side: {time.perf_counter() - start:.0f} s", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pydet
    report = compare_all(workdir)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def tempfile_dir() -> str:
    """Run the detectron2 side outside the repository so that its ``import`` never sees pydet's tree."""
    import tempfile
    return tempfile.gettempdir()


if __name__ == "__main__":
    sys.exit(main())
