"""InDI baseline: iterative restoration from the input image."""

import pytest
import torch

from hazematching.methods import build_method


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("indi", steps=4)


def _randomised(method):
    # The U-Net's zero-initialised output layer would make F ≡ 0.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in method.net.out_conv.parameters():
            p.normal_(0.0, 0.1)
    return method.eval()


def test_training_lowers_the_validation_loss(run) -> None:
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    assert not run.model.method.stochastic
    assert run.model.method.network_calls() == 4
    run.check_deterministic_round_trip()


@pytest.mark.parametrize("steps", [1, 3])
def test_prediction_follows_the_indi_update(method_config, steps: int) -> None:
    method = _randomised(build_method(method_config("indi", steps=steps)))
    cond = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        x = cond.clone()
        for k in range(steps):
            t, delta = k / steps, 1 / steps
            f = method.net(torch.full((2,), t), x)
            x = delta / (1 - t) * f + (1 - delta / (1 - t)) * x
        out = method.predict_batch(cond)
        if steps == 1:  # direct regression from the input
            torch.testing.assert_close(out, method.net(0.0, cond))
    assert out.shape == (2, 1, 32, 32)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_noisy_start_is_stochastic_and_seeded(method_config) -> None:
    method = _randomised(build_method(method_config("indi", steps=2, noise=0.1)))
    assert method.stochastic
    cond = torch.randn(1, 1, 32, 32)
    draw = lambda seed: method.predict_batch(cond, torch.Generator().manual_seed(seed))  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(draw(0), draw(0))
        assert not torch.allclose(draw(0), draw(1))


def test_several_input_channels_are_rejected(method_config) -> None:
    config = method_config("indi").with_overrides({"in_channels": 2})
    with pytest.raises(ValueError, match="in_channels=1"):
        build_method(config)
