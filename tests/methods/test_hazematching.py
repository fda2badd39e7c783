"""HazeMatching's sampler against the exact velocity of a Gaussian posterior
(:class:`helpers.GaussianPosteriorVelocity`): its flow maps x0 to μ + s·x0, and at t = 0
x0 + v(0, x0) = μ for every x0 — the one-call posterior mean is exact."""

import numpy as np
import pytest
import torch
from helpers import POSTERIOR_STD as S
from helpers import GaussianPosteriorVelocity

from hazematching.config import ModelConfig
from hazematching.methods import build_method
from hazematching.predict import predict_planes


def _method(**sampling):
    cfg = ModelConfig.from_dict({
        "network": {"model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]},
        "sampling": {"tile_size": 32, "tile_overlap": 8, "batch_size": 16, "seed": 1,
                     **sampling}})
    m = build_method(cfg)
    m.net = GaussianPosteriorVelocity()
    return m


def test_one_call_estimate_is_the_posterior_mean_for_any_noise():
    m = _method()
    mu = torch.randn(4, 1, 16, 16)
    sample, estimate = m.posterior_batch(mu, torch.randn(4, 1, 16, 16))
    torch.testing.assert_close(estimate, mu, atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver,points,tol", [("euler", 200, 0.02), ("heun", 20, 5e-3),
                                               ("midpoint", 20, 5e-3)])
def test_samples_follow_the_exact_flow(solver, points, tol):
    m = _method(solver=solver, n_time_points=points, schedule="uniform")
    mu, noise = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    sample, _ = m.posterior_batch(mu, noise)
    torch.testing.assert_close(sample, mu + S * noise, atol=tol, rtol=0)


def test_predicted_mean_and_std_match_the_posterior():
    m = _method(solver="heun", n_time_points=12, schedule="late", mmse="t0", std="t0",
                antithetic=False, std_smoothing=0.0)
    mu = np.random.default_rng(0).normal(size=(1, 1, 40, 56)).astype(np.float32)
    res = predict_planes(m, mu, m.config.sampling, n_samples=64)
    np.testing.assert_allclose(res.mean, mu[:, 0], atol=1e-4)  # exact with any K
    assert res.std.mean() == pytest.approx(S, rel=0.03)
    paper = m.config.sampling.model_copy(update={"mmse": "samples", "std": "samples"})
    res = predict_planes(m, mu, paper, n_samples=64)
    # mean of 64 independent samples: error ~ S/8 per pixel, mean |error| = S/8·√(2/π)
    assert np.abs(res.mean - mu[:, 0]).mean() == pytest.approx(S * 0.8 / 8, rel=0.2)
    # antithetic pairs cancel the flow's (here exactly linear) dependence on x0
    anti = paper.model_copy(update={"antithetic": True})
    assert np.abs(predict_planes(m, mu, anti, n_samples=4).mean - mu[:, 0]).max() < 5e-3


def test_the_predictors_sampling_settings_choose_the_solver():
    # One Euler step from x0 lands on x0 + v(0, x0) = μ for every x0: no spread at all. The
    # predictor must use the solver it is given, not the one stored in the method's config.
    m = _method(solver="euler", n_time_points=2, schedule="uniform", std_smoothing=0.0)
    mu = np.zeros((1, 1, 16, 16), np.float32)
    one_step = predict_planes(m, mu, m.config.sampling, n_samples=8)
    assert one_step.std.max() < 1e-5
    fine = m.config.sampling.model_copy(update={"solver": "heun", "n_time_points": 12})
    assert predict_planes(m, mu, fine, n_samples=32).std.mean() == pytest.approx(S, rel=0.1)


@pytest.mark.parametrize("t_sampling", ["grid", "uniform"])
def test_t0_fraction_trains_t0_more_often(t_sampling):
    def zeros(fraction: float) -> float:
        cfg = ModelConfig.from_dict({
            "network": {"model_channels": 8, "channel_mult": [1, 2],
                        "attention_downsample": [2]},
            "training": {"t_sampling": t_sampling, "t0_fraction": fraction}})
        torch.manual_seed(0)
        t = build_method(cfg).sample_t(20000, torch.zeros(1))
        assert t.shape == (20000,) and 0 <= t.min() and t.max() <= 1
        return (t == 0).float().mean().item()

    on_grid = 1 / 20 if t_sampling == "grid" else 0.0
    assert zeros(0.0) == pytest.approx(on_grid, abs=0.005)
    assert zeros(0.3) == pytest.approx(0.3 + 0.7 * on_grid, abs=0.01)
