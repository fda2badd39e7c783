"""ESRGAN-style baseline: manual optimisation of generator and discriminator."""

import numpy as np
import pytest
import torch
from helpers import make_pairs

from hazematching.api import Model, load_model
from hazematching.methods import build_method, gan
from hazematching.methods.gan import relativistic_average_loss

TINY_GAN = {"n_feats": 8, "n_blocks": 1, "growth": 4, "disc_feats": 8, "disc_layers": 2}


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("gan", **TINY_GAN)


def test_training_lowers_the_pixel_loss_and_trains_both_networks(run) -> None:
    run.check_training_lowers_the_loss()
    for name in ("net", "discriminator"):
        old = torch.nn.utils.parameters_to_vector(getattr(run.untrained, name).parameters())
        new = torch.nn.utils.parameters_to_vector(getattr(run.model.method, name).parameters())
        assert not torch.equal(old, new), f"{name} was not updated"


def test_both_losses_are_logged(run) -> None:
    header = next((run.out / "logs" / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    for column in ("train_loss", "train_pixel", "train_adv", "train_disc", "val_loss"):
        assert column in header


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_relativistic_loss_rewards_the_favoured_side() -> None:
    high, low = torch.full((2, 1, 3, 3), 5.0), torch.full((2, 1, 3, 3), -5.0)
    assert relativistic_average_loss(high, low) < 1e-3
    assert relativistic_average_loss(low, high) > 10
    # Indistinguishable sides: 2·log 2.
    assert np.isclose(relativistic_average_loss(low, low).item(), 2 * np.log(2))


def test_perceptual_loss_without_cached_weights_fails_clearly(method_config, monkeypatch,
                                                                tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    method = build_method(method_config("gan", perceptual_weight=1.0, **TINY_GAN))
    image = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="VGG19 weights .*perceptual_weight=0"):
        method.perceptual_loss(image, image)


def test_perceptual_term_is_trained_when_enabled(method_config, monkeypatch, tmp_path) -> None:
    # A stand-in backbone: the real VGG19 weights cannot be downloaded here.
    monkeypatch.setattr(gan, "vgg19_features", lambda: torch.nn.Conv2d(3, 4, 3))
    config = method_config("gan", perceptual_weight=1.0, **TINY_GAN)
    Model(config.with_overrides({"training.epochs": 1})).fit(make_pairs(3), out_dir=tmp_path)
    log = next((tmp_path / "logs" / "csv").rglob("metrics.csv")).read_text()
    assert "train_perceptual" in log.splitlines()[0]
    assert "vgg" not in " ".join(load_model(tmp_path).method.state_dict())


def test_patches_too_small_for_the_discriminator_fail_clearly(method_config) -> None:
    with pytest.raises(ValueError, match="disc_layers=4"):
        build_method(method_config("gan", **{**TINY_GAN, "disc_layers": 4}))
