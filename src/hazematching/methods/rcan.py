"""RCAN baseline (Zhang et al., ECCV 2018): direct regression with a residual channel-attention
network instead of the U-Net, trained with the paper's L1 loss.

Everything but the network is :class:`~hazematching.methods.regression.Regression`; the network
keeps the input size, so ``config.network`` is not used (only its ``divisor`` still pads tiles).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from hazematching.methods import register
from hazematching.methods.regression import Regression, RegressionOptions
from hazematching.nets import RCAN


class RCANOptions(RegressionOptions):
    """Sizes default to a CPU-trainable network; the paper uses 10 / 20 / 64 / 16."""

    n_groups: int = Field(3, ge=1, description="Residual groups.")
    n_blocks: int = Field(4, ge=1, description="Residual channel-attention blocks per group.")
    n_feats: int = Field(32, ge=1, description="Feature channels.")
    reduction: int = Field(8, ge=1, description="Channel-attention squeeze ratio.")


@register
class RCANRegression(Regression):
    """Same-size RCAN regressor ``x̂ = RCAN(y)``; deterministic."""

    name = "rcan"
    Options = RCANOptions

    def build_network(self) -> nn.Module:
        o = self.options
        return RCAN(self.config.in_channels, 1, n_groups=o.n_groups, n_blocks=o.n_blocks,
                    n_feats=o.n_feats, reduction=o.reduction)
