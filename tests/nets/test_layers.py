"""Tests for hazematching.nets.layers."""

import pytest
import torch

from hazematching.nets.layers import ResBlock, check_multiple, pad_to_multiple


@pytest.mark.parametrize("shape", [(16, 24), (13, 21), (3, 2)])
def test_padding_reaches_the_multiple_and_keeps_the_image(shape) -> None:
    x = torch.randn(2, 3, *shape)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[:2] == (2, 3) and all(s % 8 == 0 and s - 8 < o
                                              for s, o in zip(padded.shape[-2:], shape))
    torch.testing.assert_close(padded[..., :shape[0], :shape[1]], x, rtol=0, atol=0)


def test_padding_mirrors_the_edge() -> None:
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 6, 5)
    assert pad_to_multiple(x, 8)[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]


def test_check_multiple_names_the_field() -> None:
    check_multiple(32, 8, "data.patch_size")
    with pytest.raises(ValueError, match="data.patch_size=36 must be divisible by 8"):
        check_multiple(36, 8, "data.patch_size")


def test_res_block_is_an_identity_plus_a_branch() -> None:
    block = ResBlock(4)
    torch.nn.init.zeros_(block.body[-1].weight)
    torch.nn.init.zeros_(block.body[-1].bias)
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(block(x), x)
