"""The network inside a BioImage Model Zoo package: a model's whole prediction rule as one module.

A BMZ consumer (bioimageio.core, the BMZ website, napari/deepImageJ bridges) calls a model once
per input block and expects the same numbers every time. :class:`BMZNetwork` therefore runs the
complete, seeded prediction of a method on a batch of normalised input blocks:

* ``method="hazematching"``: ``n_samples`` posterior samples per block, each an ODE solve from
  Gaussian noise x0 with the velocity network v(t, [x_t, y]), on the model's solver and time grid
  (``sampling.solver``, ``n_time_points``, ``schedule``). The MMSE is formed as
  ``sampling.mmse`` says: 'samples' = the mean of the ODE end points, with their sample std
  (ddof = 1); 't0' = the mean m of the one-call estimates x0 + v(0, x0, y) of the same draws
  (the solver's first evaluation), with the spread of the end points about m, √(Σ(x − m)²/n).
  Both are accumulated by the tiled predictor's own per-tile moments (float64).
* ``method="regression"``: the U-Net at t = 0, one deterministic forward pass.

Block b's sample k starts from the noise field of plane b, sample k of
:class:`~hazematching.noise_field.NoiseField` (seeded with `seed`, drawn afresh at every call),
as the shared tiled predictor (:func:`hazematching.predict.predict_planes`) does: a block that
is one tile of ``Model.predict`` gets the same samples, MMSE and std.

This module is packaged as the architecture source of the BMZ package, bundled with the U-Net,
the ODE solvers, the noise field and :class:`~hazematching.config.NetworkConfig` into one file
that needs only torch, numpy and pydantic (see :mod:`hazematching.bmz.bundle`): import only from
those modules here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hazematching.calibration import Calibration
from hazematching.config import NetworkConfig
from hazematching.nets.unet import UNet
from hazematching.noise_field import NoiseField
from hazematching.predict import TileMoments, default_batch_size, noise_tile, smooth_variance
from hazematching.sampling import get_solver, time_grid

#: The prediction rules :class:`BMZNetwork` implements, by method name.
BMZ_METHODS = ("hazematching", "regression")
#: How the MMSE may be formed (``sampling.mmse``).
MMSE_RULES = ("samples", "t0")


class BMZNetwork(nn.Module):
    """Deterministic prediction of a U-Net method on normalised blocks.

    Args:
        method: 'hazematching' (posterior mean and std) or 'regression' (one prediction).
        in_channels: input (widefield) channels C.
        network: the fields of :class:`~hazematching.config.NetworkConfig`.
        solver, n_time_points, schedule: the ODE solver and its time grid (hazematching only).
        n_samples: posterior samples per block, at least 2 (hazematching only).
        mmse: 'samples' or 't0' (see the module docstring); std: the same choice for the spread.
        antithetic: draw the noise in antithetic pairs; std_smoothing: Gaussian σ (px) of the
            variance map (see :class:`~hazematching.config.SamplingConfig`).
        batch_size: (block, sample) pairs per network call; None: the predictor's default for
            the device the network runs on.
        seed: seed of the noise field.
        calibration: the model's std calibration as :meth:`Calibration.to_dict` writes it
            (a, b and, for a monotone map, knots; normalised units), applied to the std before
            it is returned; None: the std is the uncalibrated spread.
    """

    def __init__(self, method: str, in_channels: int, network: dict[str, Any], *,
                 solver: str = "euler", n_time_points: int = 20, schedule: str = "uniform",
                 n_samples: int = 2, mmse: str = "samples", std: str = "samples",
                 antithetic: bool = False, std_smoothing: float = 0.0,
                 batch_size: int | None = None, seed: int = 0,
                 calibration: dict[str, Any] | None = None):
        super().__init__()
        if method not in BMZ_METHODS:
            raise ValueError(f"method {method!r} has no BMZ prediction rule; expected one of "
                             f"{', '.join(BMZ_METHODS)}")
        for name, rule in (("mmse", mmse), ("std", std)):
            if rule not in MMSE_RULES:
                raise ValueError(f"{name}={rule!r}: expected one of {', '.join(MMSE_RULES)}")
        if method == "hazematching" and n_samples < 2:
            raise ValueError(f"n_samples={n_samples}: a posterior std needs at least 2 samples")
        self.method = method
        self.solver = get_solver(solver)
        self.grid = time_grid(n_time_points, "cpu", schedule)
        self.n_samples, self.mmse, self.std = n_samples, mmse, std
        self.antithetic, self.std_smoothing = antithetic, std_smoothing
        self.batch_size, self.seed = batch_size, seed
        self.calibration = None if calibration is None else Calibration(**calibration)
        flow = method == "hazematching"
        self.net = UNet(in_channels + 1 if flow else in_channels, 1, NetworkConfig(**network))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Predict normalised blocks.

        Args:
            x: (B, C, Y, X) float32 normalised input; Y, X multiples of the U-Net's divisor.

        Returns:
            regression: (B, 1, Y, X) prediction. hazematching: (mmse, std), each
            (B, 1, Y, X) float32 in normalised target units; the std calibrated when the
            network was given a calibration.
        """
        if self.method == "regression":
            return self.net(0.0, x)
        return self._posterior(x)

    def _posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = x.shape
        field = NoiseField(self.seed)
        grid = self.grid.to(x.device, x.dtype)
        items = [(i, j) for i in range(b) for j in range(self.n_samples)]
        moments = [TileMoments((h, w), x.device, True) for _ in range(b)]
        batch = self.batch_size or default_batch_size(x.device, h * w)
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            rows = torch.tensor([i for i, _ in chunk], device=x.device)
            cond = x.index_select(0, rows)
            noise = np.stack([noise_tile(field, (i, 0, 0), j, h, w, self.antithetic)
                              for i, j in chunk])[:, None]
            x0 = torch.from_numpy(noise).to(x.device, x.dtype)
            first: list[Tensor] = []

            def velocity(t: Tensor, z: Tensor, cond: Tensor = cond, first: list = first
                         ) -> Tensor:
                v = self.net(t, torch.cat([z, cond], dim=1))
                if not first:
                    first.append(v)
                return v

            end = self.solver(velocity, x0, grid)[:, 0].double()
            estimate = (x0 + first[0])[:, 0].double()
            for i in rows.unique().tolist():
                sel = (rows == i).nonzero()[:, 0]
                moments[i].add(end[sel], estimate[sel])
        mean, var = zip(*(m.mean_var(self.mmse, self.std) for m in moments), strict=True)
        var = smooth_variance(torch.stack(var), self.std_smoothing)
        std = var[:, None].sqrt().float()
        if self.calibration is not None:
            std = torch.from_numpy(self.calibration.apply(std.cpu().numpy())).to(x.device)
        return torch.stack(mean)[:, None].float(), std
