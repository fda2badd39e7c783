import numpy as np
import pytest

from hazematching.data.tiling import TileGrid


@pytest.mark.parametrize("h,w", [(64, 64), (100, 37), (20, 20), (257, 130)])
def test_grid_covers_image(h, w):
    g = TileGrid.make(h, w, tile=32, overlap=8, divisor=4)
    cover = np.zeros(g.padded, int)
    for y, x in g.positions():
        cover[y:y + 32, x:x + 32] += 1
    assert (cover[:h, :w] >= 1).all()
    assert g.padded[0] % 4 == 0 and g.padded[0] >= max(h, 32)
    # neighbouring tiles overlap by at least the requested amount
    for starts in (g.ys, g.xs):
        assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))


def test_window_positive_and_flat_inside():
    w = TileGrid.make(64, 64, 32, 8).window()
    assert w.min() > 0 and w.max() == 1 and w[8:24, 8:24].min() == 1


def test_pad_mirrors():
    g = TileGrid.make(5, 6, tile=8, overlap=2)
    a = np.arange(30, dtype=float).reshape(5, 6)
    p = g.pad(a)
    assert p.shape == (8, 8)
    np.testing.assert_array_equal(p[:5, :6], a)
    np.testing.assert_array_equal(p[5, :6], a[4])


def test_tile_must_fit_divisor():
    with pytest.raises(ValueError, match="multiple of 16"):
        TileGrid.make(64, 64, tile=40, overlap=8, divisor=16)
