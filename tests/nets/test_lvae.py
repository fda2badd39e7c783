"""Tests for hazematching.nets.lvae."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hazematching.nets import LadderVAE
from hazematching.nets.lvae import gaussian_kl

SMALL = {"channels": 8, "z_channels": 4, "n_levels": 2, "blocks": 1}


def test_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    qm, qs, pm, ps = (torch.randn(3, 5, generator=g) for _ in range(4))
    expected = kl_divergence(Normal(qm, qs.exp()), Normal(pm, ps.exp()))
    torch.testing.assert_close(gaussian_kl(qm, qs, pm, ps), expected)
    assert torch.equal(gaussian_kl(qm, qs, qm, qs), torch.zeros(3, 5))


def test_training_pass_returns_mean_and_kl_per_image() -> None:
    net = LadderVAE(2, 1, **SMALL)
    mean, kl = net(torch.randn(3, 2, 16, 16), torch.randn(3, 1, 16, 16))
    assert mean.shape == (3, 1, 16, 16) and kl.shape == (3,) and (kl > 0).all()


def test_training_latents_come_from_the_posterior_given_the_target() -> None:
    net = LadderVAE(1, 1, **SMALL)
    y, x = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    outs = []
    for target in (x, x, -x):
        torch.manual_seed(0)
        outs.append(net(y, target))
    assert torch.equal(outs[0][0], outs[1][0])
    assert not torch.allclose(outs[0][0], outs[2][0]) and not torch.equal(outs[0][1], outs[2][1])


def test_samples_are_seeded_and_vary() -> None:
    net = LadderVAE(1, 1, **SMALL).eval()
    y = torch.randn(2, 1, 13, 21)
    with torch.no_grad():
        a, b, c = (net.sample(y, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert a.shape == (2, 1, 13, 21)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="positive"):
        LadderVAE(1, 1, **{**SMALL, "n_levels": 0})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        LadderVAE(1, 1, **SMALL).sample(torch.randn(1, 2, 8, 8))
