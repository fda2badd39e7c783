"""MPRNet: multi-stage progressive restoration (Zamir, Arora, Khan, Hayat, Khan, Yang, Shao;
CVPR 2021, arXiv 2102.02808).

Three stages restore the image progressively, each from the degraded input and the previous
stage's features:

1. stage 1 works on the four non-overlapping quarters of the image, stage 2 on its two halves
   (top and bottom), both with a channel-attention encoder–decoder (three levels, bilinear
   resampling + 1×1 convolutions between them); stage 3 works on the whole image at full
   resolution with the original-resolution subnetwork (ORSNet: three blocks of channel-attention
   blocks, no downsampling), so that fine detail is not lost;
2. between stages a **supervised attention module** (SAM) predicts a restored image (a residual
   on the input, supervised by the loss) and turns it into attention masks that gate the
   features passed on;
3. **cross-stage feature fusion** (CSFF) adds 1×1-convolved encoder and decoder features of one
   stage into the next stage's encoder (stage 1 → 2) or ORSNet (stage 2 → 3).

The channel-attention block (CAB) is :class:`~hazematching.nets.rcan.RCAB`. The paper's
deblurring network has ``channels=96``, ``unet_step=48``, ``orsnet_step=32``, ``n_cab=8``,
``reduction=4`` (its deraining network: 40 / 20 / 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hazematching.nets.layers import conv1, conv3, pad_to_multiple
from hazematching.nets.rcan import RCAB

#: Levels of the stage 1–2 encoder–decoders.
LEVELS = 3


def _cabs(channels: int, n: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(*(RCAB(channels, reduction) for _ in range(n)))


class _Resample(nn.Module):
    """Bilinear resampling by `scale` followed by a 1×1 convolution to `out_ch` channels."""

    def __init__(self, in_ch: int, out_ch: int, scale: float):
        super().__init__()
        self.scale = scale
        self.conv = conv1(in_ch, out_ch, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv(x)


class Encoder(nn.Module):
    """Three levels of two CABs; level l has ``channels + l·step`` channels at 1/2**l size.

    With `fuse`, the previous stage's encoder and decoder features (CSFF) are added at every
    level after its CABs.
    """

    def __init__(self, channels: int, step: int, reduction: int, *, fuse: bool):
        super().__init__()
        ch = [channels + level * step for level in range(LEVELS)]
        self.levels = nn.ModuleList(_cabs(c, 2, reduction) for c in ch)
        self.down = nn.ModuleList(_Resample(ch[i], ch[i + 1], 0.5) for i in range(LEVELS - 1))
        self.fuse_enc = nn.ModuleList(conv1(c, c, bias=False) for c in ch) if fuse else None
        self.fuse_dec = nn.ModuleList(conv1(c, c, bias=False) for c in ch) if fuse else None

    def forward(self, x: Tensor, previous: tuple[list[Tensor], list[Tensor]] | None = None
                ) -> list[Tensor]:
        """x: (B, channels, H, W) → features of every level, finest first."""
        out: list[Tensor] = []
        for level, block in enumerate(self.levels):
            if level:
                x = self.down[level - 1](x)
            x = block(x)
            if previous is not None:
                enc, dec = previous
                x = x + self.fuse_enc[level](enc[level]) + self.fuse_dec[level](dec[level])
            out.append(x)
        return out


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: upsample, add the CAB-processed skip, two CABs per level."""

    def __init__(self, channels: int, step: int, reduction: int):
        super().__init__()
        ch = [channels + level * step for level in range(LEVELS)]
        self.levels = nn.ModuleList(_cabs(c, 2, reduction) for c in ch)
        self.skips = nn.ModuleList(RCAB(c, reduction) for c in ch[:-1])
        self.up = nn.ModuleList(_Resample(ch[i + 1], ch[i], 2) for i in range(LEVELS - 1))

    def forward(self, enc: list[Tensor]) -> list[Tensor]:
        """Encoder features (finest first) → decoder features of every level, finest first."""
        x = self.levels[-1](enc[-1])
        out = [x]
        for level in reversed(range(LEVELS - 1)):
            x = self.levels[level](self.up[level](x) + self.skips[level](enc[level]))
            out.append(x)
        return out[::-1]


class SupervisedAttention(nn.Module):
    """SAM: features (B, C, H, W) and the degraded image → gated features and a restored image.

    The restored image is ``conv(f) + image`` (supervised); the gate is ``sigmoid(conv(restored
    image))`` and the output features ``f + conv(f) ⊙ gate``.
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.features = conv3(channels, channels)
        self.to_image = conv3(channels, out_channels)
        self.to_gate = conv3(out_channels, channels)

    def forward(self, f: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        restored = self.to_image(f) + image
        gate = torch.sigmoid(self.to_gate(restored))
        return f + self.features(f) * gate, restored


class ORSNet(nn.Module):
    """Original-resolution subnetwork: three blocks of `n_cab` CABs + a convolution (with a
    skip), each followed by the fused stage-2 encoder and decoder features of one level,
    upsampled to full size."""

    def __init__(self, channels: int, unet_step: int, orsnet_step: int, n_cab: int,
                 reduction: int):
        super().__init__()
        width = channels + orsnet_step
        self.blocks = nn.ModuleList(nn.Sequential(*_cabs(width, n_cab, reduction),
                                                  conv3(width, width)) for _ in range(LEVELS))
        unet = [channels + level * unet_step for level in range(LEVELS)]
        self.fuse_enc = nn.ModuleList(_Resample(c, width, 2 ** level)
                                      for level, c in enumerate(unet))
        self.fuse_dec = nn.ModuleList(_Resample(c, width, 2 ** level)
                                      for level, c in enumerate(unet))

    def forward(self, x: Tensor, enc: list[Tensor], dec: list[Tensor]) -> Tensor:
        for level, block in enumerate(self.blocks):
            x = x + block(x)
            x = x + self.fuse_enc[level](enc[level]) + self.fuse_dec[level](dec[level])
        return x


def _split(x: Tensor, dim: int) -> Tensor:
    """Cut every image in two along `dim` and stack the halves on the batch axis (2B, …)."""
    return torch.cat(x.chunk(2, dim=dim), dim=0)


def _merge(x: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`_split`."""
    return torch.cat(x.chunk(2, dim=0), dim=dim)


class MPRNet(nn.Module):
    """``(B, in_channels, H, W) → (B, out_channels, H, W)`` for any H, W (padded internally).

    The outputs are residuals on the first input channel (the degraded image).
    """

    #: Quarters (÷2) and two halvings inside the encoder (÷4).
    multiple = 2 * 2 ** (LEVELS - 1)

    def __init__(self, in_channels: int, out_channels: int, *, channels: int = 96,
                 unet_step: int = 48, orsnet_step: int = 32, n_cab: int = 8,
                 reduction: int = 4):
        super().__init__()
        if min(channels, n_cab, reduction) < 1 or min(unet_step, orsnet_step) < 0:
            raise ValueError(f"MPRNet sizes must be positive, got channels={channels}, "
                             f"unet_step={unet_step}, orsnet_step={orsnet_step}, n_cab={n_cab}, "
                             f"reduction={reduction}")
        if reduction > channels:
            raise ValueError(f"channel-attention reduction {reduction} exceeds channels="
                             f"{channels}: the squeezed layer would have no channels")
        self.in_channels = in_channels
        self.shallow = nn.ModuleList(nn.Sequential(conv3(in_channels, channels),
                                                   RCAB(channels, reduction))
                                     for _ in range(3))
        self.encoders = nn.ModuleList(Encoder(channels, unet_step, reduction, fuse=fuse)
                                      for fuse in (False, True))
        self.decoders = nn.ModuleList(Decoder(channels, unet_step, reduction) for _ in range(2))
        self.sam = nn.ModuleList(SupervisedAttention(channels, out_channels) for _ in range(2))
        self.concat12 = conv3(2 * channels, channels)
        self.concat23 = conv3(2 * channels, channels + orsnet_step)
        self.orsnet = ORSNet(channels, unet_step, orsnet_step, n_cab, reduction)
        self.tail = conv3(channels + orsnet_step, out_channels)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The restored image of stage 3, 2 and 1 (final first).

        Args:
            x: (B, in_channels, H, W), H and W divisible by 8.

        Returns:
            Three (B, out_channels, H, W) images in the input's units.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got "
                             f"{tuple(x.shape)}")
        image = x[:, :1]
        halves = _split(x, -2)                    # (2B): top, bottom
        quarters = _split(halves, -1)             # (4B): each half's left, then right part

        enc1 = self.encoders[0](self.shallow[0](quarters))
        dec1 = self.decoders[0](enc1)
        enc1, dec1 = ([_merge(f, -1) for f in feats] for feats in (enc1, dec1))
        sam1, restored1 = self.sam[0](dec1[0], halves[:, :1])

        f2 = self.concat12(torch.cat([self.shallow[1](halves), sam1], dim=1))
        enc2 = self.encoders[1](f2, (enc1, dec1))
        dec2 = self.decoders[1](enc2)
        enc2, dec2 = ([_merge(f, -2) for f in feats] for feats in (enc2, dec2))
        sam2, restored2 = self.sam[1](dec2[0], image)

        f3 = self.concat23(torch.cat([self.shallow[2](x), sam2], dim=1))
        restored3 = self.tail(self.orsnet(f3, enc2, dec2)) + image
        return [restored3, restored2, _merge(restored1, -2)]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, H, W) → the final restoration (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        return self.forward_stages(pad_to_multiple(x, self.multiple))[0][..., :h, :w]
