"""Tests for hazematching.nets.restormer."""

import pytest
import torch

from hazematching.nets import Restormer
from hazematching.nets.restormer import GatedFeedForward, TransposedAttention

SMALL = {"channels": 8, "blocks": (1, 1, 1), "heads": (1, 2, 4), "refinement_blocks": 1,
         "ffn_expansion": 2.0}


@pytest.mark.parametrize("shape", [(16, 16), (13, 21)])
def test_keeps_any_image_size(shape) -> None:
    assert Restormer(2, 1, **SMALL)(torch.randn(2, 2, *shape)).shape == (2, 1, *shape)


def test_output_is_a_residual_on_the_first_channel() -> None:
    net = Restormer(2, 1, **SMALL)
    torch.nn.init.zeros_(net.output.weight)
    x = torch.randn(1, 2, 12, 12)
    assert torch.equal(net(x), x[:, :1])


def test_attention_mixes_channels_not_pixels() -> None:
    # MDTA's attention map is C/h × C/h per head: with identity q/k/v projections and the value
    # of one channel scaled, every output channel is a convex mix of the input channels at the
    # same pixel, so a pixel-wise zero input stays zero at that pixel.
    attn = TransposedAttention(4, heads=2)
    with torch.no_grad():
        attn.qkv[0].weight.copy_(torch.cat([torch.eye(4)] * 3).view(12, 4, 1, 1))
        attn.qkv[1].weight.zero_()[:, :, 1, 1] = 1.0  # depth-wise identity
        attn.proj.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    x = torch.randn(1, 4, 6, 6)
    x[..., 2, 3] = 0
    out = attn(x)
    assert out.shape == x.shape and torch.equal(out[..., 2, 3], torch.zeros(1, 4))
    # Within a head the output is a mix of that head's channels only.
    assert torch.allclose(attn(torch.cat([x[:, :2], torch.zeros(1, 2, 6, 6)], 1))[:, 2:],
                          torch.zeros(1, 2, 6, 6))


def test_gated_feed_forward_is_closed_by_a_zero_gate() -> None:
    ffn = GatedFeedForward(4, 2.0)
    with torch.no_grad():
        ffn.inp[0].weight[8:].zero_()  # the gate branch (second half of the channels)
    assert torch.equal(ffn(torch.randn(1, 4, 5, 5)), torch.zeros(1, 4, 5, 5))


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="divisible by its heads"):
        Restormer(1, 1, **{**SMALL, "heads": (3, 2, 4)})
    with pytest.raises(ValueError, match="same length"):
        Restormer(1, 1, **{**SMALL, "heads": (1, 2)})


def test_default_size_is_the_papers() -> None:
    # Restormer: 26.13 M parameters (Zamir et al. 2022, Table 10).
    assert round(sum(p.numel() for p in Restormer(3, 3).parameters()) / 1e4) == 2613
