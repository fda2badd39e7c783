"""Supervised U-Net regression, the CARE baseline (Weigert et al., Nature Methods 2018).

One network maps the widefield condition straight to the target and is trained with a pixel loss
(mean squared or mean absolute error); prediction is a single deterministic forward pass. CARE has
no notion of time, so the shared flow-matching :class:`~hazematching.nets.UNet` is evaluated at the
constant time t = 0: its time embedding then becomes a fixed learned bias and the network is an
ordinary U-Net. :class:`Regression` is also the base of the other direct-regression baselines
(RCAN, ESRGAN), which differ only in their network and, for the GAN, their training step.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import Method, PixelLoss, pixel_loss
from hazematching.nets import UNet


class RegressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # L1 is CARE's default (CSBDeep 'mae') and the loss of RCAN and ESRGAN's content term.
    loss: PixelLoss = Field("l1", description="Pixel loss: 'l1' (mean absolute error) or 'mse'.")


class _ConstantTime(nn.Module):
    """The time-conditioned U-Net at t = 0: ``(B, C, H, W) → (B, 1, H, W)``."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor) -> Tensor:
        return self.unet(0.0, x)


@register
class Regression(Method):
    """Direct regression ``x̂ = f(y)`` of the normalised target from the normalised condition."""

    name = "regression"
    Options = RegressionOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.net = self.build_network()

    def build_network(self) -> nn.Module:
        """The restoration network ``(B, in_channels, H, W) → (B, 1, H, W)``.

        Subclasses override this to swap the architecture; here the shared U-Net built from
        ``config.network`` (its output layer is zero-initialised, so training starts from the
        prediction 0 = the mean of z-scored targets).
        """
        return _ConstantTime(UNet(self.config.in_channels, 1, self.config.network))

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Pixel loss between f(cond) and target, both (B, 1, H, W) normalised."""
        return pixel_loss(self.options.loss, self.net(cond), target)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """f(cond): (B, C, H, W) → (B, 1, H, W), normalised target units (`generator` unused)."""
        return self.net(cond)
