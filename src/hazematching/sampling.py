"""ODE solvers for flow-matching sampling, all with one signature, and the time grids.

Each solver integrates dx/dt = v(t, x) from t = 0 (noise) to t = 1 (data) over a fixed grid and
returns only the end point: no trajectory is kept, so memory does not grow with the number of
steps. ``solver(velocity, x0, t_grid) -> x1`` with ``velocity(t, x)`` taking ``t`` of shape (B,)
and ``x`` of shape (B, C, H, W). The grid is one for the whole batch, (n,), or one per row,
(n, B): each row then integrates over its own interval (as flow-map distillation needs, whose
teacher integrates every training state from its own time to the next). Every solver evaluates the field first at (t_grid[0], x0): for a
grid starting at 0 that first call is the one-call posterior-mean estimate x0 + v(0, x0) (see
:func:`hazematching.methods.hazematching.HazeMatching.posterior_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
Solver = Callable[[VelocityFn, Tensor, Tensor], Tensor]
Schedule = Literal["uniform", "late"]

#: Exponent of the "late" schedule t_k = 1 − (1 − k/n)^p: steps shrink towards t = 1, where the
#: conditional field sharpens (the posterior collapses onto fine structure); p = 2 halves the
#: last step of a uniform grid of the same length twice over.
LATE_POWER = 2.0


def time_grid(n_points: int, device: torch.device | str = "cpu",
              schedule: Schedule = "uniform") -> Tensor:
    """Time points (n_points,) from 0 to 1.

    ``uniform``: linspace(0, 1, n_points) (the paper: 20 points, 19 steps). ``late``:
    t_k = 1 − (1 − k/(n−1))^2, denser near t = 1 (the end where a few-step sampler loses
    texture) and coarser near t = 0 (where the field is almost constant in x).
    """
    if n_points < 2:
        raise ValueError(f"a time grid needs at least 2 points, got {n_points}")
    u = torch.linspace(0.0, 1.0, n_points, device=device)
    if schedule == "uniform":
        return u
    if schedule == "late":
        return 1.0 - (1.0 - u) ** LATE_POWER
    raise ValueError(f"unknown time schedule {schedule!r}; expected 'uniform' or 'late'")


def _step(t_grid: Tensor, k: int, like: Tensor) -> Tensor:
    """The k-th step size of a (n,) or (n, B) grid, shaped to broadcast against `like`."""
    h = t_grid[k + 1] - t_grid[k]
    return h.view(-1, *([1] * (like.dim() - 1))) if h.dim() else h


def _times(t_b: Tensor, t: Tensor) -> Tensor:
    """Fill the (B,) time buffer `t_b` with `t` (a scalar or one time per row)."""
    return t_b.copy_(t.expand_as(t_b))


def euler(velocity: VelocityFn, x0: Tensor, t_grid: Tensor) -> Tensor:
    """Explicit Euler: x_{k+1} = x_k + h_k·v(t_k, x_k). One network call per step."""
    x = x0
    t_b = torch.empty(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for k in range(len(t_grid) - 1):
        x = x + _step(t_grid, k, x) * velocity(_times(t_b, t_grid[k]), x)
    return x


def heun(velocity: VelocityFn, x0: Tensor, t_grid: Tensor) -> Tensor:
    """Heun's method (explicit trapezoidal rule, 2nd order). Two network calls per step."""
    x = x0
    t_b = torch.empty(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for k in range(len(t_grid) - 1):
        h = _step(t_grid, k, x)
        v0 = velocity(_times(t_b, t_grid[k]), x)
        x_pred = x + h * v0
        v1 = velocity(_times(t_b, t_grid[k + 1]), x_pred)
        x = x + 0.5 * h * (v0 + v1)
    return x


def midpoint(velocity: VelocityFn, x0: Tensor, t_grid: Tensor) -> Tensor:
    """Explicit midpoint rule (2nd order): x_{k+1} = x_k + h·v(t_k + h/2, x_k + h/2·v(t_k, x_k)).

    Two calls per step like Heun, but it never evaluates the field at t = 1, where a flow
    trained on a grid ending at 1 has seen only clean states.
    """
    x = x0
    t_b = torch.empty(x0.shape[0], device=x0.device, dtype=x0.dtype)
    for k in range(len(t_grid) - 1):
        h = _step(t_grid, k, x)
        v0 = velocity(_times(t_b, t_grid[k]), x)
        t_mid = t_grid[k] + 0.5 * (t_grid[k + 1] - t_grid[k])
        v_mid = velocity(_times(t_b, t_mid), x + 0.5 * h * v0)
        x = x + h * v_mid
    return x


SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun, "midpoint": midpoint}
CALLS_PER_STEP: dict[str, int] = {"euler": 1, "heun": 2, "midpoint": 2}


def get_solver(name: str) -> Solver:
    """Look up a solver by name ('euler', 'heun', 'midpoint')."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; expected one of {', '.join(SOLVERS)}") from None


def network_calls(solver: str, n_points: int) -> int:
    """Network evaluations for one solve over an n_points grid."""
    return CALLS_PER_STEP[solver] * (n_points - 1)
