"""Second stage of Faster / Mask R-CNN (torchvision's ``RoIHeads``), batched over images.

Module and parameter names follow torchvision (``box_head.fc6``, ``box_predictor.cls_score``,
``mask_head.0.0``, ``mask_predictor.conv5_mask`` ...), so its checkpoints load unchanged. Inference
equals torchvision's ``postprocess_detections``: softmax, per-class decode (weights 10, 10, 5, 5), clip,
drop the background column, keep scores ``> score_thresh`` and boxes at least ``min_box_size`` (1e-2) wide
and high, class-aware NMS, best ``detections_per_img`` per image; the whole batch goes through one
``pydet.ops.batched_nms`` call (groups ``image * num_classes + class``). detectron2's
``fast_rcnn_inference`` is the same with ``min_box_size=0`` (it drops empty boxes only after rescaling,
``GeneralizedRCNNTransform(clip_output=True)``).

Training runs in one-purpose steps, as detectron2's ``StandardROIHeads``: :meth:`RoIHeads.sample_proposals`,
:meth:`RoIHeads.box_losses`, :meth:`RoIHeads.mask_loss`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .batching import clip_boxes_per_image, gather_rows, keep_first_per_image, pad_per_image
from .matcher import BalancedPositiveNegativeSampler, Matcher


class TwoMLPHead(nn.Module):
    """Flatten the pooled RoI features, then two fully connected layers with ReLU."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits (``num_classes`` including background) and per-class box deltas."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """3x3 conv + ReLU layers on the pooled mask features (keys ``0.0.weight`` ... like torchvision's
    Conv2dNormActivation blocks)."""

    def __init__(self, in_channels: int, layers: Sequence[int] = (256, 256, 256, 256), dilation: int = 1):
        blocks = []
        for channels in layers:
            conv = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
            in_channels = channels
        super().__init__(*blocks)


class MaskRCNNPredictor(nn.Sequential):
    """2x2 stride-2 transposed conv + ReLU, then a 1x1 conv to one mask logit map per class."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1)),
        ]))
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor,
                  sampled: Tensor, beta: float = 1 / 9) -> tuple[Tensor, Tensor]:
    """torchvision's Fast R-CNN loss over the RoIs where ``sampled`` is true (the others are padding):
    cross-entropy averaged over them, smooth-L1 (``beta`` 1/9; detectron2's 0 is L1) of the ground-truth
    class's deltas summed over positives and divided by the number sampled."""
    num_sampled = sampled.sum().clamp(min=1)
    labels = labels.clamp(min=0)
    classification = F.cross_entropy(class_logits, labels, reduction="none")
    classification = torch.where(sampled, classification, 0.0).sum() / num_sampled
    positive = (sampled & (labels > 0))[:, None]
    deltas = box_regression.view(labels.shape[0], -1, 4)
    deltas = deltas.gather(1, labels.view(-1, 1, 1).expand(-1, 1, 4))[:, 0]
    targets = torch.where(positive, regression_targets, 0.0)  # unmatched RoIs may encode to inf
    box_loss = torch.where(positive, F.smooth_l1_loss(deltas, targets, beta=beta, reduction="none"), 0.0)
    return classification, box_loss.sum() / num_sampled


def maskrcnn_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor) -> Tensor:
    """Per-pixel BCE-with-logits of the ground-truth class's mask against the ``[K, M, M]`` targets."""
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, mask_targets)


def project_masks_on_boxes(gt_masks: list[Tensor], boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Crop and resize ground-truth masks to ``[K, size, size]`` float targets with ``pydet.ops.roi_align``
    (torchvision's ``project_masks_on_boxes``: no threshold, sampling_ratio -1, aligned=False).

    ``gt_index`` indexes the concatenation of ``gt_masks``. Masks of different sizes are padded by edge
    replication, which reads exactly what roi_align reads at a mask's own border; only samples more than
    one pixel beyond a mask's bottom/right edge (ground-truth boxes leaving the image) see the edge value
    where torchvision's per-image call sees 0.
    """
    height = max(m.shape[-2] for m in gt_masks)
    width = max(m.shape[-1] for m in gt_masks)
    padded = [F.pad(m[:, None].to(boxes.dtype), (0, width - m.shape[-1], 0, height - m.shape[-2]), mode="replicate")
              for m in gt_masks if m.shape[0] > 0]
    rois = torch.cat([gt_index.to(boxes.dtype)[:, None], boxes], dim=1)
    return ops.roi_align(torch.cat(padded), rois, (size, size), 1.0)[:, 0]


class RoISamples(NamedTuple):
    """The RoIs sampled for the losses, in ``[B, S]`` slots per image (``S`` = the largest sample)."""
    boxes: Tensor     # [B, S, 4]
    sampled: Tensor   # [B, S] bool: false for padding slots
    labels: Tensor    # [B, S] class of the matched ground truth, 0 for background (and padding)
    matches: Tensor   # [B, S] index of the matched ground truth in its image (0 where unmatched)
    gt_boxes: Tensor  # [B, M, 4] ground-truth boxes, padded per image


class RoIHeads(nn.Module):
    """Box head (and optional mask head) on RoIAlign features of the proposals.

    Training appends the ground-truth boxes to the proposals, matches them (``fg_iou_thresh`` /
    ``bg_iou_thresh``), samples ``batch_size_per_image`` RoIs per image with ``positive_fraction``
    positives and returns ``loss_classifier``, ``loss_box_reg`` (and ``loss_mask``). Inference returns one
    dict per image with ``boxes``, ``scores``, ``labels`` (and ``masks`` ``[D, 1, M, M]`` probabilities of
    the predicted class, not yet pasted into the image).
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module, *,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights: Sequence[float] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 1e-2, smooth_l1_beta: float = 1 / 9, mask_roi_pool: nn.Module | None = None,
                 mask_head: nn.Module | None = None, mask_predictor: nn.Module | None = None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.bbox_reg_weights = tuple(float(w) for w in (bbox_reg_weights or (10.0, 10.0, 5.0, 5.0)))
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.min_box_size = float(min_box_size)
        self.smooth_l1_beta = float(smooth_l1_beta)
        mask_parts = (mask_roi_pool, mask_head, mask_predictor)
        if any(p is None for p in mask_parts) and any(p is not None for p in mask_parts):
            raise ValueError("mask_roi_pool, mask_head and mask_predictor must be given together")
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    @property
    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self.training_losses(features, proposals, image_sizes, targets)
        return self.detect(features, proposals, image_sizes), {}

    def box_forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]):
        pooled = self.box_roi_pool(features, boxes, image_sizes)
        return self.box_predictor(self.box_head(pooled))

    def mask_logits(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_sizes)))

    def training_losses(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                        targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        samples = self.sample_proposals(proposals, targets)
        losses = self.box_losses(features, samples, image_sizes)
        if self.has_mask:
            losses["loss_mask"] = self.mask_loss(features, samples, image_sizes, targets)
        return losses

    def sample_proposals(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> RoISamples:
        """Append the ground truth to the proposals, match, sample ``batch_size_per_image`` RoIs per image
        and gather them into fixed-size slots per image (padding slots have ``sampled`` false)."""
        num_images = len(proposals)
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        rois, roi_valid = pad_per_image([torch.cat([p, g]) for p, g in zip(proposals, gt_boxes)])
        gt, gt_valid = pad_per_image(gt_boxes)
        gt_labels, _ = pad_per_image([t["labels"] for t in targets])
        # IoU of every image's ground truth with every image's RoIs in one kernel call; the blocks on the
        # diagonal (image with itself) are the [B, M, P] quality matrices. The B^2 * M * P work is small at
        # the few images per device that detectors train with.
        quality = ops.box_iou(gt.reshape(-1, 4), rois.reshape(-1, 4))
        quality = quality.view(num_images, gt.shape[1], num_images, rois.shape[1]).diagonal(dim1=0, dim2=2)
        matches = self.matcher(quality.permute(2, 0, 1), gt_valid)
        labels = gather_rows(gt_labels, matches.clamp(min=0))
        labels = labels.masked_fill(matches == Matcher.BELOW_LOW_THRESHOLD, 0)
        labels = labels.masked_fill((matches == Matcher.BETWEEN_THRESHOLDS) | ~roi_valid, -1)
        positive, negative = self.sampler(labels)
        sampled = positive | negative
        slots = sampled.to(dtype).topk(min(self.sampler.batch_size_per_image, rois.shape[1]), dim=1).indices
        return RoISamples(boxes=gather_rows(rois, slots), sampled=sampled.gather(1, slots),
                          labels=labels.gather(1, slots).clamp(min=0), matches=matches.gather(1, slots).clamp(min=0),
                          gt_boxes=gt)

    def box_losses(self, features: dict[str, Tensor], samples: RoISamples,
                   image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` of the box head on the sampled RoIs."""
        regression_targets = ops.encode_boxes(gather_rows(samples.gt_boxes, samples.matches).reshape(-1, 4),
                                              samples.boxes.reshape(-1, 4), self.bbox_reg_weights)
        class_logits, box_regression = self.box_forward(features, list(samples.boxes.unbind(0)), image_sizes)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, samples.labels.reshape(-1),
                                                      regression_targets, samples.sampled.reshape(-1),
                                                      self.smooth_l1_beta)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def mask_loss(self, features: dict[str, Tensor], samples: RoISamples, image_sizes: list[tuple[int, int]],
                  targets: list[dict[str, Tensor]]) -> Tensor:
        """``loss_mask`` of the mask head on the positive sampled RoIs."""
        # The mask head is costly per RoI, so it runs on the positives only (their count is read back
        # once) rather than on fixed-size padded slots.
        image_idx, slot = (samples.sampled & (samples.labels > 0)).nonzero(as_tuple=True)
        counts = torch.bincount(image_idx, minlength=samples.boxes.shape[0]).tolist()
        mask_boxes = samples.boxes[image_idx, slot]
        logits = self.mask_logits(features, list(mask_boxes.split(counts)), image_sizes)
        gt_offset = torch.tensor([0] + [t["boxes"].shape[0] for t in targets], device=image_idx.device).cumsum(0)
        gt_index = gt_offset[image_idx] + samples.matches[image_idx, slot]
        if mask_boxes.shape[0] > 0:
            mask_targets = project_masks_on_boxes([t["masks"] for t in targets], mask_boxes, gt_index,
                                                  logits.shape[-1])
        else:
            mask_targets = logits.new_zeros((0,) + logits.shape[-2:])
        return maskrcnn_loss(logits, samples.labels[image_idx, slot], mask_targets)

    def detect(self, features: dict[str, Tensor], proposals: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        class_logits, box_regression = self.box_forward(features, proposals, image_sizes)
        detections = self.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
        if self.has_mask:
            boxes = [d["boxes"] for d in detections]
            labels = torch.cat([d["labels"] for d in detections])
            logits = self.mask_logits(features, boxes, image_sizes)
            probs = logits[torch.arange(labels.shape[0], device=labels.device), labels].sigmoid()[:, None]
            for d, p in zip(detections, probs.split([b.shape[0] for b in boxes])):
                d["masks"] = p
        return detections

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        num_images, num_classes = len(proposals), class_logits.shape[-1]
        device = class_logits.device
        counts = [p.shape[0] for p in proposals]
        image_of_roi = torch.repeat_interleave(torch.arange(num_images, device=device),
                                               torch.tensor(counts, device=device), output_size=sum(counts))
        boxes = ops.decode_boxes(box_regression, torch.cat(proposals), self.bbox_reg_weights)
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)[image_of_roi]
        boxes = clip_boxes_per_image(boxes.view(boxes.shape[0], num_classes, 4), sizes[:, None, :])[:, 1:]
        scores = F.softmax(class_logits, -1)[:, 1:]
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        candidate = (scores > self.score_thresh) & (widths >= self.min_box_size) & (heights >= self.min_box_size)
        roi, column = candidate.nonzero(as_tuple=True)
        boxes, scores, labels = boxes[roi, column], scores[roi, column], column + 1
        image_idx = image_of_roi[roi]
        keep = ops.batched_nms(boxes, scores, image_idx * num_classes + labels, self.nms_thresh)
        keep, per_image = keep_first_per_image(keep, image_idx[keep], self.detections_per_img, num_images)
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in
                zip(boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image))]
