"""InDI: inversion by direct iteration (Delbracio & Milanfar, TMLR 2023, arXiv 2303.11435).

Time runs from the degraded image (t = 0) to the clean one (t = 1), the reverse of the paper's
labelling: ``x_t = (1 − t)·x_0 + t·x`` with ``x_0 = y (+ ε·n)``. A network F(x_t, t) — the shared
U-Net on the single channel x_t, as in the paper it does not see y separately — is trained with
t ~ U(0, 1) to predict the clean image x. Inference takes N uniform steps from x_0:

    x_{t+δ} = (δ / (1 − t))·F(x_t, t) + (1 − δ / (1 − t))·x_t,

which is exactly an explicit Euler step of ``dx/dt = (F(x, t) − x) / (1 − t)``; it is therefore
run by the shared Euler solver on the shared time grid. One step (N = 1) is direct regression
x̂ = F(y, 0); HazeMatching's comparison uses N = 1 and N = 20. With ε > 0, Gaussian noise of std
ε is added to the start point in training and inference — a simple form of the paper's noise
augmentation, which keeps x_t's density positive everywhere — and each prediction is then a
posterior sample.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import Method, pixel_loss, randn
from hazematching.methods.regression import RegressionOptions
from hazematching.nets import UNet
from hazematching.sampling import euler, time_grid


def degraded_image(cond: Tensor) -> Tensor:
    """The observation y as a point in target space: the first condition channel, (B, 1, H, W).

    Methods that start a path at y (InDI, SIFM) or process y directly (Richardson–Lucy) use it in
    its own normalised units: input and target are normalised separately by the same rule
    (z-scores or percentiles), so both are dimensionless with comparable ranges and no learned
    intensity map is needed between them. Further input channels only condition the networks.
    """
    return cond[:, :1]


def degraded_start(cond: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """Path start ``y + σ·n`` with n ~ N(0, 1) drawn from `generator`; (B, 1, H, W).

    `sigma` is in normalised units; with ``sigma == 0`` this is y itself and nothing is drawn.
    """
    y = degraded_image(cond)
    return y + sigma * randn(y.shape, y, generator) if sigma > 0 else y


class InDIOptions(RegressionOptions):
    steps: int = Field(20, ge=1, description="Inference steps N (1 = direct regression).")
    noise: float = Field(0.0, ge=0.0, description="Std ε of the Gaussian noise added to the "
                         "degraded start, in normalised units; > 0 makes prediction stochastic.")


@register
class InDI(Method):
    """Iterative restoration from y towards x by a clean-image predictor F(x_t, t)."""

    name = "indi"
    Options = InDIOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.in_channels != 1:
            raise ValueError(f"InDI interpolates between the input image and the target, so it "
                             f"needs in_channels=1, got {config.in_channels}")
        self.net = UNet(1, 1, config.network)
        # Deterministic unless the start point is noisy (class default False).
        self.stochastic = self.options.noise > 0

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        """Pixel loss between F(x_t, t) and the clean target, t ~ U(0, 1) per sample."""
        x0 = degraded_start(cond, self.options.noise, None)
        t = torch.rand(target.shape[0], device=target.device, dtype=target.dtype)
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * target
        return pixel_loss(self.options.loss, self.net(t, xt), target)

    def velocity(self, t: Tensor, x: Tensor) -> Tensor:
        """(F(x, t) − x) / (1 − t): t (B,) in [0, 1), x (B, 1, H, W) → (B, 1, H, W)."""
        return (self.net(t, x) - x) / (1 - t).view(-1, 1, 1, 1)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_1 after ``steps`` InDI updates from y (+ ε·n): (B, 1, H, W), normalised units.

        The last step has δ = 1 − t, so the result is F at the last iterate.
        """
        x0 = degraded_start(cond, self.options.noise, generator)
        grid = time_grid(self.options.steps + 1, cond.device).to(x0.dtype)
        return euler(self.velocity, x0, grid)

    def network_calls(self) -> int:
        return self.options.steps
