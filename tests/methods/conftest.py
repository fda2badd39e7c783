"""Fixtures for the method tests: a tiny config per method and one short real training run."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_pairs
from torch.utils.data import default_collate

from hazematching.api import Model, load_model
from hazematching.config import ModelConfig
from hazematching.data.pairs import PairedImages
from hazematching.data.patches import FixedPatches
from hazematching.methods.base import Method

#: 32-px patches, an 8-channel two-level U-Net, 5 epochs of 4 steps, no EMA (so that the
#: trained weights are the optimiser's), CPU fp32.
TINY = {
    "data": {"patch_size": 32, "patches_per_epoch": 16},
    "network": {"model_channels": 8, "channel_mult": [1, 2], "attention_downsample": [2]},
    "training": {"epochs": 5, "batch_size": 4, "lr": 2e-3, "ema_decay": None,
                 "progress_bar": False, "accelerator": "cpu", "devices": 1, "precision": "32",
                 "val_every_n_epochs": 1},
    "sampling": {"tile_size": 32, "tile_overlap": 8, "n_samples": 2, "batch_size": 8,
                 "n_time_points": 3},
}


def tiny_config(method: str, overrides: dict[str, Any] | None = None, **options: Any
                ) -> ModelConfig:
    """The TINY config for `method` with the given method options and dotted overrides."""
    config = ModelConfig.from_dict({**copy.deepcopy(TINY), "method": method,
                                    "method_options": options})
    return config.with_overrides(overrides) if overrides else config


@pytest.fixture(scope="session")
def method_config() -> Callable[..., ModelConfig]:
    """``method_config(method, **options)``: a tiny, validated config."""
    return tiny_config


@dataclass
class TinyRun:
    """A model trained by :meth:`Model.fit` on tiny data, and what is needed to judge it."""

    model: Model
    untrained: Method
    pairs: PairedImages
    out: Path
    target: torch.Tensor
    cond: torch.Tensor

    def loss(self, method: Method) -> float:
        """The validation loss of `method` on fixed normalised patches, with fixed randomness."""
        torch.manual_seed(0)
        with torch.no_grad():
            return float(method.eval().validation_loss(self.target, self.cond))

    def predict(self, model: Model, seed: int = 0) -> np.ndarray:
        """The MMSE prediction for a raw 48×44 image (44 is no multiple of the tile divisor)."""
        model.reconfigure({"sampling.seed": seed})
        return model.predict(self.pairs.inputs[0][0, 0][:, :44], "YX", device="cpu").mmse

    def reloaded(self) -> Model:
        return load_model(self.out)

    def check_training_lowers_the_loss(self, factor: float = 0.8) -> None:
        """The validation loss after training is below `factor` × the untrained one."""
        before, after = self.loss(self.untrained), self.loss(self.model.method)
        print(f"{self.model.config.method} validation loss: {before:.4f} -> {after:.4f}")
        assert after < factor * before

    def check_deterministic_round_trip(self) -> None:
        """A 48×44 prediction that is the same after save/load and for any seed."""
        assert not self.model.method.stochastic
        pred = self.predict(self.model)
        assert pred.shape == (48, 44)
        np.testing.assert_array_equal(pred, self.predict(self.reloaded(), seed=1))

    def check_stochastic_round_trip(self) -> None:
        """A 48×44 MMSE of posterior samples: the same after save/load at one seed, different
        at another."""
        assert self.model.method.stochastic
        pred = self.predict(self.model)
        assert pred.shape == (48, 44)
        np.testing.assert_array_equal(pred, self.predict(self.reloaded()))
        assert not np.array_equal(pred, self.predict(self.model, seed=1))


@pytest.fixture(scope="module")
def train_tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TinyRun]:
    """``train_tiny(method, overrides=None, **options)``: fit a tiny model through
    :class:`Model` (`overrides`: dotted config fields, e.g. ``{"training.epochs": 10}``)."""

    def train(method: str, overrides: dict[str, Any] | None = None, **options: Any) -> TinyRun:
        pairs = make_pairs(4)
        model = Model(tiny_config(method, overrides, **options))
        untrained = copy.deepcopy(model.method)
        out = tmp_path_factory.mktemp(method)
        model.fit(pairs, out_dir=out)
        patches = FixedPatches(pairs, model.normalizer, model.config.data.patch_size)
        target, cond = default_collate([patches[i] for i in range(len(patches))])
        return TinyRun(model, untrained, pairs, out, target, cond)

    return train
