"""Detection on an image, a folder of images or a video: COCO-results JSON and annotated output.

Video is decoded as a stream and batched through the model, so memory does not grow with its length.
The model does its own preprocessing (resize or letterbox); frames go in as RGB in [0, 1].
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..data.video import (IMAGE_EXTENSIONS, InputError, VideoWriter, is_image_file, list_images, probe_video,
                          read_image, read_video, write_image)
from .evaluate import detections_to_coco
from .model_info import LabelMap

_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
                     (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195)], dtype=np.uint8)


def draw_detections(image: np.ndarray, detection: dict, label_map: LabelMap, mask_alpha: float = 0.45) -> np.ndarray:
    """``image`` (RGB uint8 ``[H, W, 3]``) with translucent masks, boxes and ``name score`` captions."""
    from PIL import Image, ImageDraw

    labels = label_map.to_dataset(detection["labels"])
    known = labels >= 0
    colours = _PALETTE[labels[known].numpy() % len(_PALETTE)]
    out = image.copy()
    if "masks" in detection:
        for mask, colour in zip(detection["masks"][known][:, 0].numpy() >= 0.5, colours):
            out[mask] = (out[mask] * (1 - mask_alpha) + colour * mask_alpha).astype(np.uint8)
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    boxes, scores = detection["boxes"][known].tolist(), detection["scores"][known].tolist()
    for box, score, name, colour in zip(boxes, scores, label_map.names(labels[known]), colours):
        colour = tuple(int(c) for c in colour)
        draw.rectangle(box, outline=colour, width=2)
        caption = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), caption)
        lift = bottom - top + 2 if top - (bottom - top + 2) >= 0 else 0  # above the box, or inside at the top
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=colour)
        draw.text((box[0] + 1, box[1] - lift), caption, fill=(0, 0, 0))
    return np.asarray(canvas)


@dataclass
class _Item:
    image_id: int
    name: str  # file stem for annotated images
    image: np.ndarray


def _images(paths: list[Path]) -> Iterator[_Item]:
    for index, path in enumerate(paths):
        try:
            yield _Item(index, path.stem, read_image(path))
        except InputError as exc:
            warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=2)


def _frames(path: Path) -> Iterator[_Item]:
    for frame in read_video(path):
        yield _Item(frame.index, f"frame_{frame.index:06d}", frame.image)


def open_source(source: str | os.PathLike) -> tuple[Iterator[_Item], int | None, float | None]:
    """``(items, count, fps)`` of an image, a folder of images or a video (``fps`` None for images).

    Raises :class:`InputError` now, before any model runs, if ``source`` cannot be read at all.
    """
    source = Path(source)
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise InputError(f"{source}: no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return _images(paths), len(paths), None
    if source.exists() and is_image_file(source):
        read_image(source)  # fail now, as one error, rather than as a skipped folder entry
        return _images([source]), 1, None
    info = probe_video(source)
    return _frames(source), info.num_frames, info.fps


@dataclass
class DetectStats:
    images: int
    detections: int
    seconds: float  # wall time of the whole loop: decoding, model, drawing and encoding
    model_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@torch.inference_mode()
def detect(model: nn.Module, source: str | os.PathLike, *, label_map: LabelMap, with_masks: bool = False,
           score_threshold: float = 0.5, batch_size: int = 4, device: str | torch.device = "cpu",
           out_json: str | os.PathLike | None = None, out_video: str | os.PathLike | None = None,
           out_dir: str | os.PathLike | None = None, progress: bool = True) -> DetectStats:
    """Run ``model`` over ``source`` (an image, a folder of images or a video) and write the outputs.

    ``out_json``: COCO results, one record per detection with ``image_id`` the image's position in the
    sorted folder or the frame number. ``out_video`` (video sources): the annotated video at the
    source's frame rate. ``out_dir``: annotated images (PNG), one per image or frame.
    """
    from tqdm import tqdm

    items, total, fps = open_source(source)
    if out_video is not None and fps is None:
        raise InputError(f"{source}: --out-video needs a video input; use --out-dir for images")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)

    device = torch.device(device)
    model.to(device).eval()
    writer = VideoWriter(out_video, fps=fps) if out_video is not None else None
    records: list[dict] = []
    count, model_seconds = 0, 0.0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="detect", unit="frame" if fps else "image", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)

    def run(batch: list[_Item]) -> None:
        nonlocal count, model_seconds
        tensors = [torch.from_numpy(item.image).to(device).permute(2, 0, 1).float().div_(255) for item in batch]
        t0 = time.perf_counter()
        outputs = model(tensors)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - t0
        for item, output in zip(batch, outputs):
            output = {k: v.cpu() for k, v in output.items()}
            keep = output["scores"] >= score_threshold
            output = {k: v[keep] for k, v in output.items()}
            records.extend(detections_to_coco(output, item.image_id, label_map, with_masks))
            if writer is not None or out_dir is not None:
                annotated = draw_detections(item.image, output, label_map)
                if writer is not None:
                    writer.write(annotated)
                if out_dir is not None:
                    write_image(Path(out_dir) / f"{item.name}.png", annotated)
        count += len(batch)
        bar.update(len(batch))

    try:
        batch: list[_Item] = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if out_json is not None:
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump(records, f)
    return DetectStats(count, len(records), time.perf_counter() - start, model_seconds)
