"""Tests for hazematching.nets.unet."""

import pytest
import torch

from hazematching.config import NetworkConfig
from hazematching.nets import UNet
from hazematching.nets.unet import sinusoidal_embedding

TINY = NetworkConfig(model_channels=8, channel_mult=(1, 2, 2), attention_downsample=(2,))


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    # Zero-initialised layers would make the output trivially zero.
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net


def test_default_parameter_count_matches_paper() -> None:
    net = UNet(2, 1, NetworkConfig())
    assert sum(p.numel() for p in net.parameters()) == 3_704_097


@pytest.mark.parametrize("shape", [(8, 8), (16, 8), (4, 12), (24, 32)])
def test_output_shape(shape: tuple[int, int]) -> None:
    net = UNet(3, 2, TINY)
    x = torch.randn(2, 3, *shape)
    assert net(torch.rand(2), x).shape == (2, 2, *shape)


def test_default_network_accepts_non_square_multiples_of_16() -> None:
    net = UNet(2, 1, NetworkConfig())
    assert net(torch.tensor(0.5), torch.randn(1, 2, 16, 48)).shape == (1, 1, 16, 48)


@pytest.mark.parametrize("shape", [(6, 8), (8, 10)])
def test_bad_size_raises(shape: tuple[int, int]) -> None:
    net = UNet(1, 1, TINY)
    with pytest.raises(ValueError, match=r"not a multiple of 4"):
        net(torch.rand(1), torch.randn(1, 1, *shape))


def test_bad_channels_and_times_raise() -> None:
    net = UNet(2, 1, TINY)
    with pytest.raises(ValueError, match="shape"):
        net(torch.rand(1), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="batch of 2"):
        net(torch.rand(3), torch.randn(2, 2, 8, 8))


def test_unreachable_attention_factor_raises() -> None:
    cfg = NetworkConfig(model_channels=8, channel_mult=(1, 2), attention_downsample=(4,))
    with pytest.raises(ValueError, match="attention_downsample"):
        UNet(1, 1, cfg)


def test_time_forms_agree() -> None:
    net = _randomise(UNet(1, 1, TINY)).eval()
    x = torch.randn(2, 1, 8, 8)
    ref = net(torch.full((2,), 0.3), x)
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3]), torch.full((2, 1, 1, 1), 0.3)):
        torch.testing.assert_close(net(t, x), ref)


def test_time_changes_output() -> None:
    net = _randomise(UNet(1, 1, TINY)).eval()
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(torch.tensor([0.0]), x), net(torch.tensor([1.0]), x))


def test_sinusoidal_embedding_layout() -> None:
    # t is used unscaled, frequencies 10000**(-i/half), cosines first, odd widths zero-padded.
    emb = sinusoidal_embedding(torch.tensor([0.0, 0.5]), 5)
    assert emb.shape == (2, 5) and emb.dtype == torch.float32
    args = torch.tensor([0.5, 0.5 * 10000**-0.5], dtype=torch.float64)
    expected = torch.cat([args.cos(), args.sin(), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(emb[1], expected.float())


def test_gradients_reach_every_parameter() -> None:
    net = _randomise(UNet(2, 1, TINY))
    net(torch.rand(2), torch.randn(2, 2, 8, 8)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_fresh_network_outputs_zero() -> None:
    net = UNet(2, 1, TINY)
    assert not net(torch.rand(2), torch.randn(2, 2, 8, 8)).abs().max()


def test_forward_is_deterministic_and_batch_independent() -> None:
    net = _randomise(UNet(2, 1, TINY)).eval()
    x, t = torch.randn(3, 2, 8, 8), torch.rand(3)
    out = net(t, x)
    assert torch.equal(out, net(t, x))
    torch.testing.assert_close(net(t[1:2], x[1:2]), out[1:2], rtol=1e-5, atol=1e-6)


def test_channels_last_matches() -> None:
    net = _randomise(UNet(2, 1, TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.rand(2)
    ref = net(t, x)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(t, x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_and_bf16_weights() -> None:
    net = _randomise(UNet(2, 1, TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.rand(2)
    ref = net(t, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(t, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())
    out16 = net.to(torch.bfloat16)(t, x.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


def test_dropout_only_in_training() -> None:
    cfg = TINY.model_copy(update={"dropout": 0.5})
    net = _randomise(UNet(1, 1, cfg))
    x, t = torch.randn(1, 1, 8, 8), torch.rand(1)
    net.eval()
    assert torch.equal(net(t, x), net(t, x))
    net.train()
    assert not torch.equal(net(t, x), net(t, x))
