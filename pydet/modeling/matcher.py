"""Assigning predictions to ground truth and sampling training examples, batched over images.

Both work on padded batches: ``[B, M, N]`` quality matrices with a ``[B, M]`` mask of real ground-truth
rows, ``[B, N]`` label tensors where padding is marked ignored. Unbatched ``[M, N]`` / ``[N]`` inputs
work too. Used by the R-CNN family (RPN, box and mask heads) and CenterMask2's mask branch.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """torchvision's ``Matcher``: each prediction (column) gets the ground truth (row) it overlaps most.

    A match is kept when its quality is ``>= high_threshold``; below ``low_threshold`` it becomes
    ``BELOW_LOW_THRESHOLD`` (-1, background), in between ``BETWEEN_THRESHOLDS`` (-2, ignored). With
    ``allow_low_quality_matches`` every prediction that ties for a ground truth's best quality keeps
    its match whatever the thresholds say, so that each ground truth has at least one prediction.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor, valid: Tensor | None = None) -> Tensor:
        """``quality [..., M, N]`` (IoU-like, >= 0), ``valid [..., M]`` marks real rows; returns int64
        ``[..., N]`` with the matched row or -1 / -2. Predictions of an image without valid rows are -1."""
        if valid is not None:
            # Quality is never negative, so padding rows can never win a prediction.
            quality = quality.masked_fill(~valid[..., None], -1.0)
        if quality.shape[-2] == 0:
            return torch.full(quality.shape[:-2] + quality.shape[-1:], self.BELOW_LOW_THRESHOLD,
                              dtype=torch.int64, device=quality.device)
        best_quality, matches = quality.max(dim=-2)
        below = best_quality < self.low_threshold
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        filtered = torch.where(below, torch.full_like(matches, self.BELOW_LOW_THRESHOLD), matches)
        filtered = torch.where(between, torch.full_like(matches, self.BETWEEN_THRESHOLDS), filtered)
        if not self.allow_low_quality_matches:
            return filtered
        best_per_row = quality.max(dim=-1, keepdim=True).values
        is_best = quality == best_per_row
        if valid is not None:
            is_best &= valid[..., None]
        return torch.where(is_best.any(dim=-2), matches, filtered)


class BalancedPositiveNegativeSampler:
    """Per image, up to ``batch_size_per_image`` examples of which at most ``positive_fraction`` are
    positive, drawn uniformly at random; negatives fill the rest (torchvision's sampler).

    ``labels`` are ``>= 1`` for positives, ``0`` for negatives and ``-1`` for ignored entries.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    @property
    def max_positives(self) -> int:
        return int(self.batch_size_per_image * self.positive_fraction)

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``labels [..., N]`` -> boolean ``(positive, negative)`` masks of the sampled entries."""
        positive = labels >= 1
        negative = labels == 0
        num_positive = positive.sum(-1, keepdim=True)
        take_positive = num_positive.clamp(max=self.max_positives)
        take_negative = negative.sum(-1, keepdim=True).clamp(max=self.batch_size_per_image - take_positive)
        # One random ordering per image: positives first, then negatives, then ignored entries, each group
        # shuffled. Taking the first k of a group is a uniform draw without replacement, done for every
        # image at once without leaving the device.
        key = torch.rand(labels.shape, device=labels.device)
        key += (~positive).to(key.dtype) + (~positive & ~negative).to(key.dtype)
        order = key.argsort(dim=-1)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(labels.shape[-1], device=labels.device)
                                                .expand_as(order).contiguous())
        sampled_positive = positive & (rank < take_positive)
        sampled_negative = negative & (rank < num_positive + take_negative)
        return sampled_positive, sampled_negative
