"""MIMO-UNet (Cho, Ji, Hong, Jung, Ko; ICCV 2021, arXiv 2108.05054), same-size restoration.

A single U-Net that is *multi-input*: the image at full, half and quarter resolution enters the
encoder at its own level, through a shallow convolutional module (SCM) whose features are merged
with the downsampled encoder features by a feature attention module (FAM); and *multi-output*:
every decoder level predicts a restored image at its resolution, as a residual on that level's
input. Asymmetric feature fusion (AFF) gives each decoder level the features of all encoder
levels, resized to its resolution. The restored image is the full-resolution output; the coarser
ones are only trained (multi-scale content and frequency losses, see
:mod:`hazematching.methods.mimo_unet`). The paper's MIMO-UNet has ``channels=32`` and
``n_res_blocks=8`` (MIMO-UNet+: 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hazematching.nets.layers import conv1, conv3, pad_to_multiple, res_blocks

#: Levels of the U-Net (full, 1/2, 1/4 resolution).
LEVELS = 3


class ShallowConv(nn.Module):
    """SCM: features of a downsampled input image, (B, in_ch, h, w) → (B, channels, h, w).

    A narrow convolution stack whose output is concatenated with the image itself (so the level
    sees the raw pixels too) and mixed by a 1×1 convolution.
    """

    def __init__(self, in_ch: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            conv3(in_ch, channels // 4), nn.ReLU(),
            conv1(channels // 4, channels // 2), nn.ReLU(),
            conv3(channels // 2, channels // 2), nn.ReLU(),
            conv1(channels // 2, channels - in_ch), nn.ReLU())
        self.mix = conv1(channels, channels)

    def forward(self, image: Tensor) -> Tensor:
        return self.mix(torch.cat([image, self.body(image)], dim=1))


class FeatureAttention(nn.Module):
    """FAM: ``x + conv(x ⊙ s)`` — the SCM features `s` gate the encoder features `x`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3(channels, channels)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return x + self.conv(x * s)


class FeatureFusion(nn.Module):
    """AFF: concatenated multi-level encoder features (same size) → `out_ch` channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(conv1(in_ch, out_ch), nn.ReLU(), conv3(out_ch, out_ch))

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.body(torch.cat(features, dim=1))


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear",
                                                        align_corners=False)


def image_pyramid(x: Tensor) -> list[Tensor]:
    """[x, x at 1/2, x at 1/4] by bilinear downsampling; (B, C, H, W) with H, W divisible by 4."""
    out = [x]
    for _ in range(LEVELS - 1):
        out.append(F.interpolate(out[-1], scale_factor=0.5, mode="bilinear",
                                 align_corners=False))
    return out


class MIMOUNet(nn.Module):
    """``(B, in_channels, H, W) → (B, out_channels, H, W)`` for any H, W (padded internally).

    The outputs are residuals on the first input channel (the degraded image).
    """

    #: Image sides are padded to a multiple of this (two halvings).
    multiple = 2 ** (LEVELS - 1)

    def __init__(self, in_channels: int, out_channels: int, *, channels: int = 32,
                 n_res_blocks: int = 8):
        super().__init__()
        if channels < 4 or 2 * channels <= in_channels or n_res_blocks < 0:
            raise ValueError(f"MIMO-UNet needs channels >= 4 and > in_channels/2 and "
                             f"n_res_blocks >= 0, got channels={channels}, "
                             f"in_channels={in_channels}, n_res_blocks={n_res_blocks}")
        self.in_channels, self.out_channels = in_channels, out_channels
        ch = [channels * 2 ** level for level in range(LEVELS)]
        self.stem = nn.Sequential(conv3(in_channels, ch[0]), nn.ReLU())
        self.down = nn.ModuleList(nn.Sequential(conv3(ch[i], ch[i + 1], stride=2), nn.ReLU())
                                  for i in range(LEVELS - 1))
        self.scm = nn.ModuleList(ShallowConv(in_channels, c) for c in ch[1:])
        self.fam = nn.ModuleList(FeatureAttention(c) for c in ch[1:])
        self.encoders = nn.ModuleList(res_blocks(c, n_res_blocks) for c in ch)
        self.fusion = nn.ModuleList(FeatureFusion(sum(ch), c) for c in ch[:-1])
        self.decoders = nn.ModuleList(res_blocks(c, n_res_blocks) for c in ch)
        self.up = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(ch[i + 1], ch[i], 4, stride=2,
                                                                 padding=1), nn.ReLU())
                                for i in range(LEVELS - 1))
        self.merge = nn.ModuleList(conv1(2 * c, c) for c in ch[:-1])
        self.heads = nn.ModuleList(conv3(c, out_channels) for c in ch)

    def forward_scales(self, x: Tensor) -> list[Tensor]:
        """Restored images at full, 1/2 and 1/4 resolution (finest first).

        Args:
            x: (B, in_channels, H, W), H and W divisible by 4.

        Returns:
            [(B, out, H, W), (B, out, H/2, W/2), (B, out, H/4, W/4)], in the input's units.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        images = image_pyramid(x)
        enc = [self.encoders[0](self.stem(x))]
        for i in range(LEVELS - 1):
            down = self.down[i](enc[-1])
            enc.append(self.encoders[i + 1](self.fam[i](down, self.scm[i](images[i + 1]))))
        outputs: list[Tensor] = []
        h = enc[-1]
        for level in reversed(range(LEVELS)):
            if level < LEVELS - 1:
                fused = self.fusion[level]([_resize(e, enc[level].shape[-2:]) for e in enc])
                h = self.merge[level](torch.cat([self.up[level](h), fused], dim=1))
            h = self.decoders[level](h)
            outputs.append(self.heads[level](h) + images[level][:, :1])
        return outputs[::-1]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → the full-resolution restoration (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        return self.forward_scales(pad_to_multiple(x, self.multiple))[0][..., :h, :w]
