"""pydet.deploy.verify: the one "same detections" check of tests, benchmarks and ``pydet export``."""
import pytest
import torch

from pydet.deploy.verify import assert_same_detections, compare_outputs, outputs_from_detections


def _outputs():
    boxes = torch.tensor([[[0., 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50], [0, 0, 0, 0]]])
    scores = torch.tensor([[0.9, 0.50002, 0.5, 0.0]])
    labels = torch.tensor([[1, 2, 2, -1]])
    return boxes, scores, labels, torch.tensor([3])


def _changed(field, index, value):
    outputs = [t.clone() for t in _outputs()]
    outputs[field][index] = value
    return tuple(outputs)


def test_rounding_and_near_tie_swaps_are_the_same_detections():
    boxes, scores, labels, counts = _outputs()
    swapped = (boxes[:, [0, 2, 1, 3]] + 3e-3, scores[:, [0, 2, 1, 3]], labels[:, [0, 2, 1, 3]], counts)
    report = assert_same_detections(_outputs(), swapped)
    assert report["unpaired"] == 0 and report["boxes"] == pytest.approx(3e-3, abs=1e-5) and report["scores"] < 1e-4


@pytest.mark.parametrize("changed", [(2, (0, 1), 3), (1, (0, 0), 0.8998), (0, (0, 2, 3), 50.02), (3, 0, 2),
                                     (2, (0, 3), 0)], ids=["label", "score", "box", "count", "padding"])
def test_any_real_difference_fails(changed):
    with pytest.raises(AssertionError, match="not the same detections"):
        assert_same_detections(_outputs(), _changed(*changed))
    assert not compare_outputs(_outputs(), _changed(*changed))["same_detections"]


def test_masks_compared_when_given():
    outputs = _outputs() + (torch.zeros(1, 4, 2, 2),)
    other = outputs[:4] + (outputs[4].clone(),)
    other[4][0, 1, 0, 0] = 0.01
    assert compare_outputs(outputs, other)["masks"] == pytest.approx(0.01)
    with pytest.raises(AssertionError):
        assert_same_detections(outputs, other, mask_tol=1e-3)
    assert "masks" not in compare_outputs(outputs[:4], other)  # eager's pasted masks are not in its tuple


def test_eager_detections_become_the_sorted_padded_tuple():
    detections = [{"boxes": torch.tensor([[0., 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]]),
                   "scores": torch.tensor([0.2, 0.9, 0.5]), "labels": torch.tensor([1, 2, 3])},
                  {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    boxes, scores, labels, counts = outputs_from_detections(detections, rows=2)
    # the first two detections (as the deployment modules keep them), then sorted by score
    assert counts.tolist() == [2, 0] and labels.tolist() == [[2, 1], [-1, -1]]
    assert scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.2)], [0, 0]] and boxes[0, 0, 2] == 2
