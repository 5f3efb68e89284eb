"""Region Proposal Network (torchvision's ``RPNHead`` and ``RegionProposalNetwork``), batched over images.

Proposals equal torchvision's for the same weights: per-level top-k on objectness logits, decode
(weights 1, 1, 1, 1), clip, drop boxes smaller than ``min_size`` and scores below ``score_thresh``,
NMS per level, keep the best ``post_nms_top_n`` per image. Every image and level of the batch goes
through one ``pydet.ops.batched_nms`` call (groups ``image * levels + level``).

detectron2's ``find_top_rpn_proposals`` differs in two settings: it keeps boxes strictly larger than its
minimum size 0 (``min_size=0, strict_min_size=True``), and ranks them for NMS by their logits, which stay
distinct where float32 sigmoids of large logits tie at 1.0 (``nms_on_logits=True``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..structures import ImageList
from .anchor_generator import AnchorGenerator
from .batching import clip_boxes_per_image, gather_rows, keep_first_per_image, pad_per_image
from .matcher import BalancedPositiveNegativeSampler, Matcher


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas at every level."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        # Nested Sequentials keep torchvision's key names (conv.0.0.weight, its Conv2dNormActivation).
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_levels(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor, list[int]]:
    """Per-level ``[B, A, H, W]`` / ``[B, A*4, H, W]`` maps -> ``[B, N]`` logits and ``[B, N, 4]`` deltas,
    ordered level, y, x, anchor like the anchors; also the number of anchors per level."""
    flat_logits, flat_deltas, per_level = [], [], []
    for lg, dl in zip(logits, deltas):
        b, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
        # reshape, not view: the maps may be channels-last (GeneralizedRCNN's eval forward)
        flat_deltas.append(dl.reshape(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        per_level.append(a * h * w)
    return torch.cat(flat_logits, 1), torch.cat(flat_deltas, 1), per_level


class RegionProposalNetwork(nn.Module):
    """Proposals from anchors; in training also the objectness (BCE) and box (smooth-L1) losses on
    ``batch_size_per_image`` anchors sampled per image, matched with ``fg/bg_iou_thresh`` (with
    low-quality matches)."""

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n_train: int = 2000, pre_nms_top_n_test: int = 1000, post_nms_top_n_train: int = 2000,
                 post_nms_top_n_test: int = 1000, nms_thresh: float = 0.7, score_thresh: float = 0.0,
                 min_size: float = 1e-3, strict_min_size: bool = False, nms_on_logits: bool = False,
                 smooth_l1_beta: float = 1 / 9, normalize_by_batch_size: bool = False):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n_train, self.pre_nms_top_n_test = int(pre_nms_top_n_train), int(pre_nms_top_n_test)
        self.post_nms_top_n_train, self.post_nms_top_n_test = int(post_nms_top_n_train), int(post_nms_top_n_test)
        self.nms_thresh = float(nms_thresh)
        self.score_thresh = float(score_thresh)
        self.min_size = float(min_size)
        self.strict_min_size = bool(strict_min_size)
        self.nms_on_logits = bool(nms_on_logits)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.normalize_by_batch_size = bool(normalize_by_batch_size)

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Returns one ``[P_i, 4]`` proposal tensor per image (sorted by decreasing objectness) and the
        losses (empty unless training)."""
        feature_list = list(features.values())
        logits, deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)[0]  # shared by every image of the batch
        logits, deltas, per_level = flatten_levels(logits, deltas)
        proposals = self.filter_proposals(logits.detach(), deltas.detach(), anchors, images.image_sizes, per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses = self.compute_loss(logits, deltas, anchors, [t["boxes"] for t in targets])
        return proposals, losses

    def filter_proposals(self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: list[tuple[int, int]],
                         per_level: list[int]) -> list[Tensor]:
        num_images = logits.shape[0]
        pre_nms_top_n = self.pre_nms_top_n_train if self.training else self.pre_nms_top_n_test
        post_nms_top_n = self.post_nms_top_n_train if self.training else self.post_nms_top_n_test
        top_idx, level_of = [], []
        offset = 0
        for level, (level_logits, count) in enumerate(zip(logits.split(per_level, 1), per_level)):
            k = min(pre_nms_top_n, count)
            top_idx.append(level_logits.topk(k, dim=1).indices + offset)
            level_of.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            offset += count
        top_idx, level_of = torch.cat(top_idx, 1), torch.cat(level_of)
        top_logits = logits.gather(1, top_idx)
        scores = top_logits.sigmoid()
        # Only the top-k are decoded: decoding is per box, so this equals decoding all and selecting.
        boxes = ops.decode_boxes(gather_rows(deltas, top_idx).reshape(-1, 4), anchors[top_idx.reshape(-1)])
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)
        boxes = clip_boxes_per_image(boxes.view(num_images, -1, 4), sizes[:, None, :])
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        if self.strict_min_size:
            large = (widths > self.min_size) & (heights > self.min_size)
        else:
            large = (widths >= self.min_size) & (heights >= self.min_size)
        image_idx, column = (large & (scores >= self.score_thresh)).nonzero(as_tuple=True)
        boxes = boxes[image_idx, column]
        ranking = (top_logits if self.nms_on_logits else scores)[image_idx, column]
        groups = image_idx * len(per_level) + level_of[column]
        keep = ops.batched_nms(boxes, ranking, groups, self.nms_thresh)
        keep, counts = keep_first_per_image(keep, image_idx[keep], post_nms_top_n, num_images)
        return list(boxes[keep].split(counts))

    def compute_loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """torchvision's RPN losses: BCE mean over sampled anchors, smooth-L1 (``smooth_l1_beta``, 1/9)
        summed over positives and divided by the number sampled. detectron2 divides both sums by
        ``batch_size_per_image * images`` instead (``normalize_by_batch_size``) and uses beta 0 (L1). Sampled anchors are gathered into fixed-size slots
        (the per-image maxima) with a validity mask, so no count is read back from the device."""
        num_images, num_anchors = logits.shape
        gt, gt_valid = pad_per_image([b.to(anchors.dtype) for b in gt_boxes])
        quality = ops.box_iou(gt.reshape(-1, 4), anchors).view(num_images, gt.shape[1], num_anchors)
        matches = self.matcher(quality, gt_valid)
        labels = (matches >= 0).to(logits.dtype)
        labels = labels.masked_fill(matches == Matcher.BETWEEN_THRESHOLDS, -1.0)
        positive, negative = self.sampler(labels)
        sampled = positive | negative
        if self.normalize_by_batch_size:
            num_sampled = torch.tensor(float(self.sampler.batch_size_per_image * num_images), device=logits.device)
        else:
            num_sampled = sampled.sum().clamp(min=1)

        slots = sampled.to(logits.dtype).topk(min(self.sampler.batch_size_per_image, num_anchors), dim=1).indices
        objectness_loss = F.binary_cross_entropy_with_logits(logits.gather(1, slots), positive.gather(1, slots).to(logits.dtype),
                                                             reduction="none")
        objectness_loss = torch.where(sampled.gather(1, slots), objectness_loss, 0.0).sum() / num_sampled

        slots = positive.to(logits.dtype).topk(min(self.sampler.max_positives, num_anchors), dim=1).indices
        is_positive = positive.gather(1, slots)[..., None]
        matched = gather_rows(gt, matches.gather(1, slots).clamp(min=0))
        targets = ops.encode_boxes(matched.reshape(-1, 4), anchors[slots.reshape(-1)]).view(matched.shape)
        targets = torch.where(is_positive, targets, 0.0)  # unmatched slots may encode to inf
        box_loss = F.smooth_l1_loss(gather_rows(deltas, slots), targets, beta=self.smooth_l1_beta,
                                    reduction="none")
        box_loss = torch.where(is_positive, box_loss, 0.0).sum() / num_sampled
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}
