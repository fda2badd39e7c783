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
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_samples_and_seeds_matter(run) -> None:
    method = run.model.method
    assert method.stochastic
    s = run.model.config.sampling
    assert method.network_calls() == network_calls(s.solver, s.n_time_points)
    run.check_stochastic_round_trip()


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


def test_the_paper_variants_are_options_and_share_training(train_tiny) -> None:
    # 0.0|0.0 trains without noise and predicts deterministically; 0.0|0.1 is the same weights
    # with noise at inference, so it is reached by reconfiguring the trained model.
    run = train_tiny("sifm", sigma_train=0.0, sigma_infer=0.0)
    run.check_training_lowers_the_loss()
    run.check_deterministic_round_trip()
    pred = run.predict(run.model)
    noisy = run.reloaded().reconfigure({"method_options.sigma_infer": 0.1})
    assert noisy.method.stochastic
    out = noisy.predict(run.pairs.inputs[0][0, 0], "YX", n_samples=3, device="cpu")
    assert out.std is not None and (out.std > 0).all()
    assert not np.array_equal(out.mmse, pred[:, :44])
