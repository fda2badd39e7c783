"""Tests for hazematching.nets.rrdb."""

import pytest
import torch

from hazematching.nets import RRDBNet
from hazematching.nets.rrdb import RESIDUAL_SCALE, RRDB, ResidualDenseBlock


@pytest.mark.parametrize("shape", [(16, 16), (11, 19)])
def test_keeps_the_image_size(shape) -> None:
    net = RRDBNet(2, 1, n_feats=8, n_blocks=2, growth=4)
    assert net(torch.randn(2, 2, *shape)).shape == (2, 1, *shape)


def test_dense_block_sees_all_previous_features() -> None:
    block = ResidualDenseBlock(8, 4)
    assert [c.in_channels for c in block.convs] == [8, 12, 16, 20, 24]
    assert [c.out_channels for c in block.convs] == [4, 4, 4, 4, 8]


def test_small_initialisation() -> None:
    # Dense blocks start near the identity, so an RRDB starts near x + β·x.
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        assert (ResidualDenseBlock(16, 8)(x) - x).norm() / x.norm() < 0.05
        assert (RRDB(16, 8)(x) - (1 + RESIDUAL_SCALE) * x).norm() / x.norm() < 0.05


def test_bad_input_raises() -> None:
    net = RRDBNet(1, 1, n_feats=8, n_blocks=1, growth=4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        RRDBNet(1, 1, n_feats=8, n_blocks=0, growth=4)
