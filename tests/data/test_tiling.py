import numpy as np
import pytest

from hazematching.data.tiling import TileGrid


@pytest.mark.parametrize("h,w", [(64, 64), (100, 37), (20, 20), (257, 130)])
def test_grid_covers_image(h, w):
    g = TileGrid.make(h, w, tile=32, overlap=8, divisor=4)
    cover = np.zeros(g.padded, int)
    for y, x in g.positions():
        cover[y:y + g.tile_h, x:x + g.tile_w] += 1
    assert (cover >= 1).all()
    assert g.padded == (-(-h // 4) * 4, -(-w // 4) * 4)
    assert g.tile_h <= 32 and g.tile_w <= 32 and g.tile_h % 4 == 0 and g.tile_w % 4 == 0
    # neighbouring tiles overlap by at least the requested amount
    for starts, side, length in ((g.ys, g.tile_h, g.padded[0]), (g.xs, g.tile_w, g.padded[1])):
        assert starts[0] == 0 and starts[-1] + side == length
        assert all(b - a <= side - 8 for a, b in zip(starts, starts[1:]))


def test_small_planes_get_one_tile_of_their_own_size():
    g = TileGrid.make(20, 52, tile=256, overlap=32, divisor=8)
    assert (g.tile_h, g.tile_w, g.ys, g.xs) == (24, 56, (0,), (0,))


def test_tiles_shrink_to_spread_evenly():
    # 5 tiles of at most 256 px with >= 32 px overlap cover 1024 px; 240 px each suffice, so
    # no compute is spent on one tile overlapping its neighbour by 224 px.
    g = TileGrid.make(1024, 1024, tile=256, overlap=32, divisor=16)
    assert g.tile_h == 240 and len(g.ys) == 5
    steps = np.diff(g.ys)
    assert steps.max() - steps.min() <= 1 and g.tile_h - steps.max() >= 32
    assert g.tile_pixels < 1.41 * 1024 * 1024


def test_window_positive_and_flat_inside():
    g = TileGrid.make(64, 64, 32, 8)
    w = g.window()
    assert w.shape == (g.tile_h, g.tile_w)
    assert w.min() > 0 and w.max() == 1 and w[8:-8, 8:-8].min() == 1 and w[7, 7] < 1


def test_pad_mirrors():
    g = TileGrid.make(5, 6, tile=8, overlap=2, divisor=4)
    a = np.arange(30, dtype=float).reshape(5, 6)
    p = g.pad(a)
    assert p.shape == (8, 8) == g.padded
    np.testing.assert_array_equal(p[:5, :6], a)
    np.testing.assert_array_equal(p[5, :6], a[4])


def test_tile_must_fit_divisor():
    with pytest.raises(ValueError, match="multiple of 16"):
        TileGrid.make(64, 64, tile=40, overlap=8, divisor=16)
