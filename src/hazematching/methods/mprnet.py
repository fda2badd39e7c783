"""MPRNet baseline (Zamir et al., CVPR 2021): direct regression with the multi-stage progressive
restoration network :class:`~hazematching.nets.MPRNet`, every stage supervised.

The paper's loss, over the restored images X_s of the three stages and the target Y:

    L = Σ_s  L_char(X_s, Y) + λ · L_edge(X_s, Y),   λ = 0.05,

with the Charbonnier loss ``L_char = mean √((X − Y)² + ε²)``, ε = 1e-3, and the edge loss
``L_edge = L_char(Δ(X), Δ(Y))`` on a band-pass Laplacian image ``Δ(X) = X − G_1 ⊛ X`` (G_1: a
Gaussian of σ = 1 px). Prediction is stage 3's image, one deterministic pass.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.regression import Regression
from hazematching.methods.richardson_lucy import gaussian_blur
from hazematching.nets import MPRNet
from hazematching.nets.layers import check_multiple

#: ε of the Charbonnier loss (normalised intensities are O(1)).
CHARBONNIER_EPS = 1e-3


class MPRNetOptions(BaseModel):
    """Defaults are the paper's deblurring MPRNet (20.1 M parameters); shrink for a CPU."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(96, ge=1, description="Feature channels of the shallow features and "
                          "the first encoder level.")
    unet_step: int = Field(48, ge=0, description="Channels added per encoder level.")
    orsnet_step: int = Field(32, ge=0, description="Extra channels of the stage-3 ORSNet.")
    n_cab: int = Field(8, ge=1, description="Channel-attention blocks per ORSNet block.")
    reduction: int = Field(4, ge=1, description="Channel-attention squeeze ratio.")
    edge_weight: float = Field(0.05, ge=0.0, description="Weight λ of the edge loss.")


def charbonnier(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of √((x − y)² + ε²) over two (B, C, H, W) tensors (float32), ε = 1e-3."""
    diff = prediction.float() - target.float()
    return torch.sqrt(diff * diff + CHARBONNIER_EPS ** 2).mean()


def laplacian(x: Tensor) -> Tensor:
    """The band-pass image ``x − G_1 ⊛ x`` of (B, 1, H, W) images (edges and fine detail)."""
    return x - gaussian_blur(x, 1.0)


@register
class MPRNetRegression(Regression):
    """MPRNet: three supervised stages, Charbonnier + edge loss."""

    name = "mprnet"
    Options = MPRNetOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        check_multiple(config.data.patch_size, MPRNet.multiple, "data.patch_size (mprnet)")

    def build_network(self) -> nn.Module:
        o = self.options
        return MPRNet(self.config.in_channels, 1, channels=o.channels, unet_step=o.unet_step,
                      orsnet_step=o.orsnet_step, n_cab=o.n_cab, reduction=o.reduction)

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Σ over stages of Charbonnier + λ·edge loss; target (B, 1, H, W), cond (B, C, H, W)."""
        target = target.float()
        edges = laplacian(target)
        loss = torch.zeros((), device=target.device)
        for out in self.net.forward_stages(cond):
            out = out.float()
            loss = loss + charbonnier(out, target)
            if self.options.edge_weight:
                loss = loss + self.options.edge_weight * charbonnier(laplacian(out), edges)
        return loss
