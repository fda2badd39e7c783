"""PatchGAN discriminator (Isola et al., CVPR 2017, arXiv 1611.07004).

A fully convolutional critic that scores overlapping patches instead of the whole image, so it
works on any patch or tile size and judges local texture, which is what an adversarial loss adds
to a pixel loss. Layout as in the paper's 70×70 PatchGAN: 4×4 convolutions, stride 2 while the
width doubles, then two stride-1 layers; LeakyReLU(0.2); batch norm on all but the first and last
layer.
"""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """``(B, in_channels, H, W) → (B, 1, H', W')`` real-vs-fake logits, one per patch.

    With ``n_layers`` strided layers, ``H' = H / 2**n_layers − 2`` (for H divisible by
    ``2**n_layers``); inputs need H, W ≥ ``2**n_layers · 3`` for a non-empty output.
    """

    def __init__(self, in_channels: int, *, n_feats: int = 64, n_layers: int = 3,
                 max_mult: int = 8):
        super().__init__()
        if n_feats < 1 or n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs n_feats >= 1 and n_layers >= 1, got "
                             f"n_feats={n_feats}, n_layers={n_layers}")
        self.in_channels = in_channels
        self.min_size = 3 * 2**n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, n_feats, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        ch = n_feats
        for i in range(1, n_layers + 1):
            out = n_feats * min(2**i, max_mult)
            # The last widening layer keeps the resolution (stride 1), as in the paper.
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → (B, 1, H', W') unnormalised logits."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"the discriminator needs images of at least {self.min_size} px per "
                             f"side, got {tuple(x.shape[-2:])}; use fewer layers or larger "
                             f"patches")
        return self.net(x)
