"""Reference FCOS target assignment in float64: AdelaiDet's ``compute_targets_for_locations`` and
``get_sample_region`` written out with [L, M] tensors, plus explicit tie-breaking (smallest area,
then lowest index) and zero ``reg_targets`` / ``matched_gt = -1`` for unmatched points.

Deliberately not reproduced: AdelaiDet returns no positives at all when the first box's centre x is 0
(its "no gt" test sums that one coordinate), and gives unmatched points box 0's distances."""
import torch


def fcos_targets(points, strides, size_ranges, gt_boxes, gt_labels, num_classes, center_sampling_radius=1.5):
    p, s, r, b = points.double(), strides.double(), size_ranges.double(), gt_boxes.double()
    num_points = p.shape[0]
    labels = torch.full((num_points,), num_classes, dtype=torch.int64)
    reg = torch.zeros(num_points, 4, dtype=torch.float64)
    matched = torch.full((num_points,), -1, dtype=torch.int64)
    if b.shape[0] == 0:
        return labels, reg, matched
    xs, ys = p[:, 0:1], p[:, 1:2]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    distances = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)
    if center_sampling_radius > 0:
        center_x, center_y = (x0 + x1) * 0.5, (y0 + y1) * 0.5
        reach = (s * center_sampling_radius)[:, None]
        xmin, ymin, xmax, ymax = center_x - reach, center_y - reach, center_x + reach, center_y + reach
        region = torch.stack([torch.where(xmin > x0, xmin, x0), torch.where(ymin > y0, ymin, y0),
                              torch.where(xmax > x1, x1, xmax), torch.where(ymax > y1, y1, ymax)], dim=2)
        inside = torch.stack([xs - region[..., 0], ys - region[..., 1], region[..., 2] - xs,
                              region[..., 3] - ys], dim=2).min(dim=2).values > 0
    else:
        inside = distances.min(dim=2).values > 0
    largest = distances.max(dim=2).values
    cared = (largest >= r[:, 0:1]) & (largest <= r[:, 1:2])
    candidate = inside & cared
    area = (x1 - x0) * (y1 - y0)
    smallest = torch.where(candidate, area[None], torch.inf).amin(dim=1, keepdim=True)
    best = (candidate & (area[None] == smallest)).int().argmax(dim=1)  # argmax returns the first maximum
    found = candidate.any(dim=1)
    rows = torch.arange(num_points)
    labels = torch.where(found, gt_labels.long()[best], labels)
    reg = torch.where(found[:, None], distances[rows, best], reg)
    matched = torch.where(found, best, matched)
    return labels, reg, matched


def fcos_targets_batched(points, strides, size_ranges, gt_boxes, gt_labels, num_gt, num_classes,
                         center_sampling_radius=1.5):
    per_image = [fcos_targets(points, strides, size_ranges, gt_boxes[i, :n], gt_labels[i, :n], num_classes,
                              center_sampling_radius) for i, n in enumerate(num_gt.tolist())]
    return tuple(torch.stack(parts) for parts in zip(*per_image))
