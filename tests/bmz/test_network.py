"""BMZNetwork against the shared tiled predictor: one tile of Model.predict is one block."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hazematching import Model
from hazematching.bmz.export import build_network, network_kwargs
from hazematching.bmz.network import BMZNetwork
from hazematching.predict import predict_planes


@pytest.mark.parametrize("mmse,solver,schedule", [("t0", "euler", "late"),
                                                   ("samples", "heun", "uniform")])
def test_blocks_equal_the_tiled_predictor_on_one_tile(trained, mmse, solver, schedule):
    model = Model(trained.config, method=copy.deepcopy(trained.method),
                  normalizer=trained.normalizer)
    model.reconfigure({"sampling.mmse": mmse, "sampling.solver": solver,
                       "sampling.schedule": schedule, "sampling.n_samples": 3,
                       "sampling.batch_size": 2})
    planes = np.random.default_rng(0).normal(0, 1, (2, 1, 32, 32)).astype(np.float32)
    ref = predict_planes(model.method, planes, model.config.sampling, device="cpu")
    net = build_network(model, network_kwargs(model))
    with torch.no_grad():
        mean, std = net(torch.from_numpy(planes))
    np.testing.assert_allclose(mean[:, 0].numpy(), ref.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std[:, 0].numpy(), ref.std, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        again = net(torch.from_numpy(planes))
    assert torch.equal(again[0], mean) and torch.equal(again[1], std)  # seeded at every call


def test_regression_block_is_the_unet_at_t0(regression):
    net = build_network(regression, network_kwargs(regression))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), regression.method.predict_batch(x))


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "rcan"}, "no BMZ prediction rule"),
    ({"n_samples": 1}, "at least 2 samples"),
    ({"mmse": "median"}, "mmse='median'"),
    ({"solver": "rk4"}, "unknown solver 'rk4'"),
])
def test_bad_arguments(kwargs, match):
    args = {"method": "hazematching", "in_channels": 1,
            "network": {"model_channels": 8, "channel_mult": [1, 2],
                        "attention_downsample": [2]}} | kwargs
    with pytest.raises(ValueError, match=match):
        BMZNetwork(**args)
