"""Tests for hazematching.nets.mimo_unet."""

import pytest
import torch

from hazematching.nets import MIMOUNet
from hazematching.nets.mimo_unet import image_pyramid

SMALL = {"channels": 8, "n_res_blocks": 1}


def test_outputs_every_scale() -> None:
    outs = MIMOUNet(2, 1, **SMALL).forward_scales(torch.randn(3, 2, 32, 24))
    assert [o.shape for o in outs] == [(3, 1, 32, 24), (3, 1, 16, 12), (3, 1, 8, 6)]


@pytest.mark.parametrize("shape", [(16, 16), (13, 21)])
def test_forward_keeps_any_image_size(shape) -> None:
    assert MIMOUNet(1, 1, **SMALL)(torch.randn(2, 1, *shape)).shape == (2, 1, *shape)


def test_outputs_are_residuals_on_the_input_pyramid() -> None:
    # With the output convolutions at zero, every scale returns its input image exactly: the
    # multi-input path feeds each level its own downsampled image.
    net = MIMOUNet(2, 1, **SMALL)
    for head in net.heads:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    x = torch.randn(1, 2, 16, 16)
    for out, image in zip(net.forward_scales(x), image_pyramid(x), strict=True):
        assert torch.equal(out, image[:, :1])
    assert torch.allclose(image_pyramid(torch.ones(1, 1, 8, 8))[2], torch.ones(1, 1, 2, 2))


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="channels >= 4"):
        MIMOUNet(1, 1, channels=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        MIMOUNet(1, 1, **SMALL)(torch.randn(1, 2, 8, 8))


def test_default_size_is_the_papers() -> None:
    # MIMO-UNet: 6.8 M parameters (Cho et al. 2021, Table 1).
    assert round(sum(p.numel() for p in MIMOUNet(3, 3).parameters()) / 1e5) == 68
