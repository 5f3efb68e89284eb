import pytest
import torch

from pydet import ops
from pydet.reference import anchors as ref

SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = (0.5, 1.0, 2.0)


def test_cell_anchors_round_like_torchvision():
    a = ops.cell_anchors((32, 64), (0.5, 1.0, 2.0))
    # ws = [sqrt(2)*32, sqrt(2)*64, 32, 64, 32/sqrt(2), 64/sqrt(2)] / 2, rounded half to even
    assert a.tolist()[0] == [-23.0, -11.0, 23.0, 11.0]
    assert a.shape == (6, 4) and a.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_anchors_match_reference(dtype, device):
    feature_sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
    strides = [(4, 4), (8, 8), (16, 16), (32, 32), (62, 64)]
    cells = [ops.cell_anchors(s, RATIOS, dtype=dtype) for s in SIZES]
    out = ops.grid_anchors(feature_sizes, strides, [c.to(device) for c in cells])
    expected = ref.grid_anchors(feature_sizes, strides, cells)
    for o, e in zip(out, expected):
        assert o.dtype == dtype and o.device.type == device.type
        torch.testing.assert_close(o.cpu(), e, rtol=0, atol=0)


def test_grid_anchors_empty_level_and_ints(device):
    cells = [ops.cell_anchors((16,), (1.0,)).to(device)] * 2
    out = ops.grid_anchors([0, (2, 3)], [8, (8, 4)], cells)
    assert out[0].shape == (0, 4) and out[1].shape == (6, 4)
    assert out[1][:, 0].tolist() == [-8.0, -4.0, 0.0, -8.0, -4.0, 0.0]


def test_grid_anchors_bad_arguments():
    cells = [ops.cell_anchors((16,), (1.0,))]
    with pytest.raises(ValueError, match="feature_sizes"):
        ops.grid_anchors([(2, 2), (1, 1)], [8], cells)
    with pytest.raises(ValueError, match="strides"):
        ops.grid_anchors([(2, 2)], [(8, 8, 8)], cells)
    with pytest.raises(ValueError, match="feature_sizes"):
        ops.grid_anchors([(-1, 2)], [8], cells)
    with pytest.raises(ValueError, match="cell_anchors"):
        ops.grid_anchors([(2, 2)], [8], [torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="sizes"):
        ops.cell_anchors((0,), (1.0,))


def test_grid_points(device):
    pts = ops.grid_points([(3, 4), (2, 2)], [8, 16], device=device)
    expected = ref.grid_points([(3, 4), (2, 2)], [(8, 8), (16, 16)], [4.0, 8.0])
    for p, e in zip(pts, expected):
        torch.testing.assert_close(p.cpu().double(), e)
    yolo = ops.grid_points([(2, 3)], [1], offset=0.0)[0]
    assert yolo.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]
    with pytest.raises(ValueError, match="offset"):
        ops.grid_points([(2, 3)], [1], offset=[0.0, 1.0])


def test_opcheck(device):
    cells = [ops.cell_anchors(s, RATIOS).to(device) for s in SIZES[:2]]
    torch.library.opcheck(torch.ops.pydet.grid_anchors, (cells, [4, 5, 2, 3], [8, 8, 16, 16]))
    torch.library.opcheck(torch.ops.pydet.grid_points, ([4, 5, 2, 3], [8, 8, 16, 16], [4.0, 8.0]),
                          {"dtype": torch.float32, "device": device})
