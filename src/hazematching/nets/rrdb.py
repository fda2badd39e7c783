"""ESRGAN's RRDB generator (Wang et al., ECCV Workshops 2018, arXiv 1809.00219), same-size.

Residual-in-residual dense blocks (RRDB) without batch normalisation: each RRDB chains three
residual dense blocks (five densely connected convolutions), and every residual branch is scaled
by β = 0.2 before it is added. The paper's ×4 upsampling layers are left out, so the output has
the input's size. The paper's network is ``n_feats=64, n_blocks=23, growth=32``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Residual scaling β of the paper: keeps a deep stack of un-normalised blocks stable.
RESIDUAL_SCALE = 0.2
#: Factor on the Kaiming initialisation of the dense convolutions (the paper's "smaller
#: initialisation", which makes each block start close to the identity).
INIT_SCALE = 0.1


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convolutions, each seeing all previous outputs; x + β·(last output)."""

    def __init__(self, n_feats: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(n_feats + i * growth, growth if i < 4 else n_feats, 3, padding=1)
            for i in range(5))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            conv.weight.data.mul_(INIT_SCALE)
            nn.init.zeros_(conv.bias)
        self.act = _lrelu()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n_feats, H, W) → (B, n_feats, H, W)."""
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Three residual dense blocks inside a scaled residual connection."""

    def __init__(self, n_feats: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(n_feats, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n_feats, H, W) → (B, n_feats, H, W)."""
        return x + RESIDUAL_SCALE * self.blocks(x)


class RRDBNet(nn.Module):
    """Same-size RRDB generator ``(B, in_channels, H, W) → (B, out_channels, H, W)``, any H, W."""

    def __init__(self, in_channels: int, out_channels: int, *, n_feats: int, n_blocks: int,
                 growth: int):
        super().__init__()
        if min(n_feats, n_blocks, growth) < 1:
            raise ValueError(f"RRDBNet sizes must be positive, got n_feats={n_feats}, "
                             f"n_blocks={n_blocks}, growth={growth}")
        self.in_channels = in_channels
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(n_feats, growth) for _ in range(n_blocks)),
                                   nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), _lrelu(),
                                  nn.Conv2d(n_feats, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → (B, out_channels, H, W), in the input's units."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        features = self.head(x)
        return self.tail(features + self.trunk(features))
