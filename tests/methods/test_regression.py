"""U-Net regression (CARE) baseline."""

import pytest
import torch
import torch.nn.functional as F

from hazematching.methods import build_method


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("regression")


def test_training_lowers_the_validation_loss(run) -> None:
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_mse_option_is_the_mean_squared_error(method_config) -> None:
    method = build_method(method_config("regression", loss="mse"))
    target, cond = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    expected = F.mse_loss(method.predict_batch(cond), target)
    assert torch.allclose(method.training_loss(target, cond), expected)


def test_unknown_option_is_rejected(method_config) -> None:
    with pytest.raises(ValueError, match="method_options"):
        method_config("regression", loss="huber")
