"""Restormer (Zamir, Arora, Khan, Hayat, Khan, Yang; CVPR 2022, arXiv 2111.09881).

A U-shaped transformer whose blocks are cheap enough for full-resolution images:

* **MDTA** (multi-Dconv head transposed attention): queries, keys and values come from a 1×1
  then a depth-wise 3×3 convolution; attention is computed *across channels* (a C/h × C/h map
  per head, from L2-normalised q and k scaled by a learned temperature), so its cost is linear in
  the number of pixels.
* **GDFN** (gated-Dconv feed-forward network): two parallel 1×1 + depth-wise 3×3 branches, one
  passed through GELU, multiplied element-wise, projected back.

Each transformer block is ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))`` with a per-pixel layer
norm over the channels. Levels are joined by pixel-unshuffle (down) and pixel-shuffle (up) with
a 3×3 convolution; the decoder concatenates the encoder features (reduced by a 1×1 convolution
except at the top level, which keeps twice the width) and refinement blocks follow. The output is
a residual on the first input channel. The paper's network: ``channels=48``, ``blocks=(4, 6, 6,
8)``, ``heads=(1, 2, 4, 8)``, ``refinement_blocks=4``, ``ffn_expansion=2.66``, no biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hazematching.nets.layers import conv1, conv3, pad_to_multiple


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of every pixel of a (B, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _dwconv(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)


class TransposedAttention(nn.Module):
    """MDTA: self-attention across channels; (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Sequential(conv1(channels, 3 * channels, bias=False), _dwconv(3 * channels))
        self.proj = conv1(channels, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w)
                   for t in self.qkv(x).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """GDFN: ``W_o (GELU(D_1 W_1 x) ⊙ D_2 W_2 x)``; (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.inp = nn.Sequential(conv1(channels, 2 * hidden, bias=False), _dwconv(2 * hidden))
        self.out = conv1(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.inp(x).chunk(2, dim=1)
        return self.out(F.gelu(a) * gate)


class TransformerBlock(nn.Module):
    """``x + MDTA(LN(x))`` followed by ``x + GDFN(LN(x))``."""

    def __init__(self, channels: int, heads: int, expansion: float):
        super().__init__()
        self.norm1, self.norm2 = ChannelLayerNorm(channels), ChannelLayerNorm(channels)
        self.attn = TransposedAttention(channels, heads)
        self.ffn = GatedFeedForward(channels, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _stage(channels: int, n_blocks: int, heads: int, expansion: float) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(channels, heads, expansion) for _ in range(n_blocks)))


class Restormer(nn.Module):
    """``(B, in_channels, H, W) → (B, out_channels, H, W)`` for any H, W (padded internally).

    ``blocks[i]`` transformer blocks with ``heads[i]`` heads at level i, whose width is
    ``channels · 2**i``; the last level is the bottleneck.
    """

    def __init__(self, in_channels: int, out_channels: int, *, channels: int = 48,
                 blocks: tuple[int, ...] = (4, 6, 6, 8), heads: tuple[int, ...] = (1, 2, 4, 8),
                 refinement_blocks: int = 4, ffn_expansion: float = 2.66):
        super().__init__()
        if len(blocks) != len(heads) or len(blocks) < 2:
            raise ValueError(f"Restormer needs blocks and heads of the same length >= 2 (one "
                             f"entry per level), got blocks={blocks}, heads={heads}")
        widths = [channels * 2 ** i for i in range(len(blocks))]
        # The top decoder level runs at twice the width, with the first level's heads.
        bad = [(w, h) for w, h in [*zip(widths, heads, strict=True), (2 * channels, heads[0])]
               if h < 1 or w % h]
        if bad or min(blocks) < 1 or ffn_expansion <= 0:
            raise ValueError(f"Restormer: every level's width (channels·2**level) must be "
                             f"divisible by its heads and every level needs >= 1 block; got "
                             f"channels={channels}, blocks={blocks}, heads={heads}")
        self.in_channels = in_channels
        self.multiple = 2 ** (len(blocks) - 1)
        n = len(blocks)
        self.embed = conv3(in_channels, channels, bias=False)
        self.encoders = nn.ModuleList(_stage(widths[i], blocks[i], heads[i], ffn_expansion)
                                      for i in range(n - 1))
        self.down = nn.ModuleList(nn.Sequential(conv3(w, w // 2, bias=False),
                                                nn.PixelUnshuffle(2)) for w in widths[:-1])
        self.bottleneck = _stage(widths[-1], blocks[-1], heads[-1], ffn_expansion)
        self.up = nn.ModuleList(nn.Sequential(conv3(w, 2 * w, bias=False), nn.PixelShuffle(2))
                                for w in widths[1:])
        self.reduce = nn.ModuleList(conv1(2 * w, w, bias=False) for w in widths[1:-1])
        dec_widths = [2 * channels, *widths[1:-1]]
        self.decoders = nn.ModuleList(_stage(dec_widths[i], blocks[i], heads[i], ffn_expansion)
                                      for i in range(n - 1))
        self.refinement = _stage(2 * channels, refinement_blocks, heads[0], ffn_expansion)
        self.output = conv3(2 * channels, out_channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → (B, out_channels, H, W), in the input's units."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.multiple)
        skips, h = [], self.embed(padded)
        for encode, down in zip(self.encoders, self.down, strict=True):
            h = encode(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for level in reversed(range(len(self.encoders))):
            h = torch.cat([self.up[level](h), skips[level]], dim=1)
            if level > 0:
                h = self.reduce[level - 1](h)
            h = self.decoders[level](h)
        out = self.output(self.refinement(h)) + padded[:, :1]
        return out[..., :height, :width]
