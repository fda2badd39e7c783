"""Time-conditioned ADM-style U-Net, the velocity network of HazeMatching.

The architecture follows the "ablated diffusion model" U-Net (Dhariwal & Nichol 2021) in the
configuration torchcfm's ``UNetModel`` builds, so that published torchcfm checkpoints load into it
through :func:`hazematching.nets.convert.convert_torchcfm_state_dict` and give the same outputs.
Only the layout of the parameters differs: attention uses ``nn.Linear`` projections on a token
sequence and :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hazematching.config import NetworkConfig

_NORM_GROUPS = 32
_MAX_PERIOD = 10_000.0


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = _MAX_PERIOD) -> Tensor:
    """Sinusoidal embedding of (fractional) times.

    Args:
        t: (B,) times; used as given (HazeMatching passes flow time in [0, 1] unscaled, exactly as
            torchcfm's ``UNetModel`` does, which the published checkpoints were trained with).
        dim: embedding width.
        max_period: period of the slowest frequency.

    Returns:
        (B, dim) float32 embedding, ``[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})]`` with
        ``h = dim // 2`` and ``f_i = max_period**(-i / h)``; a zero column is appended if ``dim``
        is odd.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _num_groups(channels: int) -> int:
    # Multiples of 32 (every layer of the published networks) get torchcfm's 32 groups, so that
    # converted weights normalise identically. Narrower layers keep at least two channels per
    # group: with one, GroupNorm would cancel the per-channel time-embedding shift entirely.
    if channels % _NORM_GROUPS == 0:
        return _NORM_GROUPS
    groups = math.gcd(_NORM_GROUPS // 2, channels)
    return groups // 2 if groups == channels and groups > 1 else groups


class _GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input dtype (stable under bf16/fp16)."""

    def __init__(self, channels: int):
        super().__init__(_num_groups(channels), channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class ResBlock(nn.Module):
    """Pre-activation residual block with an additive time embedding.

    ``x -> norm -> SiLU -> conv3x3 -> (+ Linear(SiLU(emb))) -> norm -> SiLU -> dropout ->
    conv3x3 (zero-initialised)``, added to ``x`` (through a 1x1 conv if the width changes).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float):
        super().__init__()
        self.norm1 = _GroupNorm32(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, out_ch)
        self.norm2 = _GroupNorm32(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # The block starts as the identity (plus skip projection), which keeps deep stacks stable.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, in_ch, H, W); emb: (B, emb_ch), already passed through SiLU.

        Returns (B, out_ch, H, W).
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    The fused QKV projection produces, per token, ``[q | k | v]`` with each part laid out as
    ``(heads, head_dim)``; the output projection is zero-initialised.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"attention width {channels} is not divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.norm = _GroupNorm32(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        # (B, H, W, C) is a free view for channels-last inputs.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        q, k, v = (
            self.qkv(tokens)
            .reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        a = F.scaled_dot_product_attention(q, k, v)
        a = self.proj(a.transpose(1, 2).reshape(b, h * w, c))
        return x + a.reshape(b, h, w, c).permute(0, 3, 1, 2)


class _ResAttn(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, heads: int | None):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_ch, dropout)
        self.attn = AttentionBlock(out_ch, heads) if heads is not None else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class _Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: blocks, then an optional resampling."""

    def __init__(self, blocks: list[_ResAttn], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """Time-conditioned U-Net ``v(t, x)`` (defaults: the paper's 3.7 M-parameter network).

    Level ``i`` works at ``model_channels * channel_mult[i]`` channels and downsampling factor
    ``2**i``; each has ``num_res_blocks`` residual blocks in the encoder and one more in the
    decoder (which consumes the extra skip of the resampling layer). Self-attention follows every
    residual block at the factors in ``attention_downsample`` and sits in the middle block.
    """

    def __init__(self, in_channels: int, out_channels: int, config: NetworkConfig):
        super().__init__()
        mc = config.model_channels
        mults = config.channel_mult
        emb_ch = 4 * mc
        reachable = {2**i for i in range(len(mults))}
        unreachable = sorted(set(config.attention_downsample) - reachable)
        if unreachable:
            raise ValueError(
                f"attention_downsample {unreachable} never occurs with channel_mult={mults}; "
                f"possible factors are {sorted(reachable)}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = mc
        self.divisor = config.divisor

        def heads(ds: int) -> int | None:
            return config.num_heads if ds in config.attention_downsample else None

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        ch = mc * mults[0]
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_chs = [ch]
        encoder = []
        for level, mult in enumerate(mults):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(_ResAttn(ch, mc * mult, emb_ch, config.dropout, heads(2**level)))
                ch = mc * mult
                skip_chs.append(ch)
            down = None
            if level < len(mults) - 1:
                down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                skip_chs.append(ch)
            encoder.append(_Level(blocks, down))
        self.encoder = nn.ModuleList(encoder)

        self.middle = nn.ModuleDict(
            {
                "res1": ResBlock(ch, ch, emb_ch, config.dropout),
                "attn": AttentionBlock(ch, config.num_heads),
                "res2": ResBlock(ch, ch, emb_ch, config.dropout),
            }
        )

        decoder = []
        for level in reversed(range(len(mults))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                out_ch = mc * mults[level]
                blocks.append(
                    _ResAttn(ch + skip_chs.pop(), out_ch, emb_ch, config.dropout, heads(2**level))
                )
                ch = out_ch
            decoder.append(_Level(blocks, _Upsample(ch) if level > 0 else None))
        self.decoder = nn.ModuleList(decoder)

        self.out_norm = _GroupNorm32(ch)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        # A zero output makes the initial velocity field zero, as in the reference network.
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _time(self, t: Tensor | float, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim > 0:
            if t[0].numel() != 1:
                raise ValueError(f"t must hold one time per sample; got shape {tuple(t.shape)}")
            t = t.reshape(t.shape[0])
        if t.numel() == 1:
            return t.reshape(1).expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"t has {t.shape[0]} times for a batch of {batch}")
        return t

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        """Evaluate the velocity field.

        Args:
            t: flow time in [0, 1]: a scalar, or one value per sample with shape (B,) (also
                accepted: (B, 1, ...), as broadcast by training code).
            x: (B, in_channels, H, W); H and W must be multiples of ``2**(len(channel_mult)-1)``.

        Returns:
            (B, out_channels, H, W) in the dtype of the last convolution (the autocast dtype under
            ``torch.autocast``).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if height % self.divisor or width % self.divisor:
            raise ValueError(
                f"image size {height}x{width} (input shape {tuple(x.shape)}) is not a multiple "
                f"of {self.divisor} = 2**(len(channel_mult)-1) in both dimensions"
            )
        temb = sinusoidal_embedding(self._time(t, x.shape[0], x.device), self.model_channels)
        # float32 unless the whole network was cast (e.g. to bfloat16).
        temb = temb.to(self.time_embed[0].weight.dtype)
        # Every residual block applies SiLU to the embedding first; do it once here.
        emb = F.silu(self.time_embed(temb))

        h = self.stem(x)
        skips = [h]
        for level in self.encoder:
            for block in level.blocks:
                h = block(h, emb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self.middle["res1"](h, emb)
        h = self.middle["attn"](h)
        h = self.middle["res2"](h, emb)

        for level in self.decoder:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level.resample is not None:
                h = level.resample(h)

        return self.out_conv(F.silu(self.out_norm(h)))
