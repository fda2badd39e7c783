"""Restormer baseline: training through Model.fit, model files, seeded training."""

import pytest
import torch
from helpers import make_pairs

from hazematching.api import Model
from hazematching.methods import build_method
from hazematching.nets import Restormer

TINY_RESTORMER = {"channels": 8, "blocks": [1, 1], "heads": [1, 2], "refinement_blocks": 0,
                  "ffn_expansion": 2.0}


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("restormer", **TINY_RESTORMER)


def test_training_lowers_the_validation_loss(run) -> None:
    assert isinstance(run.model.method.net, Restormer)
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_training_is_seeded(method_config, tmp_path) -> None:
    def weights(seed: int, out: str) -> torch.Tensor:
        config = method_config("restormer", {"training.epochs": 1, "training.seed": seed},
                               **TINY_RESTORMER)
        # Model() draws the initial weights from the global generator; fit() seeds the rest.
        torch.manual_seed(0)
        model = Model(config).fit(make_pairs(3), out_dir=tmp_path / out)
        return torch.nn.utils.parameters_to_vector(model.method.parameters())

    first = weights(0, "a")
    assert torch.equal(first, weights(0, "b"))
    assert not torch.equal(first, weights(1, "c"))


def test_options_are_validated_before_any_work(method_config) -> None:
    with pytest.raises(ValueError, match="one entry per level"):
        method_config("restormer", blocks=[1, 1, 1], heads=[1, 2])
    with pytest.raises(ValueError, match="divisible by its heads"):
        build_method(method_config("restormer", **{**TINY_RESTORMER, "heads": [3, 2]}))
