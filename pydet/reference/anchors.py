"""Reference anchor and point grids, written the way torchvision's AnchorGenerator and FCOS build them."""
import torch


def grid_anchors(feature_sizes, strides, cell_anchors):
    out = []
    for (gh, gw), (sh, sw), base in zip(feature_sizes, strides, cell_anchors):
        shifts_x = torch.arange(0, gw, dtype=torch.int32) * sw
        shifts_y = torch.arange(0, gh, dtype=torch.int32) * sh
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return out


def grid_points(feature_sizes, strides, offsets):
    out = []
    for (gh, gw), (sh, sw), off in zip(feature_sizes, strides, offsets):
        ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64) * sh + off,
                                torch.arange(gw, dtype=torch.float64) * sw + off, indexing="ij")
        out.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))
    return out
