"""`make demo` until the models land: a short tour of pydet's kernels on random boxes."""
import time

import torch

import pydet
from pydet import ops


def main() -> None:
    torch.manual_seed(0)
    xy = torch.rand(5000, 2) * 800
    boxes = torch.cat([xy, xy + torch.rand(5000, 2) * 200 + 1], dim=1)
    cells = [ops.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in (32, 64, 128, 256, 512)]
    t = time.perf_counter()
    anchors = ops.grid_anchors([(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)],
                               [4, 8, 16, 32, 64], cells)
    print(f"grid_anchors: {sum(a.shape[0] for a in anchors):,} anchors in {1e3 * (time.perf_counter() - t):.2f} ms")
    t = time.perf_counter()
    iou = ops.box_iou(boxes[:1000], boxes)
    print(f"box_iou: 1000 x 5000 in {1e3 * (time.perf_counter() - t):.2f} ms, max off-diagonal "
          f"{iou.fill_diagonal_(0).max():.3f}")
    codes = ops.encode_boxes(boxes, boxes.roll(1, 0), (10, 10, 5, 5))
    back = ops.decode_boxes(codes, boxes.roll(1, 0), (10, 10, 5, 5), scale_clamp=float("inf"))
    print(f"encode/decode round trip: max error {(back - boxes).abs().max():.2e} px")
    print(f"pydet {pydet.__version__} on torch {torch.__version__}")


if __name__ == "__main__":
    main()
