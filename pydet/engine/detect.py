"""Detection on images, folders of images and videos: COCO-results JSON and annotated output, streamed.

Three stages overlap: a decoding thread fills a bounded queue with frames, the calling thread batches
them through the model, and a writing thread turns each batch's outputs into results (score filter,
masks to RLE, track ids, drawing, video encoding, JSON records) while the model runs on the next batch.
Every queue is bounded and records go to disk as they come, so memory does not grow with a video's
length. The model does its own preprocessing (resize or letterbox); frames go in as RGB in [0, 1].
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .. import ops
from ..data.video import (IMAGE_EXTENSIONS, InputError, VideoWriter, check_output_dir, check_output_path,
                          image_to_tensor, is_image_file, list_images, probe_video, read_image, read_video,
                          write_image)
from .evaluate import detections_to_coco, mask_rles
from .model_info import LabelMap

_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
                     (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195)], dtype=np.uint8)
# Where each model family keeps the score threshold of its own post-processing (YOLOv7, R-CNN, CenterMask2).
_SCORE_THRESHOLDS = ("box_score_thresh", "roi_heads.score_thresh", "fcos.score_thresh")
LIST_EXTENSIONS = (".txt", ".lst")


def _box_window(box: torch.Tensor, image_shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """The pixel rows and columns a box can cover (its integer bounds within the image), or None."""
    x0, y0, x1, y1 = box.tolist()
    if not all(np.isfinite((x0, y0, x1, y1))):
        return None
    height, width = image_shape
    top, bottom = min(max(int(np.floor(y0)), 0), height), min(max(int(np.ceil(y1)), 0), height)
    left, right = min(max(int(np.floor(x0)), 0), width), min(max(int(np.ceil(x1)), 0), width)
    if bottom <= top or right <= left:
        return None
    return slice(top, bottom), slice(left, right)


def _mask_windows(detection: dict, image_shape: tuple[int, int]) -> Iterator[tuple[np.ndarray, tuple] | None]:
    """Per detection, its binary mask within its box's window (``(bool [h, w], (rows, cols))``), or None.

    A pasted mask is zero outside its box, so drawing touches box-sized windows, not whole frames: 20
    masks on a 1024x1024 frame cost a millisecond instead of tens. Box-relative masks are pasted into the
    window with the box moved by the window's integer origin (for drawing only; RLE records come from
    ``paste_masks_rle`` on the whole frame).
    """
    full = detection.get("masks")
    for i, box in enumerate(detection["boxes"]):
        window = _box_window(box, image_shape)
        if window is None:
            yield None
            continue
        rows, cols = window
        if "mask_probs" in detection:
            origin = box.new_tensor([cols.start, rows.start, cols.start, rows.start])
            size = (rows.stop - rows.start, cols.stop - cols.start)
            mask = ops.paste_masks(detection["mask_probs"][i][None], (box - origin)[None], size, threshold=0.5)[0]
        else:
            mask = full[i, 0, rows, cols] >= 0.5
        yield mask.numpy(), window


def draw_detections(image: np.ndarray, detection: dict, label_map: LabelMap, mask_alpha: float = 0.45,
                    track_ids: torch.Tensor | None = None) -> np.ndarray:
    """``image`` (RGB uint8 ``[H, W, 3]``) with translucent masks, boxes and ``[#track] name score`` captions.

    ``detection`` holds only detections to draw, all of known classes.
    """
    from PIL import Image, ImageDraw

    labels = label_map.to_dataset(detection["labels"])
    colour_keys = track_ids if track_ids is not None else labels
    colours = _PALETTE[colour_keys.clamp(min=0).numpy() % len(_PALETTE)]
    out = image.copy()
    if "mask_probs" in detection or "masks" in detection:
        for masked, colour in zip(_mask_windows(detection, image.shape[:2]), colours):
            if masked is None:
                continue
            mask, window = masked
            region = out[window]
            region[mask] = (region[mask] * (1 - mask_alpha) + colour * mask_alpha).astype(np.uint8)
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    prefixes = [f"#{t} " if t >= 0 else "" for t in track_ids.tolist()] if track_ids is not None else [""] * len(labels)
    boxes, scores = detection["boxes"].tolist(), detection["scores"].tolist()
    for box, score, name, colour, prefix in zip(boxes, scores, label_map.names(labels), colours, prefixes):
        if not (np.isfinite(box).all() and box[0] <= box[2] and box[1] <= box[3]):
            continue  # a degenerate box has nothing to draw (and PIL refuses it)
        colour = tuple(int(c) for c in colour)
        draw.rectangle(box, outline=colour, width=2)
        caption = f"{prefix}{name} {score:.2f}"
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
    model_input: torch.Tensor | None = None  # float [3, H, W] in [0, 1], made on the decoding thread


def _with_model_inputs(items: Iterator[_Item]) -> Iterator[_Item]:
    for item in items:
        item.model_input = image_to_tensor(item.image)
        yield item


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


def is_video(source: str | os.PathLike) -> bool:
    source = Path(source)
    return not source.is_dir() and not is_image_file(source)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs named on the command line, with each text file (``.txt``, ``.lst``) replaced by the
    paths it lists, one per line (blank lines and ``#`` comments skipped, relative to the list's folder)."""
    out = []
    for entry in map(Path, inputs):
        if entry.suffix.lower() not in LIST_EXTENSIONS:
            out.append(entry)
            continue
        try:
            lines = entry.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{entry}: cannot read the input list ({exc})") from None
        listed = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not listed:
            raise InputError(f"{entry}: the input list names no file")
        out += [entry.parent / line for line in listed]
    return out


def output_names(inputs: list[Path]) -> list[str]:
    """One output name per input: its file stem, with ``-2``, ``-3`` ... for repeated stems."""
    names, seen = [], {}
    for path in inputs:
        stem = path.stem or "input"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _get_attr(model: nn.Module, dotted: str):
    for part in dotted.split("."):
        model = getattr(model, part, None)
    return model


def lower_score_threshold(model: nn.Module, threshold: float) -> tuple[str, float] | None:
    """Lower the model's own score threshold to ``threshold`` when it is higher (else the model would
    drop what ``--score-threshold`` asks to keep); returns ``(attribute, old value)`` to restore, or None."""
    for dotted in _SCORE_THRESHOLDS:
        current = _get_attr(model, dotted)
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            if threshold >= current:
                return None
            owner, _, attr = dotted.rpartition(".")
            setattr(_get_attr(model, owner) if owner else model, attr, type(current)(threshold))
            return dotted, current
    return None


def _restore(model: nn.Module, lowered: tuple[str, float] | None) -> None:
    if lowered is not None:
        owner, _, attr = lowered[0].rpartition(".")
        setattr(_get_attr(model, owner) if owner else model, attr, lowered[1])


class _JsonArray:
    """A JSON array written record by record: ``[`` at the start, ``]`` at :meth:`close` (also after an
    error, so an interrupted run leaves the valid results of the frames it finished)."""

    def __init__(self, path: Path):
        self._file = open(path, "w", encoding="utf-8")
        self._file.write("[")
        self._first = True

    def extend(self, records: list[dict]) -> None:
        for record in records:
            self._file.write("\n" if self._first else ",\n")
            json.dump(record, self._file)
            self._first = False

    def close(self) -> None:
        self._file.write("\n]\n" if not self._first else "]\n")
        self._file.close()


def prefetch(items: Iterator, depth: int) -> Iterator:
    """``items``, produced by a background thread at most ``depth`` ahead (decoding overlaps the model).

    An exception in the producer is raised here, in the consumer, at the point it occurred.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as exc:  # handed to the consumer
            buffer.put((done, exc))

    thread = threading.Thread(target=produce, name="pydet-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


class _Stage:
    """A thread applying ``fn`` to submitted work in order, with at most ``depth`` pieces waiting; its
    first exception is raised by the next :meth:`submit` or by :meth:`close`."""

    def __init__(self, fn: Callable, depth: int = 2):
        self._fn, self._error = fn, None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="pydet-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            if self._error is None:
                try:
                    self._fn(*work)
                except BaseException as exc:
                    self._error = exc

    def submit(self, *work) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(work)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class _Results:
    """Per frame: the kept detections, their masks as RLE, track ids, JSON records and drawings."""

    def __init__(self, label_map: LabelMap, with_masks: bool, score_threshold: float, *, out_json=None,
                 out_video=None, fps=None, out_dir=None, tracker=None):
        self.label_map, self.with_masks, self.score_threshold = label_map, with_masks, score_threshold
        self.tracker = tracker
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.json = _JsonArray(Path(out_json)) if out_json is not None else None
        try:
            self.video = VideoWriter(out_video, fps=fps, preset="ultrafast") if out_video is not None else None
        except BaseException:
            self.close()
            raise
        self.images = self.detections = 0

    def _kept(self, output: dict) -> dict:
        output = {k: v.cpu() for k, v in output.items()}
        keep = (output["scores"] >= self.score_threshold) & (self.label_map.to_dataset(output["labels"]) >= 0)
        return {k: v[keep] for k, v in output.items()}

    def _records(self, item: _Item, detection: dict, track_ids: torch.Tensor | None) -> list[dict]:
        records = detections_to_coco(detection, item.image_id, self.label_map, with_masks=False)
        if self.with_masks:
            image_shape = item.image.shape[:2]
            if "mask_probs" in detection:  # box-relative: pasted straight to RLE, no full-frame mask
                rles = ops.paste_masks_rle(detection["mask_probs"], detection["boxes"], image_shape, 0.5)
            else:
                rles = mask_rles(detection["masks"], detection["boxes"], image_shape)
            for record, rle in zip(records, rles):
                record["segmentation"] = rle
        if track_ids is not None:
            for record, track_id in zip(records, track_ids.tolist()):
                record["track_id"] = int(track_id)
        return records

    @torch.no_grad()  # runs in its own thread, outside the caller's inference mode
    def write_batch(self, items: list[_Item], outputs: list[dict]) -> None:
        for item, output in zip(items, outputs):
            detection = self._kept(output)
            track_ids = None
            if self.tracker is not None:
                track_ids = self.tracker.update(detection["boxes"], detection["scores"], detection["labels"])
            if self.json is not None:
                self.json.extend(self._records(item, detection, track_ids))
            if self.video is not None or self.out_dir is not None:
                annotated = draw_detections(item.image, detection, self.label_map, track_ids=track_ids)
                if self.video is not None:
                    self.video.write(annotated)
                if self.out_dir is not None:
                    write_image(self.out_dir / f"{item.name}.png", annotated)
            self.images += 1
            self.detections += len(detection["scores"])

    def close(self) -> None:
        for sink in (self.json, getattr(self, "video", None)):
            if sink is not None:
                sink.close()


@dataclass
class DetectStats:
    images: int
    detections: int
    seconds: float  # wall time of the whole run: decoding, model, post-processing, drawing and encoding
    model_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _set_box_relative_masks(model: nn.Module, value: bool) -> bool:
    """Switch a mask model to box-relative masks (RLE without full-frame masks); returns the old setting."""
    old = getattr(model, "box_relative_masks", None)
    if old is not None:
        model.box_relative_masks = value
    return bool(old)


def check_outputs(out_json=None, out_video=None, out_dir=None) -> None:
    """Refuse unusable output paths before any work starts (the parents of the files are made)."""
    if out_json is not None:
        check_output_path(out_json, "--out-json")
    if out_video is not None:
        check_output_path(out_video, "--out-video")
        VideoWriter(out_video).close()  # a suffix FFmpeg knows no container for fails now (nothing is written)
    if out_dir is not None:
        check_output_dir(out_dir, "--out-dir")


@torch.inference_mode()
def detect(model: nn.Module, source: str | os.PathLike, *, label_map: LabelMap, with_masks: bool = False,
           score_threshold: float = 0.5, batch_size: int = 4, device: str | torch.device = "cpu",
           out_json: str | os.PathLike | None = None, out_video: str | os.PathLike | None = None,
           out_dir: str | os.PathLike | None = None, tracker=None, progress: bool = True) -> DetectStats:
    """Run ``model`` over ``source`` (an image, a folder of images or a video) and write the outputs.

    ``out_json``: COCO results, one record per detection scoring at least ``score_threshold``, with
    ``image_id`` the image's position in the sorted folder or the frame number (a damaged frame is
    skipped with a warning; the others keep their numbers), ``segmentation`` as RLE for mask models and
    ``track_id`` with a ``tracker`` (e.g. :class:`pydet.tracking.ByteTracker`, updated once per frame).
    ``out_video`` (video sources): the annotated video at the source's frame rate. ``out_dir``:
    annotated images (PNG), one per image or frame. The model's own score threshold is lowered to
    ``score_threshold`` for the run when it is higher.
    """
    from tqdm import tqdm

    if not batch_size >= 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    items, total, fps = open_source(source)
    if out_video is not None and fps is None:
        raise InputError(f"{source}: --out-video needs a video input; use --out-dir for images")
    check_outputs(out_json, out_video, out_dir)
    device = torch.device(device)
    model.to(device).eval()
    lowered = lower_score_threshold(model, score_threshold)
    if lowered is not None:
        warnings.warn(f"--score-threshold {score_threshold:g} is below the model's own {lowered[1]:g}: "
                      f"lowered it for this run", RuntimeWarning, stacklevel=2)
    box_relative = _set_box_relative_masks(model, True)
    results = _Results(label_map, with_masks, score_threshold, out_json=out_json, out_video=out_video, fps=fps,
                       out_dir=out_dir, tracker=tracker)
    bar = tqdm(total=total, desc="detect", unit="frame" if fps else "image", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    start, model_seconds = time.perf_counter(), 0.0
    try:
        writer = _Stage(results.write_batch)
        try:
            for batch in _batches(prefetch(_with_model_inputs(items), depth=2 * batch_size), batch_size):
                tensors = [item.model_input.to(device) for item in batch]
                t0 = time.perf_counter()
                outputs = model(tensors)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                model_seconds += time.perf_counter() - t0
                writer.submit(batch, outputs)
                bar.update(len(batch))
        finally:
            writer.close()
    finally:
        bar.close()
        results.close()
        _restore(model, lowered)
        _set_box_relative_masks(model, box_relative)
    return DetectStats(results.images, results.detections, time.perf_counter() - start, model_seconds)


def write_manifest(rows: list[dict], out_dir: Path) -> Path | None:
    """Merge the per-input summaries (``index``, ``input``, output paths, counts) of every process into
    ``out_dir/manifest.json``, in the inputs' order; returns its path on the writing process.

    Under ``torch.distributed`` every process sends its rows to all (which also waits for all of them to
    finish) and rank 0 writes; other ranks return None.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        if dist.get_rank() != 0:
            return None
        rows = [row for part in gathered for row in part]
    rows = sorted(rows, key=lambda row: row["index"])
    manifest = {"inputs": rows, "images": sum(r["images"] for r in rows),
                "detections": sum(r["detections"] for r in rows)}
    path = Path(out_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path
