"""Building blocks shared by several networks: size padding and a plain residual block."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3(in_ch: int, out_ch: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3×3 convolution that keeps the size (or halves it with ``stride=2``)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def conv1(in_ch: int, out_ch: int, *, bias: bool = True) -> nn.Conv2d:
    """1×1 convolution (a per-pixel linear map of the channels)."""
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, H, W) at the bottom and right to sides divisible by `multiple`.

    Mirrors the image where it is large enough (reflection), else repeats the edge pixels; crop
    the result back with ``[..., :H, :W]``.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def check_multiple(size: int, multiple: int, what: str) -> None:
    """Raise a ValueError naming `what` unless `size` is a multiple of `multiple`."""
    if size % multiple:
        raise ValueError(f"{what}={size} must be divisible by {multiple}")


class ResBlock(nn.Module):
    """``x + conv(act(conv(x)))`` with 3×3 convolutions; (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.body = nn.Sequential(conv3(channels, channels), act(), conv3(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def res_blocks(channels: int, n: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """`n` :class:`ResBlock` s in a row (an identity for ``n = 0``)."""
    return nn.Sequential(*(ResBlock(channels, act) for _ in range(n)))
