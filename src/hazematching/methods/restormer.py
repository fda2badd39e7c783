"""Restormer baseline (Zamir et al., CVPR 2022): direct regression with the transposed-attention
transformer :class:`~hazematching.nets.Restormer`, trained with the paper's L1 loss.

Everything but the network is :class:`~hazematching.methods.regression.Regression`. The paper's
progressive learning (growing the patch size during training) is not reproduced: patches have
the one ``data.patch_size``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from torch import nn

from hazematching.methods import register
from hazematching.methods.regression import Regression, RegressionOptions
from hazematching.nets import Restormer


class RestormerOptions(RegressionOptions):
    """Defaults are the paper's network (26.1 M parameters); shrink for a CPU."""

    channels: int = Field(48, ge=1, description="Width of the first level (doubles per level).")
    blocks: tuple[int, ...] = Field((4, 6, 6, 8), description="Transformer blocks per level, "
                                    "the last being the bottleneck.")
    heads: tuple[int, ...] = Field((1, 2, 4, 8), description="Attention heads per level.")
    refinement_blocks: int = Field(4, ge=0, description="Blocks after the decoder.")
    ffn_expansion: float = Field(2.66, gt=0.0, description="Hidden width factor of the GDFN.")

    @field_validator("blocks", "heads")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or min(v) < 1:
            raise ValueError(f"expected at least two positive entries (one per level), got {v}")
        return v

    @model_validator(mode="after")
    def _one_entry_per_level(self) -> RestormerOptions:
        if len(self.blocks) != len(self.heads):
            raise ValueError(f"blocks {self.blocks} and heads {self.heads} need one entry per "
                             f"level each")
        return self


@register
class RestormerRegression(Regression):
    """Restormer: MDTA + GDFN transformer, L1 loss."""

    name = "restormer"
    Options = RestormerOptions

    def build_network(self) -> nn.Module:
        o = self.options
        return Restormer(self.config.in_channels, 1, channels=o.channels, blocks=o.blocks,
                         heads=o.heads, refinement_blocks=o.refinement_blocks,
                         ffn_expansion=o.ffn_expansion)
