"""MPRNet baseline: three supervised stages trained through Model.fit, model files."""

import numpy as np
import pytest
import torch

from hazematching.methods import build_method
from hazematching.methods.mprnet import charbonnier, laplacian
from hazematching.nets import MPRNet

TINY_MPRNET = {"channels": 8, "unet_step": 4, "orsnet_step": 4, "n_cab": 1}


@pytest.fixture(scope="module")
def run(train_tiny):
    return train_tiny("mprnet", **TINY_MPRNET)


def test_training_lowers_the_validation_loss(run) -> None:
    assert isinstance(run.model.method.net, MPRNet)
    run.check_training_lowers_the_loss()


def test_save_load_gives_identical_deterministic_predictions(run) -> None:
    run.check_deterministic_round_trip()


def test_loss_supervises_every_stage(method_config) -> None:
    torch.manual_seed(0)
    method = build_method(method_config("mprnet", edge_weight=0.0, **TINY_MPRNET))
    target, cond = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    expected = sum(charbonnier(s, target) for s in method.net.forward_stages(cond))
    torch.testing.assert_close(method.training_loss(target, cond), expected)


def test_charbonnier_and_edge_images() -> None:
    x = torch.randn(1, 1, 16, 16)
    assert np.isclose(charbonnier(x, x).item(), 1e-3)
    assert np.isclose(charbonnier(x + 2, x).item(), np.sqrt(4 + 1e-6))
    # A constant image has no edges; the band-pass image of a step is zero far from it.
    assert laplacian(torch.full((1, 1, 16, 16), 3.0)).abs().max() < 1e-6
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1
    edges = laplacian(step)[0, 0]
    assert edges[:, :4].abs().max() < 1e-6 and edges[:, 7:9].abs().min() > 0.1
