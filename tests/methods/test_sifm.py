"""SIFM baseline: flow matching from the (noisy) observation to the clean image."""

import numpy as np
import pytest
import torch

from hazematching.methods import build_method
from hazematching.sampling import network_calls


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("sifm", sigma_train=0.1, sigma_infer=0.1)


def test_training_lowers_the_validation_loss(run) -> None:
    before, after = run.loss(run.untrained), run.loss(run.model.method)
    print(f"sifm val MSE (velocity): {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


def test_save_load_gives_identical_samples_and_seeds_matter(run) -> None:
    method = run.model.method
    assert method.stochastic
    s = run.model.config.sampling
    assert method.network_calls() == network_calls(s.solver, s.n_time_points)
    pred = run.predict(run.model)
    assert pred.shape == (48, 44)
    np.testing.assert_array_equal(pred, run.predict(run.reloaded()))
    assert not np.array_equal(pred, run.predict(run.model, seed=1))


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_paths_start_at_the_noisy_observation(method_config, sigma: float) -> None:
    # The untrained velocity is zero (zero-initialised output layer): the ODE stays at x0.
    config = method_config("sifm", sigma_train=0.0, sigma_infer=sigma)
    method = build_method(config.with_overrides({"in_channels": 2})).eval()
    assert method.stochastic == (sigma > 0)
    cond = torch.randn(4, 2, 32, 32)
    with torch.no_grad():
        out = method.predict_batch(cond, torch.Generator().manual_seed(0))
    noise = out - cond[:, :1]
    assert noise.abs().max() == 0 if sigma == 0 else abs(noise.std().item() - sigma) < 0.05
