"""SyntheticShapes: a procedurally generated detection and instance-segmentation dataset.

Each image shows a few filled shapes on a textured, noisy background. The class is the shape type
(rectangle, ellipse, triangle, cross, ring), the colour is random, so a detector has to learn shape,
not colour. Everything is drawn from ``numpy.random.default_rng((seed, index))``: item ``i`` is the
same whatever the order of access, the process or the machine. Boxes are the tight boxes of the
instance masks (``x2 = last column + 1``), so masks and boxes always agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "ring")


@dataclass
class Shape:
    kind: int  # index into SHAPES, the class label
    box: np.ndarray  # float xyxy of the shape's frame (the drawn mask may be a little smaller)
    colour: np.ndarray  # RGB in [0, 1]
    apex: float = 0.5  # triangles: horizontal position of the apex in the frame, 0..1
    upside_down: bool = False  # triangles: apex at the bottom


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise ValueError(f"image_size must be at least 16x16, got {h}x{w}")
    return h, w


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float ``[H, W, 3]`` background: a base colour, smooth blotches and faint stripes."""
    base = rng.uniform(0.2, 0.8, 3)
    grid = rng.integers(3, 9, size=2)
    coarse = torch.from_numpy(rng.normal(0.0, 0.1, (1, 3, int(grid[0]), int(grid[1]))).astype(np.float32))
    blotches = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 0.04 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    return (base[None, None, :] + blotches.permute(1, 2, 0).numpy() + stripes[..., None]).astype(np.float32)


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """Boolean ``[H, W]`` mask of ``shape``, sampled at pixel centres."""
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = (float(v) for v in shape.box)
    c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    if c1 <= c0 or r1 <= r0:
        return mask
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    u, v = (xs - x1) / (x2 - x1), (ys - y1) / (y2 - y1)  # position inside the frame, 0..1
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    name = SHAPES[shape.kind]
    r2 = (u - 0.5) ** 2 + (v - 0.5) ** 2
    if name == "ellipse":
        inside &= r2 <= 0.25
    elif name == "triangle":
        v = 1 - v if shape.upside_down else v
        left = shape.apex * (1 - v)
        inside &= (u >= left) & (u <= left + v)
    elif name == "cross":
        inside &= (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
    elif name == "ring":
        inside &= (r2 <= 0.25) & (r2 >= 0.3 ** 2)
    mask[r0:r1, c0:c1] = inside
    return mask


def random_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A colour that stands out from the background (distance > 0.45 in RGB)."""
    for _ in range(50):
        colour = rng.uniform(0, 1, 3)
        if np.linalg.norm(colour - background_mean) > 0.45:
            return colour
    return 1.0 - background_mean.clip(0, 1)


def random_shapes(rng: np.random.Generator, height: int, width: int, num_classes: int, max_objects: int,
                  size_range: tuple[float, float], background_mean: np.ndarray, min_objects: int = 1) -> list[Shape]:
    """``min_objects..max_objects`` shapes (fewer if they do not fit) whose frames do not overlap (2-pixel gap)."""
    wanted = int(rng.integers(min_objects, max_objects + 1))
    shapes: list[Shape] = []
    for _ in range(20 * wanted):
        if len(shapes) == wanted:
            break
        side = min(height, width) * rng.uniform(*size_range)
        aspect = np.exp(rng.uniform(-0.4, 0.4))
        bw, bh = min(side * np.sqrt(aspect), width - 1.0), min(side / np.sqrt(aspect), height - 1.0)
        x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
        box = np.array([x1, y1, x1 + bw, y1 + bh])
        kind = int(rng.integers(num_classes))
        colour = random_colour(rng, background_mean)
        apex, upside_down = float(rng.uniform(0, 1)), bool(rng.integers(2))
        if any(box[0] < s.box[2] + 2 and s.box[0] < box[2] + 2 and box[1] < s.box[3] + 2 and s.box[1] < box[3] + 2
               for s in shapes):
            continue
        shapes.append(Shape(kind, box, colour, apex, upside_down))
    return shapes


def render(background: np.ndarray, shapes: Sequence[Shape], rng: np.random.Generator, *, noise: float = 0.04,
           min_visible: float = 0.3):
    """Paint ``shapes`` in order over ``background`` and add pixel noise.

    Returns the RGB image ``float32 [H, W, 3]`` in [0, 1] and, for every shape still at least
    ``min_visible`` visible after occlusion by later ones, its tight box, label and mask.
    """
    height, width = background.shape[:2]
    image = background.copy()
    full_masks = [shape_mask(s, height, width) for s in shapes]
    shading = 1.0 + 0.15 * np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    for shape, mask in zip(shapes, full_masks):
        image = np.where(mask[..., None], shape.colour[None, None, :] * shading, image)
    image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    boxes, labels, masks = [], [], []
    covered = np.zeros((height, width), dtype=bool)
    for shape, mask in reversed(list(zip(shapes, full_masks))):
        visible = mask & ~covered
        covered |= mask
        area = int(visible.sum())
        if area < 4 or area < min_visible * max(int(mask.sum()), 1):
            continue
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        labels.append(shape.kind)
        masks.append(visible)
    boxes, labels, masks = boxes[::-1], labels[::-1], masks[::-1]
    return (np.clip(image, 0, 1).astype(np.float32),
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
            np.stack(masks).astype(np.uint8) if masks else np.zeros((0, height, width), dtype=np.uint8))


class SyntheticShapes(Dataset):
    """``num_images`` images of ``image_size`` (int or ``(H, W)``) with 1..``max_objects`` shapes.

    Items are ``(image float [3, H, W] in [0, 1], target)``, ``target`` holding ``boxes`` float
    ``[M, 4]`` xyxy, ``labels`` int64 ``[M]`` in ``0..num_classes-1`` (the model's own label offset is
    added by :mod:`pydet.engine`), ``masks`` uint8 ``[M, H, W]`` and ``image_id``. ``transforms`` is
    called as ``transforms(image, target)``. Object sizes are a fraction ``object_size`` of the short side.
    """

    def __init__(self, num_images: int = 256, image_size: int | Sequence[int] = 128, num_classes: int = 3,
                 max_objects: int = 4, object_size: tuple[float, float] = (0.18, 0.45), seed: int = 0,
                 transforms: Callable | None = None):
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
        if num_images < 1 or max_objects < 1:
            raise ValueError("num_images and max_objects must be positive")
        if not 0 < object_size[0] <= object_size[1] <= 1:
            raise ValueError(f"object_size must be 0 < low <= high <= 1, got {object_size}")
        self.num_images = int(num_images)
        self.image_size = _pair(image_size)
        self.num_classes = int(num_classes)
        self.max_objects = int(max_objects)
        self.object_size = (float(object_size[0]), float(object_size[1]))
        self.seed = int(seed)
        self.transforms = transforms

    @property
    def categories(self) -> list[dict]:
        """COCO-style categories; category id = label + 1."""
        return [{"id": i + 1, "name": SHAPES[i]} for i in range(self.num_classes)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        rng = np.random.default_rng((self.seed, index))
        h, w = self.image_size
        background = random_background(rng, h, w)
        shapes = random_shapes(rng, h, w, self.num_classes, self.max_objects, self.object_size,
                               background.mean(axis=(0, 1)))
        image, boxes, labels, masks = render(background, shapes, rng)
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                  "masks": torch.from_numpy(masks), "image_id": index}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def write_synthetic_video(path: str | os.PathLike, num_frames: int = 60, image_size: int | Sequence[int] = (240, 320),
                          fps: float = 15.0, num_classes: int = 3, num_objects: int = 4,
                          object_size: tuple[float, float] = (0.18, 0.4), seed: int = 0, codec: str | None = None,
                          return_targets: bool = False) -> list[dict] | None:
    """Write a clip of shapes gliding and bouncing over a textured background (PyAV).

    ``return_targets``: also return each frame's ground truth (frame ``k`` is list item ``k``), as
    :class:`SyntheticShapes` targets (``boxes``, ``labels`` in ``0..num_classes-1``, ``masks``, ``image_id``
    the frame number); they are kept in memory, so only for short clips.
    """
    from .video import VideoWriter

    h, w = _pair(image_size)
    rng = np.random.default_rng((seed, 2**31))
    background = random_background(rng, h, w)
    shapes = random_shapes(rng, h, w, num_classes, num_objects, object_size, background.mean(axis=(0, 1)),
                           min_objects=num_objects)
    speed = min(h, w) / 60
    velocities = [rng.uniform(-speed, speed, 2) for _ in shapes]
    targets = []
    with VideoWriter(path, fps=fps, codec=codec) as writer:
        for index in range(num_frames):
            image, boxes, labels, masks = render(background, shapes, rng)
            writer.write((image * 255 + 0.5).astype(np.uint8))
            if return_targets:
                targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                                "masks": torch.from_numpy(masks), "image_id": index})
            for shape, velocity in zip(shapes, velocities):
                shape.box = shape.box + np.tile(velocity, 2)
                for axis, limit in ((0, w), (1, h)):
                    if shape.box[axis] < 0 or shape.box[axis + 2] > limit:
                        velocity[axis] = -velocity[axis]
                        shift = -shape.box[axis] if shape.box[axis] < 0 else limit - shape.box[axis + 2]
                        shape.box[[axis, axis + 2]] += shift
    return targets if return_targets else None
