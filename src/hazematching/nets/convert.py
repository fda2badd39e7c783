"""Load torchcfm ``UNetModel`` weights (the published HazeMatching checkpoints) into :class:`UNet`.

Supported: torchcfm U-Nets built with ``conv_resample=True``, ``use_scale_shift_norm=False``,
``resblock_updown=False``, no classes and ``num_head_channels=-1``; any ``num_heads``, with the
legacy (default) or the new attention order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from hazematching.config import NetworkConfig
from hazematching.nets.unet import UNet

_RES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "skip",
}
_ATTN = {"norm": "norm", "qkv": "qkv", "proj_out": "proj"}
_Kind = Literal["res", "attn", "plain"]
_Transform = Literal["copy", "linear", "qkv"]


def network_config_from_torchcfm(image_size: int, channel_mult: Sequence[int]) -> NetworkConfig:
    """The :class:`NetworkConfig` equivalent to the published torchcfm network.

    Args:
        image_size: training patch side (px) the torchcfm model was built for; its attention
            sits at the 16x16 feature map (``attention_resolutions="16"``).
        channel_mult: torchcfm ``channel_mult``, e.g. (1, 1, 2, 3, 4) at 128 px, (1, 2, 3, 4) at
            64 px.
    """
    if image_size % 16 or image_size < 16:
        raise ValueError(f"image_size {image_size} is not a positive multiple of 16")
    return NetworkConfig(
        model_channels=32,
        channel_mult=tuple(channel_mult),
        num_res_blocks=1,
        attention_downsample=(image_size // 16,),
        num_heads=1,
        dropout=0.0,
    )


def _block_pairs(config: NetworkConfig) -> Iterator[tuple[str, str, _Kind]]:
    """(torchcfm module prefix, UNet module prefix, kind) for every module holding parameters."""
    mults = config.channel_mult
    nrb = config.num_res_blocks
    yield "time_embed.0", "time_embed.0", "plain"
    yield "time_embed.2", "time_embed.2", "plain"
    yield "input_blocks.0.0", "stem", "plain"
    idx = 1
    for level in range(len(mults)):
        attn = 2**level in config.attention_downsample
        for i in range(nrb):
            yield f"input_blocks.{idx}.0", f"encoder.{level}.blocks.{i}.res", "res"
            if attn:
                yield f"input_blocks.{idx}.1", f"encoder.{level}.blocks.{i}.attn", "attn"
            idx += 1
        if level < len(mults) - 1:
            yield f"input_blocks.{idx}.0.op", f"encoder.{level}.resample", "plain"
            idx += 1
    yield "middle_block.0", "middle.res1", "res"
    yield "middle_block.1", "middle.attn", "attn"
    yield "middle_block.2", "middle.res2", "res"
    idx = 0
    for j, level in enumerate(reversed(range(len(mults)))):
        attn = 2**level in config.attention_downsample
        for i in range(nrb + 1):
            yield f"output_blocks.{idx}.0", f"decoder.{j}.blocks.{i}.res", "res"
            sub = 1
            if attn:
                yield f"output_blocks.{idx}.1", f"decoder.{j}.blocks.{i}.attn", "attn"
                sub = 2
            if level > 0 and i == nrb:
                yield f"output_blocks.{idx}.{sub}.conv", f"decoder.{j}.resample.conv", "plain"
            idx += 1
    yield "out.0", "out_norm", "plain"
    yield "out.2", "out_conv", "plain"


def _key_map(config: NetworkConfig) -> dict[str, tuple[str, _Transform]]:
    """torchcfm parameter name -> (UNet parameter name, how the tensor is transformed)."""
    mapping: dict[str, tuple[str, _Transform]] = {}
    for src, dst, kind in _block_pairs(config):
        subs = {"res": _RES, "attn": _ATTN, "plain": {"": ""}}[kind]
        for s_sub, d_sub in subs.items():
            transform: _Transform = "copy"
            if kind == "attn" and s_sub != "norm":
                transform = "qkv" if s_sub == "qkv" else "linear"
            for leaf in ("weight", "bias"):
                s = ".".join(p for p in (src, s_sub, leaf) if p)
                d = ".".join(p for p in (dst, d_sub, leaf) if p)
                mapping[s] = (d, transform)
    return mapping


def _qkv_to_unet(w: Tensor, heads: int, order: Literal["legacy", "new"]) -> Tensor:
    """Reorder fused-QKV output rows to the UNet layout ``(q|k|v, head, head_dim)``.

    torchcfm's legacy attention reads rows as ``(head, q|k|v, head_dim)``; the new order already
    matches the UNet layout.
    """
    if order == "new":
        return w
    rows = w.shape[0]
    return w.reshape(heads, 3, rows // (3 * heads), *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def convert_torchcfm_state_dict(
    state_dict: Mapping[str, Tensor],
    config: NetworkConfig,
    *,
    attention_order: Literal["legacy", "new"] = "legacy",
) -> dict[str, Tensor]:
    """Rename and reshape a torchcfm ``UNetModel`` state dict for :class:`UNet`.

    Args:
        state_dict: torchcfm parameters (no wrapper prefix such as ``"model."``); attention
            projections are ``Conv1d`` weights of shape (out, in, 1).
        config: the architecture the weights belong to (see :func:`network_config_from_torchcfm`).
        attention_order: ``"legacy"`` unless the torchcfm model was built with
            ``use_new_attention_order=True``.

    Returns:
        A state dict that loads into ``UNet(in_channels, out_channels, config)`` with
        ``strict=True``; channel counts are read from the stem and output convolutions.

    Raises:
        KeyError: a torchcfm key is missing (the message names it and its UNet counterpart) or
            is not part of the architecture described by ``config``.
        ValueError: a tensor has the wrong shape for ``config`` (the message names the key).
    """
    for key in ("input_blocks.0.0.weight", "out.2.weight"):
        if key not in state_dict:
            raise KeyError(f"torchcfm state dict lacks {key!r}; is it a UNetModel state dict "
                           "(without a wrapper prefix)?")
    in_ch = state_dict["input_blocks.0.0.weight"].shape[1]
    out_ch = state_dict["out.2.weight"].shape[0]
    with torch.device("meta"):
        reference = UNet(in_ch, out_ch, config).state_dict()

    key_map = _key_map(config)
    unexpected = sorted(k for k in state_dict if k not in key_map)
    if unexpected:
        raise KeyError(f"torchcfm state dict has keys that config {config!r} does not explain: "
                       f"{', '.join(unexpected)}")
    converted: dict[str, Tensor] = {}
    for src, (dst, transform) in key_map.items():
        if dst not in reference:
            # Only skip-connection convolutions are optional: they exist where widths change.
            if src in state_dict:
                raise KeyError(f"torchcfm key {src!r} has no counterpart {dst!r} in the UNet for "
                               f"config {config!r}")
            continue
        if src not in state_dict:
            raise KeyError(f"torchcfm state dict lacks {src!r} (needed for UNet {dst!r})")
        value = state_dict[src]
        if transform != "copy" and value.ndim == 3 and value.shape[-1] == 1:
            # torchcfm projects with 1x1 Conv1d; the UNet uses Linear on tokens.
            value = value[..., 0]
        if value.shape != reference[dst].shape:
            raise ValueError(f"torchcfm key {src!r} has shape {tuple(value.shape)}, but UNet "
                             f"{dst!r} for config {config!r} needs {tuple(reference[dst].shape)}")
        if transform == "qkv":
            value = _qkv_to_unet(value, config.num_heads, attention_order)
        converted[dst] = value
    return converted
