"""U-Net regression (CARE) baseline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hazematching.methods import build_method


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("regression")


def test_training_lowers_the_validation_loss(run) -> None:
    before, after = run.loss(run.untrained), run.loss(run.model.method)
    print(f"regression val L1: {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


def test_save_load_gives_identical_predictions(run) -> None:
    pred = run.predict(run.model)
    assert pred.shape == (48, 44)
    np.testing.assert_array_equal(pred, run.predict(run.reloaded()))


def test_prediction_is_deterministic(run) -> None:
    assert not run.model.method.stochastic
    np.testing.assert_array_equal(run.predict(run.model, seed=0), run.predict(run.model, seed=1))


def test_mse_option_is_the_mean_squared_error(method_config) -> None:
    method = build_method(method_config("regression", loss="mse"))
    target, cond = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    expected = F.mse_loss(method.predict_batch(cond), target)
    assert torch.allclose(method.training_loss(target, cond), expected)


def test_unknown_option_is_rejected(method_config) -> None:
    with pytest.raises(ValueError, match="method_options"):
        method_config("regression", loss="huber")
