import pytest
import torch

from pydet.data import SyntheticShapes
from pydet.engine import LabelMap, evaluate
from pydet.engine.evaluate import STAT_NAMES


class Oracle(torch.nn.Module):
    """Returns the dataset's ground truth (labels shifted by ``offset``), or nothing."""

    def __init__(self, dataset, offset=0, empty=False):
        super().__init__()
        self.targets = {tuple(dataset[i][0][0, :2, :2].flatten().tolist()): dataset[i][1] for i in range(len(dataset))}
        self.offset, self.empty = offset, empty

    def forward(self, images, targets=None):
        out = []
        for image in images:
            t = self.targets[tuple(image[0, :2, :2].flatten().tolist())]
            n = 0 if self.empty else len(t["boxes"])
            out.append({"boxes": t["boxes"][:n], "scores": torch.ones(n), "labels": t["labels"][:n] + self.offset,
                        "masks": t["masks"][:n, None].float()})
        return out


@pytest.fixture(scope="module")
def dataset():
    return SyntheticShapes(6, 64, seed=11)


@pytest.mark.parametrize("offset", [0, 1])
def test_perfect_predictions_score_one(dataset, offset, capsys):
    metrics = evaluate(Oracle(dataset, offset), dataset, label_offset=offset, with_masks=True, progress=False)
    assert set(metrics) == {"bbox", "segm"} and set(metrics["bbox"]) == set(STAT_NAMES)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    assert metrics["bbox"]["AR100"] == pytest.approx(1.0)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out


def test_empty_predictions_score_zero(dataset):
    metrics = evaluate(Oracle(dataset, empty=True), dataset, with_masks=True, progress=False, print_table=False)
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0 and metrics["bbox"]["AR100"] == 0.0


def test_wrong_labels_score_zero_and_label_map_is_used(dataset):
    # the model's labels are 10, 11, 12 for the dataset's 0, 1, 2
    label_map = LabelMap(dataset.categories, [10, 11, 12])
    right = evaluate(Oracle(dataset, offset=10), dataset, label_map=label_map, progress=False, print_table=False)
    wrong = evaluate(Oracle(dataset, offset=0), dataset, label_map=label_map, progress=False, print_table=False)
    assert right["bbox"]["AP"] == pytest.approx(1.0) and wrong["bbox"]["AP"] == 0.0 and "segm" not in right
