import pytest
import torch

from pydet.data import SyntheticShapes
from pydet.engine import evaluate


class RescoredOracle(torch.nn.Module):
    """Each ground-truth object twice: once with its true mask, box score 0.5 and mask score 0.9, once with an
    empty mask, box score 0.9 and mask score 0.1 (as a MaskIoU head would rescore a bad mask)."""

    def __init__(self, dataset, with_mask_scores):
        super().__init__()
        self.targets = {tuple(dataset[i][0][0, :2, :2].flatten().tolist()): dataset[i][1] for i in range(len(dataset))}
        self.with_mask_scores = with_mask_scores

    def forward(self, images, targets=None):
        out = []
        for image in images:
            t = self.targets[tuple(image[0, :2, :2].flatten().tolist())]
            n = len(t["boxes"])
            masks = t["masks"][:, None].float()
            det = {"boxes": t["boxes"].repeat(2, 1), "labels": t["labels"].repeat(2),
                   "scores": torch.cat([torch.full((n,), 0.5), torch.full((n,), 0.9)]),
                   "masks": torch.cat([masks, torch.zeros_like(masks)])}
            if self.with_mask_scores:
                det["mask_scores"] = torch.cat([torch.full((n,), 0.9), torch.full((n,), 0.1)])
            out.append(det)
        return out


def test_segm_ranks_by_mask_scores_and_bbox_by_scores():
    dataset = SyntheticShapes(4, 64, seed=3)
    rescored = evaluate(RescoredOracle(dataset, True), dataset, with_masks=True, progress=False, print_table=False)
    plain = evaluate(RescoredOracle(dataset, False), dataset, with_masks=True, progress=False, print_table=False)
    assert rescored["segm"]["AP"] == pytest.approx(1.0)
    assert plain["segm"]["AP"] < 0.9
    assert rescored["bbox"]["AP"] == pytest.approx(1.0) and plain["bbox"]["AP"] == pytest.approx(1.0)
