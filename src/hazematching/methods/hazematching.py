"""HazeMatching: guided conditional flow matching (Ray, Ashesh, Jug; arXiv 2506.22397).

Paths run from Gaussian noise x0 to the clean target x1: x_t = (1 − t)·x0 + t·x1, with target
velocity x1 − x0. The velocity network sees [x_t, y] where y is the hazy widefield condition.
Sampling integrates the ODE from fresh noise with y held fixed; each run is a posterior sample.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.base import Method, PixelLoss, pixel_loss, randn
from hazematching.nets import UNet
from hazematching.sampling import get_solver, network_calls, time_grid


class HazeMatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: PixelLoss = Field("mse", description="Velocity regression loss.")


@register
class HazeMatching(Method):
    """Conditional flow matching with the condition concatenated to the state."""

    name = "hazematching"
    stochastic = True
    Options = HazeMatchingOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.net = UNet(1 + config.in_channels, 1, config.network)

    def velocity(self, t: Tensor, x: Tensor, cond: Tensor) -> Tensor:
        """v(t, x_t, y): t (B,) in [0, 1], x (B,1,H,W), cond (B,C,H,W) → (B,1,H,W)."""
        return self.net(t, torch.cat([x, cond], dim=1))

    def sample_t(self, n: int, like: Tensor) -> Tensor:
        """Training times (n,): the paper's uniform grid by default, or U(0, 1)."""
        tc = self.config.training
        if tc.t_sampling == "grid":
            grid = time_grid(tc.n_time_points, like.device).to(like.dtype)
            return grid[torch.randint(0, tc.n_time_points, (n,), device=like.device)]
        return torch.rand(n, device=like.device, dtype=like.dtype)

    def source(self, cond: Tensor, generator: torch.Generator | None = None, *,
               training: bool = False) -> Tensor:
        """Path start x0 (B, 1, H, W): Gaussian noise. Other flows override this."""
        return randn((cond.shape[0], 1, *cond.shape[2:]), cond, generator)

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        x1 = target
        x0 = self.source(cond, training=True)
        t = self.sample_t(x1.shape[0], x1)
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * x1
        return pixel_loss(self.options.loss, self.velocity(t, xt, cond), x1 - x0)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        s = self.config.sampling
        solve = get_solver(s.solver)
        return solve(lambda t, x: self.velocity(t, x, cond), self.source(cond, generator),
                     time_grid(s.n_time_points, cond.device).to(cond.dtype))

    def network_calls(self) -> int:
        s = self.config.sampling
        return network_calls(s.solver, s.n_time_points)
