"""Tests for hazematching.nets.mprnet."""

import pytest
import torch

from hazematching.nets import MPRNet
from hazematching.nets.mprnet import _merge, _split

SMALL = {"channels": 8, "unet_step": 4, "orsnet_step": 4, "n_cab": 1, "reduction": 4}


def test_split_and_merge_are_inverse_and_cut_quarters() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    quarters = _split(_split(x, -2), -1)
    assert quarters.shape == (4, 1, 2, 2)
    assert quarters[:, 0, 0, 0].tolist() == [0, 8, 2, 10]  # TL, BL, TR, BR corners
    assert torch.equal(_merge(_merge(quarters, -1), -2), x)


def test_stages_and_forward_shapes() -> None:
    net = MPRNet(2, 1, **SMALL)
    assert [s.shape for s in net.forward_stages(torch.randn(2, 2, 16, 24))] == [(2, 1, 16, 24)] * 3
    assert net(torch.randn(1, 2, 13, 21)).shape == (1, 1, 13, 21)


def test_early_stages_see_only_their_part_of_the_image() -> None:
    # Stage 1 restores quarters and stage 2 halves independently; only stage 3 sees everything.
    net = MPRNet(1, 1, **SMALL).eval()
    x = torch.randn(1, 1, 16, 16)
    y = x.clone()
    y[..., :8, :8] += 1.0  # change the top-left quarter only
    with torch.no_grad():
        before, after = net.forward_stages(x), net.forward_stages(y)
    stage3, stage2, stage1 = ((b - a).abs() > 0 for b, a in zip(before, after, strict=True))
    # Only the 3×3 convolutions of the attention modules, which run on the merged features,
    # read one pixel across a seam: stage 1's module on each half, stage 2's on the image.
    assert not stage1[..., 8:, :].any() and not stage1[..., :, 9:].any()
    assert stage1[..., :8, :8].all()
    assert not stage2[..., 9:, :].any() and stage2[..., :8, :].any()
    assert stage3[..., 8:, 8:].any()


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="reduction 16 exceeds channels=8"):
        MPRNet(1, 1, **{**SMALL, "reduction": 16})
    with pytest.raises(ValueError, match="positive"):
        MPRNet(1, 1, **{**SMALL, "n_cab": 0})


def test_default_size_is_the_papers() -> None:
    # The deblurring MPRNet has 20.1 M parameters (Zamir et al. 2021); the resampling convolutions
    # of the cross-stage fusion are laid out a little differently here.
    assert abs(sum(p.numel() for p in MPRNet(3, 3).parameters()) / 20.1e6 - 1) < 0.01
