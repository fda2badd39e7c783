"""Tests for hazematching.nets.discriminator."""

import pytest
import torch

from hazematching.nets import PatchDiscriminator


@pytest.mark.parametrize(("n_layers", "size"), [(3, 32), (3, 64), (2, 32)])
def test_one_logit_per_patch(n_layers: int, size: int) -> None:
    disc = PatchDiscriminator(1, n_feats=8, n_layers=n_layers)
    side = size // 2**n_layers - 2
    assert disc(torch.randn(2, 1, size, size)).shape == (2, 1, side, side)


def test_smallest_input_gives_one_logit() -> None:
    disc = PatchDiscriminator(2, n_feats=4, n_layers=3)
    assert disc.min_size == 24
    assert disc(torch.randn(1, 2, 24, 24)).shape == (1, 1, 1, 1)


def test_too_small_or_wrong_input_raises() -> None:
    disc = PatchDiscriminator(1, n_feats=4, n_layers=3)
    with pytest.raises(ValueError, match="at least 24 px"):
        disc(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        disc(torch.randn(1, 2, 32, 32))
