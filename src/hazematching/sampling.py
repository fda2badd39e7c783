"""ODE solvers for flow-matching sampling, all with one signature, and the time grid.

Each solver integrates dx/dt = v(t, x) from t = 0 (noise) to t = 1 (data) over a fixed grid and
returns only the end point: no trajectory is kept, so memory does not grow with the number of
steps. ``solver(velocity, x0, t_grid) -> x1`` with ``velocity(t, x)`` taking ``t`` of shape (B,)
and ``x`` of shape (B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
Solver = Callable[[VelocityFn, Tensor, Tensor], Tensor]


def time_grid(n_points: int, device: torch.device | str = "cpu") -> Tensor:
    """The uniform grid linspace(0, 1, n_points) (the paper: 20 points, 19 steps)."""
    if n_points < 2:
        raise ValueError(f"a time grid needs at least 2 points, got {n_points}")
    return torch.linspace(0.0, 1.0, n_points, device=device)


def euler(velocity: VelocityFn, x0: Tensor, t_grid: Tensor) -> Tensor:
    """Explicit Euler: x_{k+1} = x_k + h_k·v(t_k, x_k). One network call per step."""
    x = x0
    t_b = torch.empty(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for k in range(len(t_grid) - 1):
        h = t_grid[k + 1] - t_grid[k]
        x = x + h * velocity(t_b.fill_(t_grid[k]), x)
    return x


def heun(velocity: VelocityFn, x0: Tensor, t_grid: Tensor) -> Tensor:
    """Heun's method (explicit trapezoidal rule, 2nd order). Two network calls per step."""
    x = x0
    t_b = torch.empty(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for k in range(len(t_grid) - 1):
        h = t_grid[k + 1] - t_grid[k]
        v0 = velocity(t_b.fill_(t_grid[k]), x)
        x_pred = x + h * v0
        v1 = velocity(t_b.fill_(t_grid[k + 1]), x_pred)
        x = x + 0.5 * h * (v0 + v1)
    return x


SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun}
CALLS_PER_STEP: dict[str, int] = {"euler": 1, "heun": 2}


def get_solver(name: str) -> Solver:
    """Look up a solver by name ('euler', 'heun')."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; expected one of {', '.join(SOLVERS)}") from None


def network_calls(solver: str, n_points: int) -> int:
    """Network evaluations for one solve over an n_points grid."""
    return CALLS_PER_STEP[solver] * (n_points - 1)
