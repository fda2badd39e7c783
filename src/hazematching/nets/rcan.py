"""RCAN: residual channel attention network (Zhang et al., ECCV 2018, arXiv 1807.02758).

Residual-in-residual structure: a head convolution, ``n_groups`` residual groups of
``n_blocks`` residual channel-attention blocks (RCAB) each, a body convolution with a long skip
connection, and a tail convolution. The paper's upsampling module is left out: the output has the
input's size (same-size restoration, as in RCAN for fluorescence microscopy, Chen et al. 2021).
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel gating: x · sigmoid(W_up ReLU(W_down mean_hw(x)))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W), each channel scaled by a weight in (0, 1)."""
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv(ReLU(conv(x))))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(_conv3(channels, channels), nn.ReLU(inplace=True),
                                  _conv3(channels, channels), ChannelAttention(channels, reduction))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``n_blocks`` RCABs and a convolution, wrapped by a short skip connection."""

    def __init__(self, channels: int, n_blocks: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(*(RCAB(channels, reduction) for _ in range(n_blocks)),
                                  _conv3(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        return x + self.body(x)


class RCAN(nn.Module):
    """Same-size RCAN ``(B, in_channels, H, W) → (B, out_channels, H, W)``, any H and W.

    The paper's network is ``n_groups=10, n_blocks=20, n_feats=64, reduction=16``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, n_groups: int, n_blocks: int,
                 n_feats: int, reduction: int):
        super().__init__()
        if min(n_groups, n_blocks, n_feats, reduction) < 1:
            raise ValueError(f"RCAN sizes must be positive, got n_groups={n_groups}, "
                             f"n_blocks={n_blocks}, n_feats={n_feats}, reduction={reduction}")
        if reduction > n_feats:
            raise ValueError(f"channel-attention reduction {reduction} exceeds n_feats={n_feats}: "
                             f"the squeezed layer would have no channels")
        self.in_channels = in_channels
        self.head = _conv3(in_channels, n_feats)
        self.body = nn.Sequential(*(ResidualGroup(n_feats, n_blocks, reduction)
                                    for _ in range(n_groups)), _conv3(n_feats, n_feats))
        self.tail = _conv3(n_feats, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → (B, out_channels, H, W), in the input's units."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        features = self.head(x)
        # The long skip lets the deep body learn only the residual high-frequency content.
        return self.tail(features + self.body(features))
