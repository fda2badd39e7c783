"""LVAE baseline: a conditional hierarchical VAE (:class:`~hazematching.nets.LadderVAE`, HDN /
μSplit style) that gives posterior samples, like HazeMatching.

Training maximises the evidence lower bound of the target x given the widefield condition y,
per pixel (nats):

    L = E_q[−log N(x; μ_θ(z, y), σ²)] + β · KL(q(z | x, y) ‖ p(z | y)) / (H·W),

with the KL divergences of all latent levels summed. The likelihood's σ is not a parameter but
its maximum-likelihood value for the batch, σ² = MSE, so the reconstruction term is
``0.5·log(2π·MSE) + 0.5`` (the "σ-VAE" of Rybkin, Daniilidis & Levine, ICML 2021). With σ
fixed at the data's spread, or learned as a parameter (which shrinks by ~lr per step), the KL
term dominates early and the latents are switched off (on tiny simulated pairs: KL below 1e-3
nats/px within 70 steps); at the ML σ they stay in use. Each prediction
decodes latents drawn from the conditional priors, i.e. one sample of p(x | y): the shared
predictor averages them into the MMSE estimate and their spread into a std that is calibrated
like HazeMatching's.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import Method
from hazematching.nets import LadderVAE
from hazematching.nets.layers import check_multiple

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: Floor of the MSE inside the log (σ ≥ 1e-3 in normalised units).
_MIN_MSE = 1e-6


class LVAEOptions(BaseModel):
    """Defaults follow μSplit's LVAE width (64 channels, 1 block per level) with four latent
    levels of 32 channels; shrink for a CPU."""

    model_config = ConfigDict(extra="forbid")

    channels: int = Field(64, ge=1, description="Feature channels of every path.")
    z_channels: int = Field(32, ge=1, description="Channels of each latent map.")
    n_levels: int = Field(4, ge=1, description="Latent levels, at 1/2 … 1/2**n_levels of the "
                          "image size (patch sides must be divisible by 2**n_levels).")
    blocks: int = Field(1, ge=0, description="Residual blocks per level and path.")
    beta: float = Field(1.0, ge=0.0, description="Weight of the KL term (1: the ELBO).")


@register
class LVAE(Method):
    """Conditional ladder VAE: ELBO training, samples from the conditional priors."""

    name = "lvae"
    stochastic = True
    Options = LVAEOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        o = self.options
        self.net = LadderVAE(config.in_channels, 1, channels=o.channels,
                             z_channels=o.z_channels, n_levels=o.n_levels, blocks=o.blocks)
        check_multiple(config.data.patch_size, self.net.multiple,
                       f"data.patch_size (lvae with n_levels={o.n_levels})")

    def elbo_terms(self, target: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction NLL and KL, each in nats per pixel (scalars, float32).

        Args:
            target: (B, 1, H, W) normalised clean images.
            cond: (B, C, H, W) normalised widefield images.
        """
        mean, kl = self.net(cond, target)
        mse = ((target.float() - mean.float()) ** 2).mean()
        # The Gaussian NLL at its maximum-likelihood σ² = MSE: 0.5·log(2π·MSE) + 0.5.
        nll = 0.5 * torch.log(mse.clamp_min(_MIN_MSE)) + 0.5 + _HALF_LOG_2PI
        return nll, kl.mean() / target[0].numel()

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """The negative ELBO per pixel with the KL weighted by β."""
        nll, kl = self.elbo_terms(target, cond)
        return nll + self.options.beta * kl

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One posterior sample (B, 1, H, W) per condition (B, C, H, W), normalised units."""
        return self.net.sample(cond, generator)
