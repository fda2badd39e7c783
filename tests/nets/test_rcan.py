"""Tests for hazematching.nets.rcan."""

import pytest
import torch

from hazematching.nets import RCAN
from hazematching.nets.rcan import ChannelAttention

SMALL = {"n_groups": 2, "n_blocks": 2, "n_feats": 8, "reduction": 4}


@pytest.mark.parametrize("shape", [(16, 16), (13, 21)])
def test_keeps_the_image_size(shape) -> None:
    assert RCAN(3, 1, **SMALL)(torch.randn(2, 3, *shape)).shape == (2, 1, *shape)


def test_structure_matches_the_configuration() -> None:
    net = RCAN(1, 1, **SMALL)
    groups = [m for m in net.body if m.__class__.__name__ == "ResidualGroup"]
    assert len(groups) == 2 and all(len(g.body) == 2 + 1 for g in groups)
    # The squeezed attention layer has n_feats / reduction channels.
    assert groups[0].body[0].body[-1].gate[1].out_channels == 2


def test_channel_attention_only_rescales_channels() -> None:
    x = torch.rand(2, 8, 5, 5) + 0.1
    ratio = ChannelAttention(8, 4)(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio))


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="reduction 16 exceeds n_feats=8"):
        RCAN(1, 1, **{**SMALL, "reduction": 16})
    with pytest.raises(ValueError, match="positive"):
        RCAN(1, 1, **{**SMALL, "n_blocks": 0})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        RCAN(1, 1, **SMALL)(torch.randn(1, 2, 8, 8))
