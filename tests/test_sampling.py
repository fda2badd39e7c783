"""ODE solvers against velocity fields with exact solutions."""

import math

import pytest
import torch

from hazematching.sampling import euler, get_solver, heun, network_calls, time_grid


def _linear(a: float):
    return lambda t, x: a * x


def test_time_grid_is_paper_grid():
    g = time_grid(20)
    assert g.shape == (20,) and g[0] == 0 and g[-1] == 1
    assert torch.allclose(g[1:] - g[:-1], torch.full((19,), 1 / 19))
    with pytest.raises(ValueError, match="at least 2"):
        time_grid(1)


def test_constant_velocity_is_exact_for_both_solvers():
    x0 = torch.randn(3, 1, 4, 4)
    v = torch.randn(3, 1, 4, 4)
    for solver in (euler, heun):
        x1 = solver(lambda t, x: v, x0, time_grid(5))
        assert torch.allclose(x1, x0 + v, atol=1e-6)


def test_straight_path_velocity_recovers_target():
    # The exact flow-matching velocity of a single pair: v = (x1 - x) / (1 - t).
    x1 = torch.randn(2, 1, 3, 3)
    x0 = torch.randn(2, 1, 3, 3)
    vel = lambda t, x: (x1 - x) / (1 - t.view(-1, 1, 1, 1))  # noqa: E731
    out = euler(vel, x0, time_grid(20))
    assert torch.allclose(out, x1, atol=1e-5)


def test_convergence_orders_on_exponential_growth():
    # dx/dt = x, x(1) = e·x0; Euler error ~ h, Heun error ~ h².
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    errs = {}
    for name in ("euler", "heun"):
        solve = get_solver(name)
        e = [abs(float(solve(_linear(1.0), x0, time_grid(n).double())) - math.e)
             for n in (11, 21, 41)]
        errs[name] = [e[0] / e[1], e[1] / e[2]]
    assert all(1.8 < r < 2.2 for r in errs["euler"])
    assert all(3.6 < r < 4.4 for r in errs["heun"])


def test_network_calls_and_unknown_solver():
    assert network_calls("euler", 20) == 19
    assert network_calls("heun", 20) == 38
    with pytest.raises(ValueError, match="unknown solver 'rk9'"):
        get_solver("rk9")


def test_late_schedule_is_denser_near_one():
    g = time_grid(7, schedule="late")
    h = g[1:] - g[:-1]
    assert g[0] == 0 and g[-1] == 1 and (h > 0).all()
    assert (h[1:] < h[:-1]).all()  # steps shrink towards t = 1
    assert h[-1] < 1 / 6 < h[0]
    with pytest.raises(ValueError, match="unknown time schedule"):
        time_grid(5, schedule="cosine")


def test_midpoint_is_second_order_and_exact_for_constant_fields():
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    e = [abs(float(get_solver("midpoint")(_linear(1.0), x0, time_grid(n).double())) - math.e)
         for n in (11, 21, 41)]
    assert all(3.6 < a / b < 4.4 for a, b in zip(e, e[1:]))
    v = torch.randn(2, 1, 3, 3)
    out = get_solver("midpoint")(lambda t, x: v, x0.float().expand(2, 1, 3, 3), time_grid(3))
    assert torch.allclose(out, 1 + v, atol=1e-6)
    assert network_calls("midpoint", 4) == 6


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint"])
def test_a_grid_per_row_integrates_each_row_over_its_own_interval(name):
    # A time-dependent field, so that a row solved on the wrong interval would differ.
    def field(t, x):
        return torch.cos(3 * t).view(-1, 1, 1, 1) * x + t.view(-1, 1, 1, 1)

    solver = get_solver(name)
    x = torch.randn(3, 1, 4, 4)
    starts, ends = torch.tensor([0.0, 0.25, 0.5]), torch.tensor([0.25, 0.5, 1.0])
    frac = torch.linspace(0, 1, 4)
    per_row = solver(field, x, starts[None] + frac[:, None] * (ends - starts)[None])
    assert per_row.shape == x.shape
    for i in range(3):
        alone = solver(field, x[i:i + 1], starts[i] + frac * (ends[i] - starts[i]))
        torch.testing.assert_close(per_row[i:i + 1], alone, atol=1e-6, rtol=0)
