"""HazeMatching: guided conditional flow matching (Ray, Ashesh, Jug; arXiv 2506.22397).

Paths run from Gaussian noise x0 to the clean target x1: x_t = (1 − t)·x0 + t·x1, with target
velocity x1 − x0. The velocity network sees [x_t, y] where y is the hazy widefield condition.
Sampling integrates the ODE from fresh noise with y held fixed; each run is a posterior sample.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from hazematching.config import ModelConfig, SamplingConfig
from hazematching.methods import register
from hazematching.methods.base import Method, PixelLoss, pixel_loss, randn
from hazematching.nets import UNet
from hazematching.sampling import get_solver, network_calls, time_grid


class HazeMatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: PixelLoss = Field("mse", description="Velocity regression loss.")
    distilled_steps: int | None = Field(
        None, ge=1, description="Set by `hazematching distill`: the network was distilled into "
        "a flow map of this many uniform Euler steps, each the average velocity over its step. "
        "Its sampling grid is fixed: Euler on distilled_steps + 1 uniform time points.")


def distilled_grid(steps: int) -> dict[str, Any]:
    """The ``sampling`` settings a network distilled to `steps` Euler steps is sampled with."""
    return {"solver": "euler", "n_time_points": steps + 1, "schedule": "uniform"}


@register
class HazeMatching(Method):
    """Conditional flow matching with the condition concatenated to the state."""

    name = "hazematching"
    stochastic = True
    takes_noise = True
    Options = HazeMatchingOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.net = UNet(1 + config.in_channels, 1, config.network)

    @classmethod
    def fixed_sampling(cls, config: ModelConfig) -> dict[str, Any]:
        """A distilled network's sampling grid (see :func:`distilled_grid`); {} otherwise."""
        steps = cls.Options.model_validate(config.method_options).distilled_steps
        return distilled_grid(steps) if steps else {}

    def velocity(self, t: Tensor, x: Tensor, cond: Tensor) -> Tensor:
        """v(t, x_t, y): t (B,) in [0, 1], x (B,1,H,W), cond (B,C,H,W) → (B,1,H,W)."""
        return self.net(t, torch.cat([x, cond], dim=1))

    def sample_t(self, n: int, like: Tensor) -> Tensor:
        """Training times (n,): the paper's uniform grid by default, or U(0, 1); a share
        ``training.t0_fraction`` of them (in expectation) set to 0."""
        tc = self.config.training
        if tc.t_sampling == "grid":
            grid = time_grid(tc.n_time_points, like.device).to(like.dtype)
            t = grid[torch.randint(0, tc.n_time_points, (n,), device=like.device)]
        else:
            t = torch.rand(n, device=like.device, dtype=like.dtype)
        if tc.t0_fraction > 0:
            t = torch.where(torch.rand(n, device=like.device) < tc.t0_fraction, 0.0, t)
        return t

    def start(self, cond: Tensor, noise: Tensor, *, training: bool = False) -> Tensor:
        """Path start x0 (B, 1, H, W) from standard-normal `noise`: the noise itself. Flows
        that start elsewhere (SIFM: at the observation) override this."""
        return noise

    @staticmethod
    def noise(cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fresh standard-normal noise (B, 1, H, W) shaped like one output per condition."""
        return randn((cond.shape[0], 1, *cond.shape[2:]), cond, generator)

    def source(self, cond: Tensor, generator: torch.Generator | None = None, *,
               training: bool = False) -> Tensor:
        """Path start x0 (B, 1, H, W) from fresh noise drawn with `generator`."""
        return self.start(cond, self.noise(cond, generator), training=training)

    def training_loss(self, target: Tensor, cond: Tensor) -> Tensor:
        x1 = target
        x0 = self.source(cond, training=True)
        t = self.sample_t(x1.shape[0], x1)
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * x1
        return pixel_loss(self.options.loss, self.velocity(t, xt, cond), x1 - x0)

    def predict_batch(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.posterior_batch(cond, self.noise(cond, generator))[0]

    def posterior_batch(self, cond: Tensor, noise: Tensor,
                        sampling: SamplingConfig | None = None) -> tuple[Tensor, Tensor]:
        """A posterior sample (the ODE end point from x0) and the one-call estimate of the
        posterior mean x0 + v(0, x0, y), both (B, 1, H, W); solver and time grid from
        `sampling` (default: the method's own ``config.sampling``), except for a distilled
        network, which is always sampled on its own grid (:func:`distilled_grid`).

        The estimate is free: it is the solver's first evaluation. At the optimum of the
        flow-matching loss v(0, x0, y) = E[x1 | y] − E[x0 | x0, y], so x0 + v(0, x0, y) is
        E[x1 | y] for every x0 (x0 carries no information about x1 at t = 0); a trained network
        leaves a residual dependence on x0 that averaging over draws removes.
        """
        s = sampling or self.config.sampling
        if self.options.distilled_steps:  # the grid the flow map was distilled for, always
            s = s.model_copy(update=distilled_grid(self.options.distilled_steps))
        x0 = self.start(cond, noise)
        grid = time_grid(s.n_time_points, cond.device, s.schedule).to(cond.dtype)
        first: list[Tensor] = []

        def velocity(t: Tensor, x: Tensor) -> Tensor:
            v = self.velocity(t, x, cond)
            if not first:
                first.append(v)
            return v

        sample = get_solver(s.solver)(velocity, x0, grid)
        return sample, x0 + first[0].to(x0.dtype)

    def network_calls(self) -> int:
        s = self.config.sampling
        return network_calls(s.solver, s.n_time_points)
