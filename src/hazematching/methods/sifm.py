"""Stochastic-interpolant flow matching from the observation (the SIFM baseline of HazeMatching,
Ray, Ashesh & Jug, arXiv 2506.22397).

Like HazeMatching, a velocity network v(t, x_t, y) sees the state and the widefield condition and
is trained on straight paths x_t = (1 − t)·x_0 + t·x_1 with target velocity x_1 − x_0; but the path
starts at the observation instead of pure noise: ``x_0 = y + σ·n``, n ~ N(0, 1), with σ =
``sigma_train`` in training and ``sigma_infer`` in inference (the paper's variants 0|0, 0|0.1 and
0.1|0.1). y is the first condition channel in its normalised units (see
:func:`~hazematching.methods.indi.degraded_image`). Inference integrates the ODE with the shared
solver and grid of ``config.sampling``; it is deterministic when ``sigma_infer`` is 0.

The variants are options of the one method, e.g. the paper's 0.0|0.1 is ``hazematching train
--method sifm --set method_options.sigma_train=0.0 --set method_options.sigma_infer=0.1`` (the
default is 0.1|0.1); the benchmark configs list all three.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from hazematching.config import ModelConfig
from hazematching.methods import register
from hazematching.methods.hazematching import HazeMatching, HazeMatchingOptions
from hazematching.methods.indi import degraded_image


class SIFMOptions(HazeMatchingOptions):
    sigma_train: float = Field(0.1, ge=0.0, description="Noise std added to y at the path "
                               "start in training (normalised units).")
    sigma_infer: float = Field(0.1, ge=0.0, description="Noise std added to y at the path "
                               "start in inference; > 0 makes prediction stochastic.")


@register
class SIFM(HazeMatching):
    """Flow from the (noisy) observation to the clean image; velocity network and time sampling
    are HazeMatching's."""

    name = "sifm"
    Options = SIFMOptions

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        # With sigma_infer = 0 the ODE from y has a single solution: no posterior to sample.
        self.stochastic = self.options.sigma_infer > 0

    def start(self, cond: Tensor, noise: Tensor, *, training: bool = False) -> Tensor:
        """Path start y + σ·n (B, 1, H, W), σ = sigma_train in training, else sigma_infer."""
        o = self.options
        sigma = o.sigma_train if training else o.sigma_infer
        y = degraded_image(cond)
        return y + sigma * noise if sigma > 0 else y
